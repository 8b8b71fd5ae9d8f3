"""Finding, downloading, reading and checking checkpoints.

One place decides where weights come from (Hub repo id, Hub cache, local folder, ``.safetensors``
or ``.pth`` file) so that every entry point (factory, ``from_pretrained``, torch.hub, CLI) fails the
same way: fast when the Hub is unreachable, and with a message that names the repo, the file and how
to supply it locally. Only ``model.safetensors`` and ``config.json`` are ever downloaded.
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from segret_zoo.cli import UserError
from segret_zoo.hub.manifest import find_entry, verify_file

PathLike = Union[str, "os.PathLike[str]"]

WEIGHTS_NAME = "model.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
README_NAME = "README.md"
HF_HUB_PREFIX = "hf-hub:"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Seconds to wait for the Hub to answer the first (metadata) request; no retries follow.
HUB_TIMEOUT_ENV = "SEGRET_ZOO_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 5.0


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The weights asked for cannot be obtained (not cached, Hub unreachable, repo or file missing)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


@dataclass(frozen=True)
class ResolvedSource:
    """Where a checkpoint's files are on local disk, and where they came from (for messages)."""

    weights: Path
    config: Optional[Path]
    description: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None


# ------------------------------------------------------------------------------------ the Hub
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """Offline if huggingface_hub says so or the environment says so now.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once at import; a user who sets it later in the same
    process (a notebook, a test) still means it, so the environment is checked again.
    """
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or _env_true("HF_HUB_OFFLINE") or _env_true(
        "TRANSFORMERS_OFFLINE"
    )


def hub_timeout() -> float:
    try:
        return float(os.environ.get(HUB_TIMEOUT_ENV, DEFAULT_HUB_TIMEOUT))
    except ValueError:
        return DEFAULT_HUB_TIMEOUT


def parse_hub_name(name: str) -> Tuple[str, Optional[str]]:
    """``hf-hub:org/repo@revision`` (prefix and revision optional) -> (repo_id, revision)."""
    if name.startswith(HF_HUB_PREFIX):
        name = name[len(HF_HUB_PREFIX):]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = revision or None
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"{name!r} is not a Hub repo id of the form 'org/name'")
    return name, revision


def _how_to_supply(repo_id: str, filename: str, revision: Optional[str]) -> str:
    rev = f" (revision {revision})" if revision else ""
    return (
        f"It needs {filename} from the Hub repo {repo_id}{rev}. To use a local copy instead: pass "
        f"checkpoint_path='/path/to/{filename}' to create_model (or give from_pretrained a folder or file); "
        f"or put the repo in the Hugging Face cache (HF_HUB_CACHE, e.g. with `hf download {repo_id}` on a "
        "machine that has network, then copy the cache) and set HF_HUB_OFFLINE=1; RMT ImageNet weights "
        "come from the official RMT release converted with `segret-zoo convert-rmt IN.pth OUT_DIR`."
    )


def _published_note(repo_id: str, filename: str) -> str:
    entry = find_entry(repo_id, filename)
    if entry is not None and entry.get("status") != "published":
        return (
            f" Note: weights/manifest.json lists {entry.get('name')} as {entry.get('status')}: these weights "
            "are not on the Hub yet (see weights/README.md)."
        )
    return ""


