"""What a command is, and the registry that finds them.

A command is one module in this package (or an installed package's entry point under
``inspectkit.commands``) holding a :class:`Command` subclass::

    from inspectkit.cli.command import Command, register_command

    @register_command
    class Hello(Command):
        name = "hello"
        help = "say hello"

        def add_arguments(self, parser):
            parser.add_argument("--who", default="line 3")

        def run(self, args):
            self.say(args, f"hello {args.who}", always=True)
            return 0

Modules here import nothing heavy at module level (torch and the stages are imported
inside :meth:`Command.run`), so ``inspectkit --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from inspectkit._text import printable
from inspectkit.errors import InspectkitError
from inspectkit.registry import Registry

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
ENTRY_POINT_GROUP = "inspectkit.commands"


class UsageError(InspectkitError):
    """Bad command-line arguments or input paths."""


class Command(ABC):
    """One ``inspectkit`` sub-command.

    Class attributes:
        name: The word on the command line (``inspectkit NAME``).
        help: One line for ``inspectkit --help``.
        takes_quiet, takes_json, takes_project: Whether the command takes the shared ``--quiet``,
            ``--json`` and ``--project``/``--name`` options (``-v`` it always takes).
        order: Place in ``inspectkit --help`` (lower first, then by name).
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    order: ClassVar[int] = 100
    takes_quiet: ClassVar[bool] = True
    takes_json: ClassVar[bool] = True
    takes_project: ClassVar[bool] = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027
        """Add the command's own options to ``parser`` (a command may have none)."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code. Raise ``InspectkitError`` for bad input."""

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def say(args: argparse.Namespace, text: str, *, always: bool = False) -> None:
        """Print ``text`` unless ``--quiet`` (``always``: print even then)."""
        if always or not getattr(args, "quiet", False):
            print(text, flush=True)

    @staticmethod
    def progress(args: argparse.Namespace) -> bool:
        """Whether progress bars are wanted (``--quiet`` and ``INSPECTKIT_PROGRESS=0`` say no)."""
        return not getattr(args, "quiet", False) and os.environ.get("INSPECTKIT_PROGRESS") != "0"


def _is_command(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Command) and bool(obj.name)


COMMANDS: Registry[type[Command]] = Registry(
    "command", ENTRY_POINT_GROUP, check=_is_command, scan="inspectkit.cli", error=UsageError
)


def register_command(cls: type[Command]) -> type[Command]:
    """Class decorator: make ``cls`` an ``inspectkit`` sub-command under ``cls.name``."""
    return COMMANDS.register(cls, name=cls.name)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


#: The largest seed (``stage.Seed``: 0 .. 2**63 - 1), checked when arguments are parsed.
SEED_MAX = 2**63 - 1


def seed_int(text: str) -> int:
    """argparse type: a seed, a whole number in 0 .. 2**63 - 1 (what every stage takes)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**63 - 1 ({SEED_MAX}), got {v}")
    return v


def check_choice(value: str, names: list[str], where: str) -> str:
    """``value`` if it is one of ``names``; a ``UsageError`` listing them otherwise. For
    choices that come from a registry behind torch, checked when the command runs rather
    than by argparse (``where``: e.g. ``"inspectkit train: --method"``)."""
    if value not in names:
        raise UsageError(f"{where}: unknown value {value!r}; choose one of {', '.join(names)}")
    return value


def add_on_error(parser: argparse.ArgumentParser) -> None:
    """The ``--on-error raise|skip`` option of commands that read many files."""
    parser.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="raise: stop at the first unreadable file (default); skip: leave it out and "
        "list it in the output (exit 0 only when something was scored)",
    )


def shown(value: object) -> str:
    """``value`` as text to print: a path or name from the file system on one line with
    every character visible (:func:`inspectkit.records.printable`), so a file name with a
    tab, a newline or undecodable bytes can neither forge output rows nor fail to print."""
    return printable(str(value))


def wrap(where: object, exc: InspectkitError) -> UsageError:
    """``exc`` as a one-line :class:`UsageError` that starts with ``where``."""
    text = str(exc)
    return UsageError(text if text.startswith(str(where)) else f"{where}: {text}")


__all__ = [
    "COMMANDS",
    "ENTRY_POINT_GROUP",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "SEED_MAX",
    "Command",
    "UsageError",
    "add_on_error",
    "check_choice",
    "positive_int",
    "register_command",
    "seed_int",
    "shown",
    "wrap",
]
