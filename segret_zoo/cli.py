"""`segret-zoo` command line: one sub-command per job, each defined next to the code it drives.

Every module listed in ``COMMANDS`` exposes ``add_cli(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning an exit code). Modules are imported only
when the command list is built, so ``segret-zoo --help`` stays quick.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# command module -> the sub-commands it adds (kept here so --help lists them in a stable order)
COMMANDS = (
    "segret_zoo.demo",
    "segret_zoo.train.cli",
    "segret_zoo.evaluate",
    "segret_zoo.inference.cli",
    "segret_zoo.convert",
    "segret_zoo.hub.cli",
)


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from segret_zoo import __version__

    parser = argparse.ArgumentParser(
        prog="segret-zoo",
        description="SegRet model zoo: demo, train, evaluate, predict, export, convert and publish.",
    )
    parser.add_argument("--version", action="version", version=f"segret-zoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a command whose module is not in this build
            if err.name == module_name:
                continue
            raise
        module.add_cli(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"segret-zoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segret-zoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
