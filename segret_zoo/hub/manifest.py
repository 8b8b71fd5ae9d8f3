"""The weights manifest (`weights/manifest.json`): which checkpoints the zoo knows, where they live on
the Hub, and the size and sha256 a download must have.

Hub repos can be rewritten after a release; checking every download against sizes and digests kept
in git catches both that and a file damaged in transit. The manifest path can be overridden with the
``SEGRET_ZOO_MANIFEST`` environment variable (tests, forks that publish their own weights).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from segret_zoo.errors import OptionError
from segret_zoo.files import write_json_atomic
from segret_zoo.settings import is_zoo_repo

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST_ENV = "SEGRET_ZOO_MANIFEST"

_STATUSES = ("not_published", "published")


def default_manifest_path() -> Path:
    """`weights/manifest.json` of this checkout, unless ``SEGRET_ZOO_MANIFEST`` names another file."""
    override = os.environ.get(MANIFEST_ENV)
    if override:
        return Path(override).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "weights" / "manifest.json"
    # an installed wheel carries a copy next to this module (a symlink in the source tree)
    return checkout if checkout.is_file() else Path(__file__).with_name("manifest.json")


def load_manifest(path: Optional[PathLike] = None) -> dict[str, Any]:
    """Read the manifest; an installed package without the `weights/` folder gets an empty one.

    A manifest named explicitly (``path``, or ``SEGRET_ZOO_MANIFEST``) must be a readable manifest
    file: a folder, a missing file or bad JSON there is one :class:`OptionError` naming it, never
    an empty manifest (which would silently turn every digest check off).
    """
    from_env = path is None and bool(os.environ.get(MANIFEST_ENV))
    named = path is not None or from_env
    path = Path(path) if path is not None else default_manifest_path()
    where = f"{MANIFEST_ENV}={path}" if from_env else str(path)
    fix = f"point {MANIFEST_ENV} at a manifest.json file, or unset it to use the one shipped with segret-zoo"
    if not path.is_file():
        if not named:
            return {"schema_version": 1, "checkpoints": []}
        what = "is a folder" if path.is_dir() else "does not exist"
        raise OptionError(f"manifest {where} {what}; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OptionError(f"manifest {where} is not valid JSON ({err}); fix the file or {fix}") from None
    except OSError as err:
        raise OptionError(f"manifest {where} cannot be read ({err.strerror or err}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise OptionError(f"manifest {where} is not a segret-zoo manifest (expected an object with a "
                          f"'checkpoints' list); {fix}")
    return data


def _repo_name(repo_id: str) -> str:
    return repo_id.split("/", 1)[-1]


def find_entry(
    repo_id: Optional[str] = None,
    filename: Optional[str] = None,
    *,
    name: Optional[str] = None,
    manifest: Optional[dict[str, Any]] = None,
) -> Optional[dict[str, Any]]:
    """The manifest entry for a Hub file (or a checkpoint name such as ``segret_tiny.ade20k``).

    The manifest spells repo ids with the default organisation; a repo under the organisation chosen
    with ``SEGRET_ZOO_HF_ORG`` is the same checkpoint re-hosted, so it matches too. Repos of any
    other organisation are someone else's files and are not checked.
    """
    manifest = load_manifest() if manifest is None else manifest
    for entry in manifest.get("checkpoints", []):
        if name is not None:
            if entry.get("name") == name:
                return entry
            continue
        hub_id = entry.get("hf_hub_id") or ""
        if filename is not None and entry.get("filename", "model.safetensors") != filename:
            continue
        if repo_id == hub_id or (
            repo_id is not None
            and "/" in repo_id
            and is_zoo_repo(repo_id)
            and _repo_name(repo_id) == _repo_name(hub_id)
        ):
            return entry
    return None


def file_sha256(path: PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: PathLike, entry: dict[str, Any], *, source: str = "") -> None:
    """Check a downloaded file against its manifest entry's size and sha256 (when recorded).

    Size first: it is free and catches truncated downloads without hashing gigabytes.
    """
    where = source or str(path)
    size = entry.get("size")
    if size is not None:
        actual = os.path.getsize(path)
        if actual != int(size):
            raise ValueError(
                f"{where}: size {actual} bytes does not match weights/manifest.json ({size} bytes) for "
                f"{entry.get('name')}: the file is truncated or was replaced; delete it from the cache and "
                "download it again (force_download), or update the manifest if the release changed"
            )
    sha = entry.get("sha256")
    if sha:
        actual_sha = file_sha256(path)
        if actual_sha != sha.lower():
            raise ValueError(
                f"{where}: sha256 {actual_sha} does not match weights/manifest.json ({sha}) for "
                f"{entry.get('name')}: the file is corrupted or was replaced; delete it from the cache and "
                "download it again (force_download), or update the manifest if the release changed"
            )


def update_entry(
    name: str,
    weights_file: PathLike,
    *,
    status: str = "published",
    revision: Optional[str] = None,
    metrics: Optional[dict[str, Any]] = None,
    manifest_path: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Record a checkpoint's size, sha256, status (and optionally revision / measured metrics).

    Used by `weights/update_manifest.py` after `segret-zoo push`: the manifest is the only place a
    release's digest is written down, so it is filled from the very file that was uploaded.
    """
    if status not in _STATUSES:
        raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    manifest = load_manifest(path)
    entry = find_entry(name=name, manifest=manifest)
    if entry is None:
        known = ", ".join(e.get("name", "?") for e in manifest.get("checkpoints", []))
        raise KeyError(f"{name!r} is not in {path}; known checkpoints: {known}")
    entry["size"] = os.path.getsize(weights_file)
    entry["sha256"] = file_sha256(weights_file)
    entry["status"] = status
    if revision is not None:
        entry["revision"] = revision
    if metrics is not None:
        entry["metrics"] = metrics
    write_json_atomic(path, manifest)
    return entry
