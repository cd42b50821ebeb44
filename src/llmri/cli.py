"""The ``llmri`` command: thin argparse front end over the library.

Each subcommand lives in ``llmri.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``. Known errors (LlmriError) become one line on stderr and exit code 1;
bad usage exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from ._errors import LlmriError

#: Subcommand modules, in the order ``llmri --help`` lists them.
COMMANDS = ["capture", "info", "export", "view", "serve", "chat", "demo", "backends", "inspect", "upgrade"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmri", description="An fMRI for language models.")
    parser.add_argument("--version", action="version", version=f"llmri {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"llmri.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"llmri.commands.{name}":
                continue  # not built yet
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LlmriError as exc:
        print(f"llmri {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"llmri {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