def _metadata_kwargs(fn: Any, **candidates: Any) -> Dict[str, Any]:
    """Keep only the keyword arguments this huggingface_hub version's function accepts."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in candidates.items() if k in params}


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    token: Optional[Union[str, bool]] = None,
    required: bool = True,
    force_download: bool = False,
) -> Optional[Path]:
    """Path of a Hub file in the local cache, downloading it if needed; fails within seconds offline.

    huggingface_hub retries the metadata request for up to a minute when a file is not cached. Here
    the cache is consulted first when offline, and otherwise one metadata request with a short
    timeout and no retries decides whether the Hub is reachable before the real download starts.
    With ``required=False`` a file the repo does not have gives ``None`` (optional ``config.json``).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    cached_path = Path(cached) if isinstance(cached, str) else None
    if is_offline():
        if cached_path is not None and not force_download:
            return _verified(cached_path, repo_id, filename, revision)
        if not required:
            return None
        raise WeightsNotFoundError(
            f"cannot load {where}: HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache "
            f"({cache_dir or _default_cache()}). " + _how_to_supply(repo_id, filename, revision)
            + _published_note(repo_id, filename)
        )
    if cached is not None and cached_path is None and not required:  # cached "does not exist"
        return None
    timeout = hub_timeout()
    try:
        url = hf_hub_url(repo_id, filename, revision=revision)
        get_hf_file_metadata(url, **_metadata_kwargs(get_hf_file_metadata, token=token, timeout=timeout,
                                                     retry_on_errors=False))
    except EntryNotFoundError as err:
        if not required:
            return None
        raise WeightsNotFoundError(
            f"the Hub repo {repo_id} has no file {filename}" + (f" at revision {revision}" if revision else "")
            + ". " + _how_to_supply(repo_id, filename, revision)
        ) from err
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        kind = type(err).__name__.replace("Error", "")
        raise WeightsNotFoundError(
            f"cannot download {where} ({kind}: the repo or revision does not exist, or it is private/gated "
            "and needs token=...). " + _how_to_supply(repo_id, filename, revision)
            + _published_note(repo_id, filename)
        ) from err
    except Exception as err:  # network down, DNS, timeout, proxy, HTTP 5xx/401 (HfHubHTTPError)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
        if cached_path is not None and not force_download:
            warnings.warn(f"the Hub is unreachable ({reason}); using the cached {where}", stacklevel=2)
            return _verified(cached_path, repo_id, filename, revision)
        raise WeightsNotFoundError(
            f"cannot download {where}: no usable answer from the Hugging Face Hub within {timeout:g}s "
            f"({reason}) and the file is not in the local cache. " + _how_to_supply(repo_id, filename, revision)
            + _published_note(repo_id, filename)
        ) from err
    path = hf_hub_download(
        repo_id, filename, revision=revision, cache_dir=cache_dir, token=token, etag_timeout=timeout,
        force_download=force_download,
    )
    return _verified(Path(path), repo_id, filename, revision)


def _default_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def seed_hub_cache(
    folder: PathLike,
    repo_id: str,
    *,
    cache_dir: Optional[PathLike] = None,
    revision: str = "main",
    commit_hash: Optional[str] = None,
) -> Path:
    """Place a local model folder in the Hugging Face cache as if downloaded from ``repo_id``.

    For machines without network (copy a folder, then load by repo id with ``HF_HUB_OFFLINE=1``) and
    for tests. Uses the cache's documented layout: ``models--org--name/{blobs,refs,snapshots}``;
    returns the snapshot folder.
    """
    import hashlib

    from huggingface_hub import constants

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = commit_hash or hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    repo = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo / "blobs" / digests[path.name]
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        link = snapshot / path.name
        link.unlink(missing_ok=True)
        try:
            link.symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # no symlinks (Windows without developer mode): copy, as huggingface_hub does
            link.write_bytes(blob.read_bytes())
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def _verified(path: Path, repo_id: str, filename: str, revision: Optional[str]) -> Path:
    """Check a Hub file against weights/manifest.json when the manifest records it.

    An explicit revision other than the recorded one is a deliberate choice of other bytes, so the
    digest of the recorded release does not apply.
    """
    entry = find_entry(repo_id, filename)
    if entry is not None and revision in (None, "main", entry.get("revision")):
        try:
            verify_file(path, entry, source=f"{repo_id}/{filename} ({path})")
        except ValueError as err:
            raise CheckpointError(str(err)) from err
    return path


# ------------------------------------------------------------------------------ local sources
def _find_weights_in_dir(folder: Path) -> Path:
    for name in (WEIGHTS_NAME, TORCH_WEIGHTS_NAME):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise WeightsNotFoundError(
        f"{folder} has no {WEIGHTS_NAME} (it holds: {listing}); point to a folder written by "
        "save_pretrained / `segret-zoo convert-rmt`, or to the weights file itself"
    )


