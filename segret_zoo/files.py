"""Atomic file writes: the one way segret-zoo writes a file that someone may read back.

A run killed while writing (OOM killer, pre-emption, Ctrl-C twice, a full disk) must never leave a
truncated file where the last good one was. Every writer here writes to a temporary name in the
same folder (so the rename stays on one filesystem), flushes it to disk, then ``os.replace``-s it
over the target, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple, Union

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "write_files_atomic", "TMP_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]
Writer = Callable[[Path], None]  # writes the complete file at the path it is given
TMP_SUFFIX = ".tmp"


def _stage(path: Path, write: Writer) -> Path:
    """Write to a hidden temporary name beside ``path`` and fsync it; returns the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return tmp_path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (not possible on every platform or filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Writer) -> Path:
    """Call ``write(temporary_path)``, then rename the finished file over ``path``."""
    path = Path(path)
    tmp = _stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: PathLike, data: Any, **dump_kwargs: Any) -> Path:
    """JSON with two-space indent and a final newline (``dump_kwargs`` go to ``json.dumps``)."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("ensure_ascii", False)
    return write_text_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


def write_files_atomic(folder: PathLike, writers: Sequence[Tuple[str, Writer]]) -> List[Path]:
    """Write several files of one folder so that either all are replaced or none is.

    Every file is first complete on disk under a temporary name; the renames happen only then, so
    a crash while writing leaves the previous files untouched and no partial file behind.
    """
    folder = Path(folder)
    staged: List[Tuple[Path, Path]] = []
    try:
        for name, write in writers:
            staged.append((_stage(folder / name, write), folder / name))
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return [final for _, final in staged]
