"""``inspectkit serve``: the model loaded once, answered over HTTP (the ``serve`` extra:
FastAPI and uvicorn). See :mod:`inspectkit.serve.app` for the endpoints."""

from __future__ import annotations

import argparse

from inspectkit.cli.command import EXIT_OK, Command, UsageError, positive_int, register_command
from inspectkit.cli.project import Project, pick


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


@register_command
class Serve(Command):
    name = "serve"
    help = "serve a model over HTTP: /predict, /health, /model, /reload, /metrics"
    order = 77
    takes_json = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model", metavar="MODEL", help="model folder, or an exported MODEL.onnx"
        )
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default: localhost only)"
        )
        parser.add_argument("--port", type=_port, default=8000)
        parser.add_argument(
            "--reference",
            nargs="*",
            default=[],
            metavar="PATH",
            help="good parts whose scores are the drift reference (e.g. the calibration goods)",
        )
        parser.add_argument(
            "--max-body-mb", type=positive_int, default=64, help="largest request body (413 above)"
        )
        parser.add_argument("--drift-window", type=positive_int, default=500)
        parser.add_argument(
            "--drift-alarm",
            type=float,
            default=0.25,
            help="PSI above which the drift alarm is raised",
        )
        parser.add_argument(
            "--threads",
            type=positive_int,
            default=None,
            help="ONNX Runtime threads (exported models)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            import uvicorn

            from inspectkit.serve import create_app
        except ImportError as exc:
            raise UsageError(
                f"inspectkit serve needs the serve extra ({exc.name} is missing): pip install 'inspectkit[serve]'"
            ) from None
        import signal
        import threading

        project = Project.from_args(args)
        model = pick(args.model, project, lambda p: p.model(args.name), "--model", "serve")
        if not args.drift_alarm > 0:
            raise UsageError("inspectkit serve: --drift-alarm must be positive")
        options = {"threads": args.threads} if args.threads else {}
        app = create_app(
            model,
            reference=args.reference,
            max_body=args.max_body_mb * 1024 * 1024,
            drift_window=args.drift_window,
            drift_alarm=args.drift_alarm,
            **options,
        )
        holder = app.state.holder

        def on_hangup(_signum: int, _frame: object) -> None:
            def reload() -> None:
                try:
                    holder.reload()
                    app.state.metrics.reloads += 1
                except Exception as exc:  # the old model keeps serving
                    app.state.metrics.reload_failures += 1
                    print(
                        f"inspectkit serve: reload failed, keeping the previous model: {exc}",
                        flush=True,
                    )

            threading.Thread(target=reload, daemon=True).start()

        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, on_hangup)
        self.say(
            args,
            f"serving {model} on http://{args.host}:{args.port} (POST /predict, GET /health /model /metrics, POST /reload or SIGHUP)",
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return EXIT_OK
