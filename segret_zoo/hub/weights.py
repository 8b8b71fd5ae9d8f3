"""How weights enter a model: reading checkpoint files safely, converting their layout, checking, loading.

PyTorch files are read by :func:`load_torch_file` (``weights_only=True`` and an allowlist: a checkpoint
never runs code on load); a training checkpoint's weights are taken from its container (``model``,
``state_dict``, ...) here and nowhere else. :func:`load_weights` is the one loader: the model class
names the layouts it reads (one filter function each), its classifier and what a stranger checkpoint
is, through a small protocol (see "into a model" below); a state dict that does not fit is never
half-loaded. Knows no model names.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.hub.download import TORCH_SUFFIXES
from segret_zoo.validate import check_weights, kind_of, show

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------------- reading
def _redownload_hint(path: Path) -> str:
    if any(p.startswith("models--") for p in path.parts):  # a Hugging Face cache snapshot
        return ("re-download with hf_hub_download(..., force_download=True) or "
                "from_pretrained(..., force_download=True) (or delete it from the Hugging Face cache)")
    return "re-download or re-create it (save_pretrained, `segret-zoo convert-rmt`) and copy it again"


def _sniff_format(path: Path) -> str:
    """'safetensors' or 'torch', from the extension, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "safetensors"


def unwrap_checkpoint(obj: Any, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The tensors inside a checkpoint container (``model``/``model_ema``/``state_dict``, or bare),
    without DistributedDataParallel's ``module.`` or torch.compile's ``_orig_mod.`` prefixes (timm's
    ``clean_state_dict``). The one place a checkpoint is unwrapped."""
    from timm.models._helpers import clean_state_dict

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    keys = ("model_ema", "model", "state_dict") if use_ema else ("model", "state_dict", "model_ema")
    state: Mapping[str, Any] = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), obj)
    return clean_state_dict({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def _numpy_globals() -> List[Any]:
    """numpy's array, scalar and dtype rebuilders (RNG states, metrics): they build data, never run code.

    Files written under numpy 1.x name the rebuilders ``numpy.core.multiarray.*``, under 2.x
    ``numpy._core.multiarray.*``: both spellings are allowed.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        return []
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    found: List[Any] = [np.ndarray, np.dtype]
    found += [getattr(np.dtypes, name) for name in getattr(np.dtypes, "__all__", ())]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(multiarray, name)
        found += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return found


def safe_load_globals() -> List[Any]:
    """The classes a checkpoint may hold beyond tensors and plain data, and why each is harmless.

    - ``argparse.Namespace``: the ``args`` of the official RMT (DeiT-style) training checkpoint; it is
      rebuilt as a plain attribute bag, no method of it runs.
    - numpy arrays, dtypes and scalars: numpy's RNG state in this project's training checkpoints.
    mmsegmentation 0.x checkpoints (``state_dict``, ``meta`` with strings, tuples and lists,
    ``optimizer``) and python ``random`` state need nothing beyond what ``weights_only`` allows.
    """
    return [argparse.Namespace, *_numpy_globals()]


def _refused_globals(path: Path, err: Exception) -> List[str]:
    """The globals a pickle names that the allowlist refused, found without running the pickle."""
    allowed = set()
    for entry in safe_load_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        allowed.add(name or f"{obj.__module__}.{obj.__qualname__}")
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint

        names = [n for n in get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed]
    except Exception:  # a legacy (non-zip) file: the unpickler's message names the first one
        names = []
    if not names:
        names = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    return names


def load_torch_file(path: PathLike, *, map_location: Any = "cpu", allowed: Sequence[Any] = ()) -> Any:
    """``torch.load`` that never runs code from the file: ``weights_only=True`` plus an allowlist.

    The one reader of PyTorch checkpoint files (weights, official RMT and mmsegmentation
    checkpoints, resume files). Besides tensors and plain data it accepts only the classes of
    :func:`safe_load_globals` and ``allowed``; any other class or function a pickle names (the way a
    malicious file would run code) is refused with a :class:`CheckpointError` naming the file and it.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([*safe_load_globals(), *allowed]), warnings.catch_warnings():
            # a damaged file makes torch warn about odd pickle protocols or storages, in lines of its own
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, err)
        if refused:
            raise CheckpointError(
                f"{path} was refused for safety: it names {', '.join(refused)}, which is not a tensor or plain "
                "data and would run code when loaded; segret-zoo never loads such files. If you trust its "
                "source, re-save only its tensors (torch.save(ckpt['model']) in the environment that wrote it)"
            ) from err
        raise _unreadable(path, err) from err
    except OSError:
        raise  # permissions, I/O errors: the system's own words, not "corrupted"
    except Exception as err:
        # whatever a damaged file makes the unpickler or the legacy loader raise (KeyError, IndexError,
        # AssertionError, struct.error, TypeError, MemoryError, ...): the file is unreadable, not a bug
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    text = " ".join(str(err).split())[:200]
    reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupted or not a PyTorch file): "
                           f"{_redownload_hint(path)}. Reader said: {reason}")


def _restore_aliases(path: Path, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Tied tensors that ``safetensors.torch.save_model`` stored once: it records each dropped name in
    the file's metadata (``dropped -> kept``), and the kept tensor is restored under both names."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    for dropped, kept in metadata.items():
        if dropped not in tensors and kept in tensors:
            tensors[dropped] = tensors[kept]
    return tensors


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's weights, and the metadata that came with them (an mmsegmentation
    checkpoint's ``meta``: ``CLASSES``, ``PALETTE``, config text; empty for safetensors)."""

    state_dict: Dict[str, torch.Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: PathLike, use_ema: bool = False) -> Checkpoint:
    """All tensors of a ``.safetensors`` or PyTorch checkpoint file, on the CPU, with its metadata.

    PyTorch files go through :func:`load_torch_file` (never runs code). A training checkpoint's
    weights are taken from ``model`` (``model_ema`` first with ``use_ema``) or ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    if _sniff_format(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            return Checkpoint(_restore_aliases(path, load_file(str(path))))
        except Exception as err:  # SafetensorError (bad header, short file), JSON / UTF-8 errors
            raise CheckpointError(
                f"{path} is not a valid safetensors file (truncated or corrupted): {_redownload_hint(path)}. "
                f"Reader said: {err}"
            ) from err
    obj = load_torch_file(path)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return Checkpoint(unwrap_checkpoint(obj, use_ema), dict(meta) if isinstance(meta, Mapping) else {})


def read_state_dict(path: PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The tensors of :func:`read_checkpoint`."""
    return read_checkpoint(path, use_ema).state_dict


#: a config.json with 65536 class names is about 2 MB; anything this large is not one
MAX_CONFIG_BYTES = 64 << 20


def read_config(path: PathLike) -> Dict[str, Any]:
    """A config.json as a dict, or one line naming the file: too large, not UTF-8 (a byte-order mark is
    read as editors write it), not JSON, nested too deeply for the parser, or not a JSON object."""
    path = Path(path)
    fix = "re-create it with save_pretrained or re-download it"
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {size / 2**20:.0f} MB, too large for a config.json (at most "
                              f"{MAX_CONFIG_BYTES >> 20} MB): {fix}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}, {err.reason}), "
                              f"expected UTF-8 JSON: {fix}") from None
    try:
        config = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be read (lists or objects inside each other "
                              f"beyond Python's limit of {sys.getrecursionlimit()}), expected a flat config.json: "
                              f"{fix}") from None
    except ValueError as err:  # JSONDecodeError, or an integer beyond Python's digit limit
        reason = " ".join(str(err).split(";")[0].split())[:200]
        raise CheckpointError(f"{path} is not valid JSON ({reason}): {fix}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds {kind_of(config)} ({show(config)}), expected a JSON object "
                              f"{{\"num_classes\": ..., ...}}: {fix}")
    return config


# ------------------------------------------------------------------------------ into a model
# What a model class offers the loader (all optional; timm models work through get_classifier()):
#   checkpoint_layouts() -> {name: filter(state_dict, model) -> state_dict in its layout, or None}
#   classifier_keys() -> the keys a new num_classes replaces
#   checkpoint_mismatch_hint(state_dict) -> one line saying what a checkpoint that does not fit is
#   prepare_for_checkpoint(state_dict) -> switch the model's module layout to the checkpoint's (folded)
Layouts = Mapping[str, Callable[[Mapping[str, torch.Tensor], Optional[nn.Module]], Optional[Dict[str, torch.Tensor]]]]


def convert_layout(state_dict: Mapping[str, torch.Tensor], layouts: Layouts,
                   model: Optional[nn.Module] = None) -> Tuple[Optional[str], Optional[Dict[str, torch.Tensor]]]:
    """(name, converted) from the first layout filter that recognises ``state_dict``; (None, None) if none does."""
    for name, layout in layouts.items():
        converted = layout(state_dict, model)
        if converted is not None:
            return name, converted
    return None, None


def classifier_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the final classifier (the only ones a new ``num_classes`` may replace).

    The model's own ``classifier_keys()``, else timm's ``get_classifier()`` / ``pretrained_cfg["classifier"]``.
    """
    own = getattr(model, "classifier_keys", None)
    if callable(own):
        return list(own())
    get = getattr(model, "get_classifier", None)
    module = get() if callable(get) else None
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if module is None and name:
        module = model.get_submodule(name)
    prefix = next((n for n, m in model.named_modules() if m is module), None) if module is not None else None
    if not prefix:
        return []
    return [f"{prefix}.{k}" for k in module.state_dict()]


def _short(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") if keys else "none"


def _module_kind(key: str) -> str:
    """``stages.0.blocks.1.mlp.fc1.weight`` -> ``stages.*.blocks.*.mlp.fc1``: what kind of module holds a key."""
    return ".".join("*" if p.isdigit() else p for p in key.split(".")[:-1]) or key


def summarize_keys(keys: Iterable[str]) -> str:
    """``stages.0.blocks.1.mlp.dwconv.weight`` ... as ``stages.*.blocks.*.mlp.dwconv (24 tensors)``: a
    list of dropped or missing keys that fits one line."""
    groups: Dict[str, int] = {}
    for key in keys:
        module = _module_kind(key)
        groups[module] = groups.get(module, 0) + 1
    return ", ".join(f"{m} ({n} tensor{'s' if n > 1 else ''})" for m, n in groups.items()) or "nothing"


def _model_hint(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """What the model itself can tell about a checkpoint that does not fit it (e.g. its variant)."""
    hook = getattr(model, "checkpoint_mismatch_hint", None)
    return hook(state_dict) if callable(hook) else None


def _model_label(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def _check_values(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    check_weights(own, state, source, "use another checkpoint (an earlier one of the run), or re-download or "
                                      "re-create this one")


def match_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    new_classifier: bool = False,
    allow_unexpected: bool = False,
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Check a state dict (in the model's layout) against ``model``; returns what to load and what was dropped.

    A classifier of another width is dropped (with a warning naming its keys) only with
    ``new_classifier=True``, i.e. when the user asked for another ``num_classes`` (fine-tuning);
    otherwise it is an error naming both class counts, so a random classifier never stands in for
    a trained one. ``allow_unexpected`` drops keys the model has no place for (a backbone
    initialisation, which leaves the ImageNet head behind). Every other difference is an error
    listing missing, unexpected and mismatched keys, so a wrong checkpoint is never half-loaded.
    What is loaded must hold floating-point, finite values where the model has floating-point
    weights (:func:`segret_zoo.validate.check_weights`).
    """
    own = model.state_dict()
    given = state = dict(state_dict)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    dropped: List[str] = []
    if allow_unexpected and unexpected:
        # only parts the model has no kind of module for (an FFN conv, a head); an extra block of a
        # kind the model has means another variant, which must not be loaded truncated
        kinds = {_module_kind(k) for k in own}
        dropped = [k for k in unexpected if _module_kind(k) not in kinds]
        unexpected = [k for k in unexpected if k not in dropped]
        state = {k: v for k, v in state.items() if k not in dropped}
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    head = set(classifier_keys(model))
    if not missing and not unexpected and mismatched and set(mismatched) <= head:
        shapes = ", ".join(f"{k} {list(state[k].shape)} -> {list(own[k].shape)}" for k in mismatched)
        if not new_classifier:
            theirs, ours = int(state[mismatched[0]].shape[0]), int(own[mismatched[0]].shape[0])
            raise CheckpointError(
                f"{source} has a classifier for {theirs} classes but the model was built for {ours} ({shapes}): "
                f"build it with num_classes={theirs} (or give the config.json that matches these weights) to use "
                f"this classifier; to fine-tune to {ours} classes instead, pass num_classes={ours} explicitly"
            )
        warnings.warn(
            f"{source}: the classifier has another number of classes than the model ({shapes}); dropping "
            f"{', '.join(sorted(head & set(state)))} and keeping the new, randomly initialised classifier "
            "(expected when fine-tuning to another dataset)",
            UserWarning,
            stacklevel=3,
        )
        kept = {k: v for k, v in state.items() if k not in head}
        _check_values(own, kept, source)
        return kept, dropped
    if not missing and not unexpected and not mismatched:
        _check_values(own, state, source)
        return state, dropped
    hint = _model_hint(model, given)
    shapes = [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mismatched]
    raise CheckpointError(
        f"{source} does not fit {_model_label(model)}"
        + (f": {hint}" if hint else "")
        + f". Missing keys: {_short(missing)}. Unexpected keys: {_short(unexpected)}. "
        f"Shape mismatches: {_short(shapes, 6)}"
    )


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    layouts: Optional[Layouts] = None,
    new_classifier: bool = False,
    allow_unexpected: bool = False,
) -> List[str]:
    """The one way weights enter a model: convert the checkpoint's layout, check it, load it.

    ``layouts`` defaults to the model's ``checkpoint_layouts()``; a checkpoint none of them recognises
    is refused in one line saying what it is (the model's ``checkpoint_mismatch_hint``) and what to
    do. Then :func:`match_state_dict` checks it (``new_classifier`` / ``allow_unexpected`` as there)
    and it is loaded. Returns the keys dropped from the checkpoint.
    """
    if layouts is None:
        get_layouts = getattr(model, "checkpoint_layouts", None)
        layouts = get_layouts() if callable(get_layouts) else {}
    if layouts:
        name, converted = convert_layout(state_dict, layouts, model)
        if converted is None:
            hint = _model_hint(model, state_dict)
            raise CheckpointError(
                f"{source} is not a checkpoint {_model_label(model)} can load: "
                + (hint or f"its keys ({_short(sorted(state_dict), 4)}) match none of the layouts it reads "
                           f"({', '.join(layouts)})"))
        state_dict = converted
    prepare = getattr(model, "prepare_for_checkpoint", None)
    if callable(prepare):
        prepare(state_dict)
    state, dropped = match_state_dict(model, state_dict, source=source, new_classifier=new_classifier,
                                      allow_unexpected=allow_unexpected)
    model.load_state_dict(state, strict=False)
    return dropped
