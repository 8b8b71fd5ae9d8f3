"""Atomic file writes: the one way segret-zoo writes a file that someone may read back.

A run killed while writing (OOM killer, pre-emption, Ctrl-C twice, a full disk) must never leave a
truncated file where the last good one was. Every writer here writes to a temporary name in the
same folder (so the rename stays on one filesystem), flushes it to disk, then ``os.replace``-s it
over the target, which is atomic on POSIX and Windows. A folder whose files belong together
(``save_pretrained``: weights beside the config that builds them) is written the same way one level
up (:func:`write_folder_atomic`): complete as a hidden sibling folder first, then swapped in.

Files get the mode a plain ``open()`` would give them (0666 minus the user's umask), not the 0600
of ``mkstemp``, so a shared group or a web server can read what a run wrote. A full disk raises
:class:`~segret_zoo.errors.DiskFullError` naming the path (the file being replaced is untouched),
and :func:`prepare_output_dir` turns an ``--out`` that cannot be used into one clear line.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

from segret_zoo.errors import DiskFullError, FolderInUseError, OutputPathError

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "write_files_atomic", "write_folder_atomic",
           "TMP_SUFFIX", "prepare_output_dir", "missing_folders", "remove_empty_folders", "clean_stale_temporaries",
           "file_mode", "dir_mode", "FolderLock", "LOCK_NAME"]

PathLike = Union[str, "os.PathLike[str]"]
Writer = Callable[[Path], None]  # writes the complete file at the path it is given
TMP_SUFFIX = ".tmp"


_UMASK_LOCK = threading.Lock()
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _umask() -> int:
    with _UMASK_LOCK:  # reading the umask means setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """0666 minus the process umask: the mode ``open(path, "w")`` would create a file with."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0777 minus the process umask: the mode ``mkdir`` would create a folder with."""
    return 0o777 & ~_umask()


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


@contextlib.contextmanager
def _staged(path: Path, write: Writer) -> Iterator[Path]:
    """Write to a hidden temporary name beside ``path``, fsync it and yield that name for the rename.

    The temporary is ``flock``-ed until the block ends (after the rename): a writer killed meanwhile
    leaves an unlocked file that :func:`clean_stale_temporaries` removes, while a live writer's is
    left alone. Whatever is still under the temporary name when the block ends is deleted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    tmp_path = Path(tmp)
    try:
        _try_lock(fd)
        try:
            write(tmp_path)
            os.chmod(tmp_path, file_mode())  # after: a writer may have re-created the file (safetensors: 0600)
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as err:
            if err.errno in _NO_SPACE and not isinstance(err, DiskFullError):
                raise _disk_full(path, err) from err
            raise
        yield tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


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
    with _staged(path, write) as tmp:
        os.replace(tmp, path)
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
    with contextlib.ExitStack() as stack:
        staged = [(stack.enter_context(_staged(folder / name, write)), folder / name) for name, write in writers]
        for tmp, final in staged:
            os.replace(tmp, final)
    _fsync_dir(folder)
    return [final for _, final in staged]


def missing_folders(path: PathLike) -> List[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, deepest first: what creating it
    adds, and so what :func:`remove_empty_folders` takes away if the work never starts."""
    folder = Path(path).expanduser()
    return [p for p in [folder, *folder.parents] if not p.exists()]


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`missing_folders` lists them) while they are empty:
    the first one that holds something, or cannot be removed, ends it, so nothing of anyone's is lost."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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
    """Remove the hidden temporaries (``.NAME.XXXX.tmp``) killed writers left in ``folder``; returns them.

    A temporary a live writer holds (its ``flock``, taken by :func:`_staged`) is left alone, so this is
    safe while other processes write into the same folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file() and _abandoned(p):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------------------------------
# whole folders
# --------------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_OLD_SUFFIX = ".old"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False  # an old kernel or a filesystem without exchange: the two-rename fallback
    raise OSError(err, os.strerror(err), str(b))


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking ``flock`` on ``fd``: True when got (nobody else holds it)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): callers fall back to age
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # a filesystem without flock: nothing to coordinate with


def _abandoned(path: Path) -> bool:
    """Whether a staging folder was left by a writer that is gone: its ``flock`` is free (the kernel
    drops it when the process dies); where there is no flock, when it is over an hour old."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if sys.platform == "win32":
            return time.time() - path.stat().st_mtime > 3600
        return _try_lock(fd)
    finally:
        os.close(fd)  # closing releases a lock taken just to test it


def _staging_siblings(target: Path) -> List[Path]:
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith(prefix) and p.name.endswith((TMP_SUFFIX, _OLD_SUFFIX))
            and p.is_dir() and not p.is_symlink()]


