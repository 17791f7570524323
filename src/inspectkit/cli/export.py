"""``inspectkit export``: a trained model as ONNX (``MODEL.onnx`` + the sidecar
``MODEL.json``), checked against the library before it is written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inspectkit.cli.card import load_model
from inspectkit.cli.command import EXIT_OK, Command, positive_int, register_command
from inspectkit.cli.project import Project, pick

#: Schema tag of ``inspectkit export --json``.
EXPORT_SCHEMA = "inspectkit.export/1"


@register_command
class Export(Command):
    name = "export"
    help = "export a trained model to ONNX for ONNX Runtime / inspectkit-runtime"
    order = 76  # after the seven whose order in --help the tests pin

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", metavar="MODEL_DIR")
        parser.add_argument(
            "--out",
            required=True,
            metavar="MODEL.onnx",
            help="the ONNX file (the sidecar MODEL.json goes beside it)",
        )
        parser.add_argument(
            "--opset", type=positive_int, default=None, help="ONNX opset (default 17)"
        )
        parser.add_argument(
            "--verify-on",
            nargs="*",
            default=[],
            metavar="PATH",
            help="real inputs to verify the export on, besides random probes",
        )
        parser.add_argument(
            "--strict",
            action="store_true",
            help="refuse models whose own run is not exact float32 (bfloat16 features, approximate search)",
        )
        parser.add_argument(
            "--batch-hint",
            type=positive_int,
            default=None,
            help="inputs per graph run the runtime uses by default",
        )

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.cli.predict import load_inputs_for
        from inspectkit.export import OPSET, export_pipeline

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "export")
        pipe, card = load_model(model_dir)
        verify_on = load_inputs_for(args.verify_on, card, "export") if args.verify_on else None
        out = export_pipeline(
            pipe,
            Path(args.out),
            opset=args.opset or OPSET,
            kind=card.get("kind"),
            verify_on=verify_on,
            batch_hint=args.batch_hint,
            strict=args.strict,
        )
        sidecar = out.with_suffix(".json")
        info = json.loads(sidecar.read_text())
        if args.json:
            print(
                json.dumps(
                    {
                        "schema": EXPORT_SCHEMA,
                        "onnx": str(out),
                        "sidecar": str(sidecar),
                        "external_data": [e["file"] for e in info["external_data"]],
                        "task": info["task"],
                        "verified": info.get("verified"),
                        "notes": info["notes"],
                    }
                )
            )
        else:
            self.say(
                args,
                f"wrote {out} and {sidecar.name} (opset {info['opset']}, dynamic batch)",
                always=True,
            )
            for name, report in (info.get("verified") or {}).items():
                self.say(args, f"verified on {report['n']} {name} inputs: {report}")
            for note in info["notes"]:
                self.say(args, f"note: {note}")
        return EXIT_OK
