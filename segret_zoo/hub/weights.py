"""Reading checkpoint files and checking a state dict against a model before it is loaded.

PyTorch files are read by :func:`load_torch_file` (``weights_only=True`` and an allowlist: a checkpoint
never runs code on load); a training checkpoint's weights are taken from its container (``model``,
``state_dict``, ...). A state dict that does not fit is never half-loaded: the error lists missing, unexpected and mismatched keys, plus a
hint from the model itself (``checkpoint_mismatch_hint``) when it can tell what the file is for.
Knows no model names.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
from segret_zoo.hub.download import TORCH_SUFFIXES

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
    without a DistributedDataParallel ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    keys = ("model_ema", "model", "state_dict") if use_ema else ("model", "state_dict", "model_ema")
    state: Mapping[str, Any] = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), obj)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


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


def read_state_dict(path: PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or PyTorch checkpoint file, on the CPU.

    PyTorch files go through :func:`load_torch_file` (never runs code). A training checkpoint's
    weights are taken from ``model`` (``model_ema`` first with ``use_ema``) or ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    if _sniff_format(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            return _restore_aliases(path, load_file(str(path)))
        except Exception as err:  # SafetensorError (bad header, short file), JSON / UTF-8 errors
            raise CheckpointError(
                f"{path} is not a valid safetensors file (truncated or corrupted): {_redownload_hint(path)}. "
                f"Reader said: {err}"
            ) from err
    return unwrap_checkpoint(load_torch_file(path), use_ema)


def read_config(path: PathLike) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}): re-create or re-download it") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


# ------------------------------------------------------------------------------ matching keys
def classifier_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the final classifier (the only ones a new ``num_classes`` may replace).

    Found through timm's ``get_classifier()`` or ``pretrained_cfg["classifier"]``, else SegRet's
    ``decoder.classifier``.
    """
    get = getattr(model, "get_classifier", None)
    module = get() if callable(get) else None
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if module is None and name:
        module = model.get_submodule(name)
    if module is None:
        module = getattr(getattr(model, "decoder", None), "classifier", None)
    prefix = next((n for n, m in model.named_modules() if m is module), None) if module is not None else None
    if not prefix:
        return []
    return [f"{prefix}.{k}" for k in module.state_dict()]


def _short(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") if keys else "none"


def _model_hint(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """What the model itself can tell about a checkpoint that does not fit it (e.g. its variant)."""
    hook = getattr(model, "checkpoint_mismatch_hint", None)
    return hook(state_dict) if callable(hook) else None


def _model_label(model: nn.Module) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def _looks_like_backbone_only(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """An RMT ImageNet or backbone-only checkpoint passed where a full SegRet one was expected."""
    own_top = {k.split(".", 1)[0] for k in model.state_dict()} - {"encoder"}
    ckpt_top = {k.split(".", 1)[0] for k in state_dict}
    return bool(state_dict) and not (own_top & ckpt_top)


def match_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    new_classifier: bool = False,
) -> Dict[str, torch.Tensor]:
    """Check a full-model checkpoint against ``model`` and return what to load.

    A classifier of another width is dropped (with a warning naming its keys) only with
    ``new_classifier=True``, i.e. when the user asked for another ``num_classes`` (fine-tuning);
    otherwise it is an error naming both class counts, so a random classifier never stands in for
    a trained one. Every other difference is an error listing missing, unexpected and mismatched
    keys, so a wrong checkpoint is never half-loaded.
    """
    own = model.state_dict()
    state = dict(state_dict)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
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
        return {k: v for k, v in state.items() if k not in head}
    if not missing and not unexpected and not mismatched:
        return state
    hint = _model_hint(model, state)
    if hint is None and _looks_like_backbone_only(model, state):
        hint = ("this looks like an RMT backbone (ImageNet or segmentation-backbone) checkpoint, not a SegRet "
                "one: pass it as pretrained_backbone=PATH to create_model")
    shapes = [f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mismatched]
    raise CheckpointError(
        f"{source} does not fit {_model_label(model)}"
        + (f": {hint}" if hint else "")
        + f". Missing keys: {_short(missing)}. Unexpected keys: {_short(unexpected)}. "
        f"Shape mismatches: {_short(shapes, 6)}"
    )


def load_checkpoint_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                         new_classifier: bool = False) -> List[str]:
    """Load a checked full-model state dict; returns the keys left at their initial values.

    ``new_classifier``: the user asked for another class count, so a classifier of another width is
    dropped rather than refused (see :func:`match_state_dict`). A checkpoint saved after
    ``fuse_zir()`` holds the folded decoder: the model is folded to match.
    """
    decoder = getattr(model, "decoder", None)
    if any(k.startswith("decoder.folded.") for k in state_dict) and not getattr(decoder, "fused", True):
        model.fuse_zir()  # type: ignore[operator]
    state = match_state_dict(model, state_dict, source=source, new_classifier=new_classifier)
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys)