def _recover_and_clean(target: Path) -> List[Path]:
    """Undo what a killed :func:`write_folder_atomic` left beside ``target``; returns what was removed.

    A killed two-rename swap (no ``RENAME_EXCHANGE``) can leave the previous save under its ``.old``
    name with ``target`` missing: it is renamed back. Every other abandoned staging folder (a save
    killed before or after its swap) is deleted; one another process is still writing is left alone.
    """
    siblings = [p for p in _staging_siblings(target) if _abandoned(p)]
    olds = sorted((p for p in siblings if p.name.endswith(_OLD_SUFFIX)), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.rename(olds[-1], target)
        siblings.remove(olds[-1])
    for p in siblings:
        shutil.rmtree(p, ignore_errors=True)
    return siblings


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the file is only ever replaced by rename, never rewritten: sharing it is safe
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(source: Path, stage: Path, skip: Sequence[str]) -> None:
    """Entries of the previous folder that this save does not write, into the new one (hard links)."""
    for entry in source.iterdir():
        if entry.name in skip:
            continue
        dst = stage / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dst)
        elif entry.is_dir():
            shutil.copytree(entry, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dst))


def _swappable(target: Path) -> bool:
    """Whether ``target`` may be replaced as a whole: not a mount point, not this process's working
    folder or one above it (renaming those would pull the ground from under the process)."""
    if target.exists() and os.path.ismount(target):
        return False
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return True
    return not (cwd == target or target in cwd.parents)


def write_folder_atomic(folder: PathLike, writers: Sequence[Tuple[str, Writer]], *,
                        remove: Sequence[str] = ()) -> Path:
    """Write ``writers``' files into ``folder`` all-or-nothing *as a folder*: a kill at any moment
    leaves either the previous folder or the new one, complete, under ``folder``.

    How: the new folder is built as a hidden sibling (``.NAME.XXXX.tmp``), holding the new files plus
    hard links to every other entry of the previous folder (except ``remove``), each file flushed to
    disk; then it is swapped in with one ``renameat2(RENAME_EXCHANGE)`` (Linux), or, where that does
    not exist, two renames that the next save undoes if killed between them. Siblings left by a
    killed save are removed at the next save of the same folder (a ``flock`` on the staging folder
    tells an abandoned one from a save in progress). Files get the umask's mode, the folder keeps
    its own (or the umask's when new). A working folder or mount point cannot be swapped: there the
    files are replaced one rename each, as :func:`write_files_atomic` does.
    """
    folder = Path(folder).expanduser()
    target = folder.resolve() if folder.is_symlink() else Path(os.path.abspath(folder))
    if target.exists() and not target.is_dir():
        raise OutputPathError(errno.ENOTDIR, f"{folder}: cannot save a folder there, a file is in the way; "
                                             "choose another folder or move that file")
    names = [name for name, _ in writers]
    if not _swappable(target):
        written = write_files_atomic(target, writers)
        for name in remove:
            if name not in names:
                (target / name).unlink(missing_ok=True)
        return written[0].parent if written else target
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_and_clean(target)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    lock_fd = os.open(stage, os.O_RDONLY)
    try:
        _try_lock(lock_fd)  # held until this process ends or is done: tells cleaners it is in use
        os.chmod(stage, stat.S_IMODE(target.stat().st_mode) if target.is_dir() else dir_mode())  # not mkdtemp's 0700
        for name, write in writers:
            path = stage / name
            try:
                write(path)
                os.chmod(path, file_mode())  # whatever the writer created it with (safetensors: 0600)
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
            except OSError as err:
                if err.errno in _NO_SPACE and not isinstance(err, DiskFullError):
                    raise _disk_full(target / name, err) from err
                raise
        if target.is_dir():
            _carry_over(target, stage, [*names, *remove])
        _fsync_dir(stage)
        if not target.exists():
            os.rename(stage, target)
        elif _exchange(stage, target):
            shutil.rmtree(stage, ignore_errors=True)  # now the previous folder
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_OLD_SUFFIX, dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
            os.rename(stage, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
    _fsync_dir(target.parent)
    return folder


# --------------------------------------------------------------------------------------------------
# one run per folder
# --------------------------------------------------------------------------------------------------
LOCK_NAME = ".segret-zoo.lock"


class FolderLock:
    """An exclusive lock on a folder for the life of one process (``fcntl.flock`` on ``LOCK_NAME``).

    Why flock: the kernel drops it when the process ends, however it ends (SIGKILL, OOM killer,
    power loss of a network client aside), so a killed run never leaves the folder locked and no
    stale-lock guessing is needed. The lock file stays; it records who holds it, for the message
    the next process gets. Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, folder: PathLike, purpose: str = "a training run", option: str = "--out") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self.option = option
        self._fd: Optional[int] = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:
            return self
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return self  # a filesystem without flock: run unlocked rather than not at all
            who = f" ({holder})" if holder else ""
            raise FolderInUseError(
                f"{self.option} {self.folder} is in use by {self.purpose} still running{who}; wait for it "
                f"to finish (or stop it), or choose another {self.option}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
