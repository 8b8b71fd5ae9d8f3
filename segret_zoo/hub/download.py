"""The checked Hub download: the Hugging Face cache first, fast failure offline, the weights manifest.

Every Hub file any entry point reads comes through :func:`hub_download` (called by
:mod:`segret_zoo.hub.sources`), so all fail the same way: fast when the Hub is unreachable, and with
a message that names the repo, the file and how to supply it locally. Knows no model names.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from segret_zoo.errors import CheckpointError, WeightsNotFoundError
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


def _how_to_supply(repo_id: str, advice: Optional[str]) -> str:
    local = advice or ("To use a local copy instead, give its folder or file where you gave the repo id "
                       "(from_pretrained('/path/to/folder'); command line: --model /path/to/folder).")
    return (f"{local} Or put the repo in the Hugging Face cache (`hf download {repo_id}` on a machine with "
            "network, then copy the cache) and set HF_HUB_OFFLINE=1.")


def _published_note(repo_id: str, filename: str) -> str:
    """What the weights manifest says of a file that is not published yet (first in the message: it is
    the reason no network setting will help), or nothing."""
    entry = find_entry(repo_id, filename)
    if entry is not None and entry.get("status") != "published":
        return (f"these weights ({entry.get('name')}) are not on the Hub yet (weights/manifest.json lists them as "
                f"{entry.get('status')}; see weights/README.md); ")
    return ""


def _not_found(text: str, repo_id: str, advice: Optional[str], cli_advice: Optional[str]) -> WeightsNotFoundError:
    """The error for a file that cannot be had, with the advice for the caller's users: ``advice`` in
    the Python spelling, ``cli_advice`` (when the call came from a command) as the CLI prints it."""
    err = WeightsNotFoundError(f"{text} {_how_to_supply(repo_id, advice)}")
    if cli_advice:
        err.cli_message = f"{text} {_how_to_supply(repo_id, cli_advice)}"
    return err


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
    local_files_only: bool = False,
    advice: Optional[str] = None,
    cli_advice: Optional[str] = None,
) -> Optional[Path]:
    """Path of a Hub file in the local cache, downloading it if needed; fails within seconds offline.

    huggingface_hub retries the metadata request for up to a minute when a file is not cached. Here
    the cache is consulted first when offline, and otherwise one metadata request with a short
    timeout and no retries decides whether the Hub is reachable before the real download starts.
    With ``required=False`` a file the repo does not have gives ``None`` (optional ``config.json``).
    ``local_files_only`` (huggingface_hub's argument) reads the cache only, as offline does.
    ``advice`` replaces the default "how to supply a local copy" sentence (a caller whose users type
    something else, e.g. timm's ``pretrained_cfg_overlay``); the Hub-cache alternative always follows.
    ``cli_advice`` is the same sentence in the command line's spelling (``--checkpoint PATH``), which
    the CLI prints instead (``UserError.cli_message``).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    note = _published_note(repo_id, filename)
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    cached_path = Path(cached) if isinstance(cached, str) else None
    if is_offline() or local_files_only:
        if cached_path is not None and not force_download:
            return _verified(cached_path, repo_id, filename, revision)
        if not required:
            return None
        why = "HF_HUB_OFFLINE is set" if is_offline() else "local_files_only=True"
        raise _not_found(f"cannot load {where}: {note}{why} and the file is not in the Hugging Face cache "
                         f"({cache_dir or _default_cache()}).", repo_id, advice, cli_advice)
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
        raise _not_found(f"the Hub repo {repo_id} has no file {filename}"
                         + (f" at revision {revision}." if revision else "."), repo_id, advice, cli_advice) from err
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as err:
        kind = type(err).__name__.replace("Error", "")
        raise _not_found(f"cannot download {where}: {note}{kind} (the repo or revision does not exist, or it is "
                         "private/gated and needs token=...).", repo_id, advice, cli_advice) from err
    except Exception as err:  # network down, DNS, timeout, proxy, HTTP 5xx/401 (HfHubHTTPError)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
        if cached_path is not None and not force_download:
            warnings.warn(f"the Hub is unreachable ({reason}); using the cached {where}", stacklevel=2)
            return _verified(cached_path, repo_id, filename, revision)
        raise _not_found(f"cannot download {where}: {note}no usable answer from the Hugging Face Hub within "
                         f"{timeout:g}s ({reason}) and the file is not in the local cache.", repo_id, advice,
                         cli_advice) from err
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
