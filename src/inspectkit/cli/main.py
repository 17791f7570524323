"""The parser, exit codes and error printing of the ``inspectkit`` command.

Exit codes: 0 on success, 2 on bad arguments or input (one line naming the file and the
problem), 1 on an internal failure. A user mistake never prints a Python traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from inspectkit._text import printable
from inspectkit._version import __version__
from inspectkit.cli.command import (
    COMMANDS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    UsageError,
)
from inspectkit.errors import InspectkitError

log = logging.getLogger("inspectkit.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _shared_options(command: Command) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    if command.takes_quiet:
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter")
    p.add_argument("--verbose", "-v", dest="verbose_sub", action="store_true", help="log details")
    if command.takes_json:
        p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    if command.takes_project:
        p.add_argument(
            "--project",
            metavar="DIR",
            help="project folder: DIR/data/<class>/, DIR/generated/<class>/, DIR/models/, DIR/reports/",
        )
        p.add_argument(
            "--name", default="model", help="model name inside PROJECT/models/ (default: model)"
        )
    return p


def commands() -> list[Command]:
    """One instance of every command (built-in and installed), in help order. A plugin
    command that fails to load is left out with a warning instead of breaking the rest."""
    found = []
    for name in COMMANDS.names():
        try:
            found.append(COMMANDS.get(name)())
        except InspectkitError as exc:
            print(f"inspectkit: warning: {exc}", file=sys.stderr)
    return sorted(found, key=lambda c: (c.order, c.name))


def build_parser() -> argparse.ArgumentParser:
    """The ``inspectkit`` parser: one sub-parser per registered command."""
    # allow_abbrev=False everywhere: `train --dat x` must not quietly mean --data
    parser = _Parser(
        prog="inspectkit",
        description="AI visual inspection for production lines.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"inspectkit {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(
            command.name,
            parents=[_shared_options(command)],
            help=command.help,
            allow_abbrev=False,
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inspectkit`` console script."""
    verbose = False
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = bool(args.verbose or getattr(args, "verbose_sub", False))
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if getattr(args, "quiet", False):
            os.environ["INSPECTKIT_PROGRESS"] = "0"
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_USAGE
        return func(args)
    except InspectkitError as exc:
        print(f"inspectkit: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"inspectkit: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("inspectkit: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # internal failure: say so, the traceback only with -v
        if verbose:
            traceback.print_exc()
        print(
            f"inspectkit: internal error: {type(exc).__name__}: {one_line(exc)}"
            + ("" if verbose else " (run with -v for the traceback)"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def one_line(exc: BaseException, limit: int = 600) -> str:
    """The message on one line, every character visible (file names may hold control
    characters or undecodable bytes), cut after ``limit`` characters (full text with
    ``-v``)."""
    text = printable(" ".join(str(exc).split()))
    if len(text) > limit and not logging.getLogger().isEnabledFor(logging.INFO):
        text = text[:limit].rstrip() + " … (run with -v for the full message)"
    return text


__all__ = ["build_parser", "commands", "main", "one_line"]
