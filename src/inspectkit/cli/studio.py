"""``inspectkit studio``: the teachable-machine flow in the browser (:mod:`inspectkit.studio`).

Serves the studio on ``http://127.0.0.1:8765`` over the projects in ``--home`` (default:
the current folder), or opens ``--project DIR`` directly (its parent folder is then the
home). The page and the command line work on the same project folders. Needs the
``studio`` extra; FastAPI and uvicorn are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
from pathlib import Path

from inspectkit.cli.command import EXIT_OK, Command, UsageError, register_command

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """``Host`` headers the server answers: its own names on loopback, any elsewhere."""
    if not _is_loopback(host):
        return None
    names = {host, "localhost", "127.0.0.1", "[::1]"}
    return {f"{n}:{port}" for n in names} | names


@register_command
class Studio(Command):
    name = "studio"
    help = "the teachable-machine flow in the browser (local web app)"
    order = 80
    takes_json = False
    takes_project = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--project", metavar="DIR", help="open this project folder (created from the page)"
        )
        parser.add_argument(
            "--home", metavar="DIR", help="folder holding projects (default: the current folder)"
        )
        parser.add_argument(
            "--host",
            default=DEFAULT_HOST,
            help=f"address to listen on (default {DEFAULT_HOST}: this computer only)",
        )
        parser.add_argument("--port", type=int, default=DEFAULT_PORT)

    def run(self, args: argparse.Namespace) -> int:
        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(
                f'inspectkit studio needs {" and ".join(missing)}: pip install "inspectkit[studio]"'
            )
        if not 0 < args.port < 65536:
            raise UsageError(f"inspectkit studio: --port must be 1..65535, got {args.port}")
        start = None
        if args.project is not None:
            project = Path(args.project).resolve()
            if project.exists() and not project.is_dir():
                raise UsageError(f"{args.project}: exists and is not a folder")
            home, start = project.parent, project.name
        else:
            home = Path(args.home or ".").resolve()
        if home.exists() and not home.is_dir():
            raise UsageError(f"{home}: exists and is not a folder")

        import uvicorn

        from inspectkit.studio import create_app

        if start is not None:
            from inspectkit.studio.safety import check_name

            check_name(start, "project folder name")
        app = create_app(
            home, start_project=start, allowed_hosts=allowed_hosts(args.host, args.port)
        )
        shown = f"[{args.host}]" if ":" in args.host else args.host
        self.say(
            args,
            f"inspectkit studio on http://{shown}:{args.port}/ (projects in {home})",
            always=True,
        )
        if not _is_loopback(args.host):
            self.say(
                args,
                f"warning: listening on {args.host}: other computers on the network can open "
                "and change these projects",
                always=True,
            )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return EXIT_OK
