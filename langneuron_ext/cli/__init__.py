"""`langneuron` command line. Each subcommand lives in its own module `cli/<name>.py` that
defines `register(subparsers)`; the parser it adds sets `func(args) -> int`.

User errors (bad input) are raised as `CliError` (`options.fail(message)`, or the library's
ValueError subclasses) and printed as one line `langneuron <cmd>: error: ...` with exit status
2, no traceback. Options and parsers used by several verbs live in `cli/options.py`; verbs do
not import from each other.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = ["scan", "identify", "steer", "evaluate", "report", "compare", "alignment", "demo",
            "info", "bench", "steer-bench", "examples", "browse"]


class CliError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors: `langneuron scan: error: ...; see langneuron scan --help`
    instead of the whole usage (sub-parsers inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = CliParser(
        prog="langneuron",
        description="Find and steer the language neurons of large language models.")
    parser.add_argument("--version", action="version", version=f"langneuron-ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..stats import StatsError
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv          # the command line, for files that record how they were made
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, StatsError, FileNotFoundError, ValueError) as exc:
        print(f"langneuron {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:      # a disk or folder failing while reading or writing: one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"langneuron {args.command}: error: {exc.strerror or exc}{where}; check the "
              f"path and the free space, then run the command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"langneuron {args.command}: interrupted", file=sys.stderr)
        return 130