def resolve_source(
    source: PathLike,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    token: Optional[Union[str, bool]] = None,
    force_download: bool = False,
) -> ResolvedSource:
    """A Hub repo id (``org/name``, ``hf-hub:org/name[@rev]``), a local folder or a weights file -> files.

    A path that exists wins over a repo id of the same spelling, as in transformers.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not text.startswith(HF_HUB_PREFIX) and path.exists():
        if path.is_dir():
            weights = _find_weights_in_dir(path)
            config = path / CONFIG_NAME
            return ResolvedSource(weights, config if config.is_file() else None, str(path))
        config = path.parent / CONFIG_NAME
        return ResolvedSource(path, config if config.is_file() else None, str(path))
    looks_local = text.startswith((".", "/", "~")) or text.endswith((".safetensors",) + TORCH_SUFFIXES)
    if looks_local or text.count("/") > 1 or ("/" not in text and not text.startswith(HF_HUB_PREFIX)):
        raise WeightsNotFoundError(
            f"{text!r} is neither an existing file or folder nor a Hub repo id ('org/name' or 'hf-hub:org/name')"
        )
    repo_id, name_revision = parse_hub_name(text)
    if revision is not None and name_revision is not None and revision != name_revision:
        raise ValueError(f"revision given twice: {name_revision!r} in {text!r} and revision={revision!r}")
    revision = revision or name_revision
    kw: Dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, token=token, force_download=force_download)
    try:
        weights = hub_download(repo_id, WEIGHTS_NAME, **kw)
    except WeightsNotFoundError as err:
        if text.startswith(HF_HUB_PREFIX):
            raise
        raise WeightsNotFoundError(f"{err} (No local file or folder named {text!r} exists either.)") from err
    assert weights is not None
    config = hub_download(repo_id, CONFIG_NAME, required=False, **kw)
    return ResolvedSource(weights, config, f"{repo_id}" + (f"@{revision}" if revision else ""), repo_id, revision)


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


def _unwrap(obj: Any, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Weights inside a training checkpoint (``model``/``state_dict``/...), without a DDP prefix."""
    from segret_zoo.models.rmt import unwrap_state_dict

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (name -> tensor), found {type(obj).__name__}")
    return {k: v for k, v in unwrap_state_dict(obj, use_ema=use_ema).items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: PathLike, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or PyTorch checkpoint file, on the CPU.

    PyTorch files are read with ``weights_only=True``: a checkpoint never runs code on load. A
    training checkpoint's weights are taken from ``model`` (``model_ema`` first with ``use_ema``).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    if _sniff_format(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError (bad header, short file), JSON / UTF-8 errors
            raise CheckpointError(
                f"{path} is not a valid safetensors file (truncated or corrupted): {_redownload_hint(path)}. "
                f"Reader said: {err}"
            ) from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a valid PyTorch checkpoint (truncated, corrupted, or holding objects other "
            f"than tensors, which weights_only loading refuses): {_redownload_hint(path)}. Reader said: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    return _unwrap(obj, use_ema)


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


def _tied_groups(model: nn.Module) -> List[List[str]]:
    """Groups of state-dict keys that share one tensor (safetensors stores each only once)."""
    groups: Dict[Tuple[int, int, Tuple[int, ...], Tuple[int, ...]], List[str]] = {}
    for key, value in model.state_dict(keep_vars=False).items():
        if value.device.type == "meta":
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride())
        groups.setdefault(ident, []).append(key)
    return [g for g in groups.values() if len(g) > 1]


def _short(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") if keys else "none"


def _variant_hint(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """'checkpoint is for rmt_b/segret_base, you built segret_tiny' when both are known variants."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return None
    from segret_zoo.models.rmt import describe_model, infer_rmt_variant

    sub = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    if not sub:
        return None
    received, built = infer_rmt_variant(sub), describe_model(encoder)
    if received == built:
        return None
    from segret_zoo.factory import segret_name_for_backbone

    def label(rmt: str) -> str:
        seg = segret_name_for_backbone(rmt)
        return f"{rmt}/{seg}" if seg else rmt

    return f"checkpoint is for {label(received)}, you built {segret_name_for_backbone(built) or built}"


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
) -> Dict[str, torch.Tensor]:
    """Check a full-model checkpoint against ``model`` and return what to load.

    A classifier of another width (fine-tuning to a new ``num_classes``) is dropped with a warning
    naming its keys; every other difference is an error listing missing, unexpected and mismatched
    keys, so a wrong checkpoint is never half-loaded.
    """
    own = model.state_dict()
    state = dict(state_dict)
    for group in _tied_groups(model):  # fill aliases that safetensors stored once
        present = [k for k in group if k in state]
        if present:
            for k in group:
                state.setdefault(k, state[present[0]])
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    head = set(classifier_keys(model))
    if not missing and not unexpected and mismatched and set(mismatched) <= head:
        shapes = ", ".join(f"{k} {list(state[k].shape)} -> {list(own[k].shape)}" for k in mismatched)
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
    hint = _variant_hint(model, state)
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


def load_checkpoint_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> List[str]:
    """Load a checked full-model state dict; returns the keys left at their initial values.

    A checkpoint saved after ``fuse_zir()`` holds the folded decoder: the model is folded to match.
    """
    decoder = getattr(model, "decoder", None)
    if any(k.startswith("decoder.folded.") for k in state_dict) and not getattr(decoder, "fused", True):
        model.fuse_zir()  # type: ignore[operator]
    state = match_state_dict(model, state_dict, source=source)
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys)
