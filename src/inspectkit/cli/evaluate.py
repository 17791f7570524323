"""``inspectkit evaluate``: metrics of a saved model on labelled data, optionally a report."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from inspectkit.cli.command import EXIT_OK, Command, register_command
from inspectkit.cli.project import Project, load_model, pick

#: Schema tag of ``inspectkit evaluate --json``.
EVALUATE_SCHEMA = "inspectkit.evaluate/1"


def evaluation_json(
    report: Any, *, task: str, model: str, data: str, html: str | None
) -> dict[str, Any]:
    """The stable ``inspectkit evaluate --json`` object (schema ``inspectkit.evaluate/1``)."""
    return {
        "schema": EVALUATE_SCHEMA,
        "task": task,
        "model": model,
        "data": data,
        "title": report.title,
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in report.metrics.items()},
        "classes": list(report.classes),
        "confusion": report.confusion,
        "per_class": report.per_class,
        "counts": report.counts,
        "notes": list(report.notes),
        "report_html": html,
    }


def print_report(report: Any) -> None:
    """Metrics, the per-class table and notes as text."""
    print(report.title)
    for k, v in report.metrics.items():
        print(f"  {k:<20} {v:.4f}")
    if report.per_class:
        keys = [
            k
            for k in ("precision", "recall", "f1", "support")
            if k in next(iter(report.per_class.values()))
        ]
        print("  " + "class".ljust(16) + "".join(k.rjust(11) for k in keys))
        for cls, figs in report.per_class.items():
            cells = "".join(
                (f"{figs[k]:.0f}" if k == "support" else f"{figs[k]:.3f}").rjust(11) for k in keys
            )
            print("  " + str(cls)[:15].ljust(16) + cells)
    for note in report.notes:
        print(f"  note: {note}")


@register_command
class Evaluate(Command):
    name = "evaluate"
    help = "metrics of a model on labelled data"
    order = 40

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", metavar="MODEL_DIR")
        parser.add_argument("--data", metavar="PATH")
        parser.add_argument(
            "--report", metavar="DIR", help="also write report.html and report.json here"
        )

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.metrics import anomaly_report, classification_report
        from inspectkit.sources import load

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "evaluate")
        data_path = pick(args.data, project, lambda p: p.data, "--data", "evaluate")
        report_dir = (
            Path(args.report) if args.report else project.report(args.name) if project else None
        )
        pipe, card = load_model(model_dir)
        task = card["task"]
        data = load(data_path, purpose="evaluate", task=task, channels=card.get("channels"))
        result = pipe.run(data)
        title = f"{model_dir.name} on {data_path.name}"
        if task == "classify":
            report = classification_report(result, title=title)
            extra: dict[str, Any] = {"predictions": result}
        else:
            report = anomaly_report(result, title=title)
            extra = {"scores": result}
        html = None
        if report_dir is not None:
            from inspectkit.report import write_html

            report.save(report_dir / "report.json")
            html = str(write_html(report, report_dir, **extra))
        if args.json:
            summary = evaluation_json(
                report, task=task, model=str(model_dir), data=str(data_path), html=html
            )
            print(json.dumps(summary))
            return EXIT_OK
        print_report(report)
        if html:
            print(f"report: {html}")
        return EXIT_OK
