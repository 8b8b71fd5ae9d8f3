"""Atomic file writes: the one way segret-zoo writes a file that someone may read back.

A run killed while writing (OOM killer, pre-emption, Ctrl-C twice, a full disk) must never leave a
truncated file where the last good one was. Every writer here writes to a temporary name in the
same folder (so the rename stays on one filesystem), flushes it to disk, then ``os.replace``-s it
over the target, which is atomic on POSIX and Windows.

Files get the mode a plain ``open()`` would give them (0666 minus the user's umask), not the 0600
of ``mkstemp``, so a shared group or a web server can read what a run wrote. A full disk raises
:class:`~segret_zoo.errors.DiskFullError` naming the path (the file being replaced is untouched),
and :func:`prepare_output_dir` turns an ``--out`` that cannot be used into one clear line.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from segret_zoo.errors import DiskFullError, OutputPathError

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "write_files_atomic", "TMP_SUFFIX",
           "prepare_output_dir", "clean_stale_temporaries", "file_mode"]

PathLike = Union[str, "os.PathLike[str]"]
Writer = Callable[[Path], None]  # writes the complete file at the path it is given
TMP_SUFFIX = ".tmp"


_UMASK_LOCK = threading.Lock()
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def file_mode() -> int:
    """0666 minus the process umask: the mode ``open(path, "w")`` would create a file with."""
    with _UMASK_LOCK:  # reading the umask means setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(path: Path, err: OSError) -> DiskFullError:
    free = _free_bytes(path.parent)
    left = f" ({free} bytes free)" if free is not None else ""
    return DiskFullError(err.errno, f"{path}: no space left on device{left} while writing it; the previous "
                                    f"file there is unchanged. Free some space or write to another folder")


def _stage(path: Path, write: Writer) -> Path:
    """Write to a hidden temporary name beside ``path`` and fsync it; returns the temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, file_mode())
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.errno in _NO_SPACE and not isinstance(err, DiskFullError):
            raise _disk_full(path, err) from err
        raise
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


def prepare_output_dir(path: PathLike, option: str = "--out") -> Path:
    """Create ``path`` (and parents) and make sure a file can be written there, before any work starts.

    Why up front: a read-only mount or a file where the folder should be is otherwise found after
    minutes of work, as a traceback. Raises :class:`OutputPathError` with one line naming the path.
    """
    folder = Path(path).expanduser()
    fix = f"choose another {option}" if option else "choose another folder"
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputPathError(errno.ENOTDIR, f"{option} {folder}: cannot create the folder, {blocker} is a file "
                                             f"in the way; {fix} or move that file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied"}.get(err.errno or 0, err.strerror or str(err))
        if err.errno in _NO_SPACE:
            reason = "no space left on device"
        raise OutputPathError(err.errno, f"{option} {folder}: cannot write there ({reason}); {fix}") from None
    return folder


def clean_stale_temporaries(folder: PathLike) -> List[Path]:
    """Remove the hidden temporaries (``.NAME.XXXX.tmp``) a killed writer left in ``folder``.

    Only call it where no other process is writing (a run folder at start-up); returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
