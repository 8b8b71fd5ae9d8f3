"""Where weights come from: one resolver for every source, to files on local disk.

A source is a local weights file or folder (``save_pretrained`` / ``convert-*`` output, a released
``.pth``), a Hub repo id (``org/name``, ``hf-hub:org/name[@revision]``), or a :class:`HubFile` that
a model registry names (a zoo tag's or a backbone tag's ``hf_hub_id`` and file). Every Hub file goes
through the checked download (:func:`segret_zoo.hub.download.hub_download`), and the zoo's own repos
are read from the mirror organisation when ``SEGRET_ZOO_HF_ORG`` names one. Knows no model names:
how the weights then enter a model is :mod:`segret_zoo.hub.weights`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from segret_zoo.errors import WeightsNotFoundError
from segret_zoo.hub.download import (
    CONFIG_NAME,
    HF_HUB_PREFIX,
    TORCH_SUFFIXES,
    TORCH_WEIGHTS_NAME,
    WEIGHTS_NAME,
    hub_download,
    parse_hub_name,
)
from segret_zoo.settings import mirrored_repo_id

__all__ = ["HubFile", "ResolvedSource", "resolve_source", "fetch_hub_file"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class HubFile:
    """A file a model registry points at (``pretrained_cfg``'s ``hf_hub_id`` and ``hf_hub_filename``);
    ``config`` also fetches the repo's config.json when it has one; ``advice`` is the sentence that tells
    a user who cannot download it how to supply a local copy through the call they made, ``cli_advice``
    the same for a user of the command line (its flags)."""

    repo_id: str
    filename: str = WEIGHTS_NAME
    config: bool = False
    advice: Optional[str] = None
    cli_advice: Optional[str] = None


@dataclass(frozen=True)
class ResolvedSource:
    """Where a checkpoint's files are on local disk, and where they came from (for messages)."""

    weights: Path
    config: Optional[Path]
    description: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None


def fetch_hub_file(repo_id: str, filename: str, *, advice: Optional[str] = None, **hub: Any) -> Path:
    """One Hub file through the checked download, with the zoo's repos read from the mirror org;
    ``advice`` is the sentence that tells the caller's users how to supply a local copy."""
    path = hub_download(mirrored_repo_id(repo_id), filename, advice=advice, **hub)
    assert path is not None
    return path


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
        "save_pretrained / `segret-zoo convert-segret` / `segret-zoo convert-rmt`, or to the weights file itself"
    )


def _local(path: Path) -> ResolvedSource:
    if path.is_dir():
        weights = _find_weights_in_dir(path)
        config = path / CONFIG_NAME
        return ResolvedSource(weights, config if config.is_file() else None, str(path))
    config = path.parent / CONFIG_NAME
    return ResolvedSource(path, config if config.is_file() else None, str(path))


def _from_hub(repo_id: str, filename: str, with_config: bool, description: str, kw: Dict[str, Any]) -> ResolvedSource:
    repo_id = mirrored_repo_id(repo_id)
    weights = hub_download(repo_id, filename, **kw)
    assert weights is not None
    kw = {k: v for k, v in kw.items() if k not in ("advice", "cli_advice")}
    config = hub_download(repo_id, CONFIG_NAME, required=False, **kw) if with_config else None
    revision = kw.get("revision")
    return ResolvedSource(weights, config, description.format(repo=repo_id), repo_id, revision)


def resolve_source(
    source: Union[PathLike, HubFile],
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    token: Optional[Union[str, bool]] = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> ResolvedSource:
    """A :class:`HubFile`, a Hub repo id (``org/name``, ``hf-hub:org/name[@rev]``), a local folder or a
    weights file -> local files. A path that exists wins over a repo id of the same spelling, as in
    transformers."""
    kw: Dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, token=token, force_download=force_download,
                              local_files_only=local_files_only)
    if isinstance(source, HubFile):
        return _from_hub(source.repo_id, source.filename, source.config, "{repo}/" + source.filename,
                         {**kw, "advice": source.advice, "cli_advice": source.cli_advice})
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not text.startswith(HF_HUB_PREFIX) and path.exists():
        return _local(path)
    looks_local = text.startswith((".", "/", "~")) or text.endswith((".safetensors",) + TORCH_SUFFIXES)
    if looks_local or text.count("/") > 1 or ("/" not in text and not text.startswith(HF_HUB_PREFIX)):
        raise WeightsNotFoundError(
            f"{text!r} is neither an existing file or folder nor a Hub repo id ('org/name' or 'hf-hub:org/name')"
        )
    repo_id, name_revision = parse_hub_name(text)
    if revision is not None and name_revision is not None and revision != name_revision:
        raise ValueError(f"revision given twice: {name_revision!r} in {text!r} and revision={revision!r}")
    kw["revision"] = revision or name_revision
    try:
        return _from_hub(repo_id, WEIGHTS_NAME, True, "{repo}" + (f"@{kw['revision']}" if kw["revision"] else ""), kw)
    except WeightsNotFoundError as err:
        if text.startswith(HF_HUB_PREFIX):
            raise
        raise WeightsNotFoundError(f"{err} (No local file or folder named {text!r} exists either.)") from err
