"""``inspectkit evaluate``: metrics of a saved model on labelled data, optionally a report.

``--project`` without ``--data`` scores only the project's samples the model was not
trained on (its held-out split, :meth:`~inspectkit.cli.project.Project.held_out`); any
evaluation that includes training samples says so in its notes. ``--on-error skip``
leaves unreadable files out: each is a note (``skipped <file>: <reason>``) and
``counts["skipped"]`` says how many.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from inspectkit.cli.card import load_model, seen_in_training, training_note
from inspectkit.cli.command import (
    EXIT_OK,
    Command,
    add_on_error,
    register_command,
    shown,
)
from inspectkit.cli.project import SPLIT_FILE, Project, pick

#: Schema tag of ``inspectkit evaluate --json``.
EVALUATE_SCHEMA = "inspectkit.evaluate/1"


def evaluation_json(
    report: Any,
    *,
    task: str,
    model: str,
    data: str,
    html: str | None,
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
    print(shown(report.title))
    width = max([20, *(len(k) for k in report.metrics)])
    for k, v in report.metrics.items():
        print(f"  {k:<{width}} {v:.4f}")
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
            print("  " + shown(cls)[:15].ljust(16) + cells)
    for note in report.notes:
        print(f"  note: {shown(note)}")


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
        add_on_error(parser)

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.sources import load

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "evaluate")
        data_path = pick(args.data, project, lambda p: p.data, "--data", "evaluate")
        report_dir = (
            Path(args.report) if args.report else project.report(args.name) if project else None
        )
        pipe, card = load_model(model_dir)
        task = card["task"]
        data = load(
            data_path,
            purpose="evaluate",
            task=task,
            channels=card.get("channels"),
            on_error=args.on_error,
        )
        notes: list[str] = []
        if project is not None and args.data is None:
            data, note = held_out_part(project, pipe, data)
            notes += [note] if note else []
        seen = training_note(pipe, card, data, data_path)
        if seen:
            notes.append(seen)
        notes += [f"skipped {entry}" for entry in data.skipped]  # one note per file
        title = f"{model_dir.name} on {data_path.name}"
        report, extra = scored_report(pipe, task, data, title, notes)
        html = None
        if report_dir is not None:
            from inspectkit.report import write_html

            report.save(report_dir / "report.json")
            html = str(write_html(report, report_dir, **extra))
        if args.json:
            summary = evaluation_json(
                report,
                task=task,
                model=shown(model_dir),
                data=shown(data_path),
                html=None if html is None else shown(html),
            )
            print(json.dumps(summary))
            return EXIT_OK
        print_report(report)
        if html:
            print(f"report: {shown(html)}")
        return EXIT_OK


def scored_report(
    pipe: Any, task: str, data: Any, title: str, notes: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The evaluation report of ``pipe`` on ``data`` (``notes`` added, and for a detector
    its recipe's notes; the skipped count) and the records
    :func:`inspectkit.report.write_html` draws from. The studio's evaluation is this one."""
    from inspectkit.metrics import anomaly_report, classification_report

    result = pipe.run(data)
    notes = list(notes)
    if task == "classify":
        report = classification_report(result, title=title)
        extra: dict[str, Any] = {"predictions": result}
    else:
        report = anomaly_report(result, title=title)
        extra = {"scores": result}
        describe = getattr(pipe.stages[-1], "recipe_notes", None)  # features and recipe
        notes += describe() if callable(describe) else []
    counts = {**report.counts, "skipped": len(data.skipped)} if data.skipped else report.counts
    report = report.model_copy(update={"notes": [*report.notes, *notes], "counts": counts})
    return report, extra


def held_out_part(project: Project, pipe: Any, data: Any) -> tuple[Any, str | None]:
    """The part of the project's data held out from the model's training, and a note
    saying what was scored: once the project has a split, every sample but the model's
    training samples (a model that does not record them: the split's test samples).
    Without a split (a small project) everything is scored, and :func:`training_note`
    says that it includes training samples."""
    if not project.split_file.is_file():
        return data, None
    seen = seen_in_training(pipe, data)
    if seen is not None:
        drop = set(seen)
        keep = [i for i in range(len(data)) if i not in drop]
        what = "the project samples this model was not trained on"
    else:
        test = project.held_out(data, seed=0)
        keep = [i for i, s in enumerate(data.samples) if s.id in test]
        what = f"the project's test split ({SPLIT_FILE})"
    if not keep:
        return data, "no project sample was held out from this model's training"
    return data.subset(keep), f"scored on {what}: {len(keep)} of {len(data)} samples"
