"""`segret-zoo` command line: the top layer, one module per sub-command in this package.

Every module listed in ``COMMANDS`` exposes ``add_cli(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning an exit code). Library code never imports
this package; errors meant for the user are :class:`segret_zoo.errors.UserError` and print as one line.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from segret_zoo.cli import convert, demo, predict, push, train
from segret_zoo.cli import eval as eval_command
from segret_zoo.cli.options import OneLineParser
from segret_zoo.errors import UserError
from segret_zoo.settings import check_environment
from segret_zoo.version import __version__

# in the order --help lists them
COMMANDS = (demo, train, eval_command, predict, convert, push)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="segret-zoo",
        description="SegRet model zoo: demo, train, evaluate, predict, export, convert and publish.",
    )
    parser.add_argument("--version", action="version", version=f"segret-zoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_cli(subparsers)
    return parser


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: a message that embeds a traceback (a DataLoader worker's,
    say) is reduced to its last line, without the exception's name."""
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1][:1].isupper():
        last = rest  # "package.module.SomeError: message" -> "message"
    return last


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_environment()
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"segret-zoo {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # EACCES, ENOSPC, EROFS, ...: the system's words and the file, not a traceback
        where = f": {err.filename}" if err.filename else ""
        what = err.strerror or one_line(err)
        print(f"segret-zoo {args.command}: error: {what}{where}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segret-zoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
