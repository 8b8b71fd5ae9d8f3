"""The exceptions users see. Raising one needs no CLI import; the CLI prints their message on one line.

Each subclasses the builtin a caller would catch (``FileNotFoundError``, ``ValueError``) so library
users keep their usual ``except`` clauses, and :class:`UserError` so the command line can tell "your
input is wrong" (one line, exit 2) from a bug (a traceback).
"""

__all__ = [
    "UserError",
    "WeightsNotFoundError",
    "CheckpointError",
    "ImageReadError",
    "DatasetLayoutError",
    "MaskValueError",
    "OptionError",
    "OutputPathError",
    "DiskFullError",
    "ResumeMismatchError",
    "FolderInUseError",
    "MissingDependencyError",
]


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line, no traceback."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The weights asked for cannot be obtained (not cached, Hub unreachable, repo or file missing)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


class ImageReadError(UserError, ValueError):
    """An input that cannot become an RGB image or a label mask. The message is one line and starts
    with the file's name, so a batch job can report it and go on with the next file."""


class DatasetLayoutError(UserError, FileNotFoundError):
    """The dataset folder does not have the expected layout (missing folders, images or masks)."""


class MaskValueError(UserError, ValueError):
    """A mask holds values that are not valid labels for its dataset (after any id mapping)."""


class OptionError(UserError, ValueError):
    """An option value that is not allowed (an unknown device or dtype, a GPU that is not there)."""


class OutputPathError(UserError, OSError):
    """An output folder (``--out``) that cannot be created or written (read-only, a file in the way).

    Raised as ``OutputPathError(errno, message)``; prints as the message alone (no ``[Errno N]``)."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


class DiskFullError(UserError, OSError):
    """A write ran out of space; the file it was replacing is left as it was (``(errno, message)``)."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


class ResumeMismatchError(UserError, ValueError):
    """``--resume`` with settings that differ from the checkpoint's run (it would not continue that run)."""


class FolderInUseError(UserError, RuntimeError):
    """A folder another live process holds (a second ``train`` on the same ``--out``)."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency (an extra such as ``[onnx]``) that a command needs is not installed."""
