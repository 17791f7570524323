"""``inspectkit predict``: class probabilities, or anomaly score and verdict, per input.

A detector's verdict is ``ANOMALOUS``, ``good`` or, with a review band, ``REVIEW`` (the
``--json`` rows then carry ``review``, as the exported runtime's do). A flagged part's
``--json`` row also carries ``regions``: boxes ``[xmin, ymin, xmax, ymax]`` around its
defect region, in the image's pixels.

Inputs are read lazily (:func:`inspectkit.sources.load_inputs`) and run through
``Pipeline.iter_run`` :data:`PREDICT_BATCH` at a time, printing text rows per batch, so
memory stays flat on large folders and the first rows appear at once. With
``--on-error skip`` an unreadable input is left out and listed (``skipped``), and the
command exits 0 only when something was scored. Names are printed escaped
(:func:`~inspectkit.cli.command.shown`): a file name cannot forge a row. With ``--out DIR``
the rows go to Parquet instead (:mod:`inspectkit.scale`; ``--engine ray`` on Ray Data).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from inspectkit.cli.card import load_model
from inspectkit.cli.command import (
    EXIT_OK,
    Command,
    UsageError,
    add_on_error,
    register_command,
    shown,
)
from inspectkit.cli.project import Project, pick
from inspectkit.scale.command import add_archive_arguments, run_archive, wants_archive

#: Schema tag of ``inspectkit predict --json``.
PREDICT_SCHEMA = "inspectkit.predict/1"
#: Inputs decoded and predicted at a time (memory stays flat).
PREDICT_BATCH = 256


def load_inputs_for(
    paths: list[str], card: dict[str, Any], command: str, on_error: str = "raise"
) -> Any:
    """The inputs of ``predict``/``explain``, decoded the way the model was trained."""
    from inspectkit.sources import load_inputs

    if not paths:
        raise UsageError(f"inspectkit {command}: give at least one image, folder or wafer file")
    return load_inputs(
        paths, channels=card.get("channels"), kind=card.get("kind"), on_error=on_error
    )


def scored_batches(
    pipe: Any, data: Any, batch_size: int, on_error: str
) -> Iterator[tuple[Any | None, list[str]]]:
    """``(result, skipped)`` per batch of ``data``: ``Pipeline.iter_run``, or with
    ``on_error="skip"`` each lazily decoded input on its own, an unreadable one left out
    and listed as ``"<file>: <reason>"`` (``result`` is ``None`` when none of a batch
    could be read)."""
    from inspectkit.errors import DataError
    from inspectkit.records import LazyImages

    if on_error == "raise" or not isinstance(data.images, LazyImages):
        for result in pipe.iter_run(data, batch_size=batch_size):
            yield result, []
        return
    import torch

    for start in range(0, len(data), batch_size):
        part = data.subset(range(start, min(start + batch_size, len(data))))
        images, keep, skipped = [], [], []
        for j in range(len(part)):
            try:
                images.append(part.images[j])
            except DataError as exc:  # its message starts with the file
                skipped.append(shown(exc))
                continue
            keep.append(j)
        if not keep:
            yield None, skipped
            continue
        same = len({tuple(t.shape) for t in images}) == 1
        batch = part.subset(keep).replace(images=torch.stack(images) if same else images)
        yield pipe.run(batch), skipped


def skipped_rows(skipped: list[str]) -> None:
    """Text rows of skipped inputs: name, ``SKIPPED``, reason (tab-separated)."""
    for entry in skipped:
        name, _, reason = entry.partition(": ")
        print(f"{shown(name)}\tSKIPPED\t{shown(reason)}")
    sys.stdout.flush()


def prediction_rows(result: Any, task: str) -> list[dict[str, Any]]:
    """The ``predictions`` entries of ``inspectkit predict --json`` for one batch. A
    calibrated detector's rows carry ``regions``: the boxes of the part's defect region
    in its image's pixels (:func:`inspectkit.metrics.anomaly.defect_regions`; empty for
    a good part), as the exported runtime's rows do."""
    regions = None
    if task != "classify":
        from inspectkit.metrics.anomaly import part_regions

        regions = part_regions(result)
    rows: list[dict[str, Any]] = []
    for i, s in enumerate(result.samples):
        row: dict[str, Any] = {"input": s.source or s.id, "id": s.id}
        if task == "classify":
            row["predicted"] = result.predicted[i]
            row["probability"] = round(float(result.probs[i].max()), 6)
            row["probs"] = {c: round(float(p), 6) for c, p in zip(result.classes, result.probs[i])}
        else:
            norm = None if result.normalized is None else round(float(result.normalized[i]), 6)
            row["score"] = round(float(result.scores[i]), 6)
            row["normalized"] = norm
            row["anomalous"] = None if result.is_anomalous is None else bool(result.is_anomalous[i])
            row["threshold"] = result.threshold
            if result.review is not None:  # a review band: as the torch-free runtime's rows
                row["review"] = bool(result.review[i])
            if regions is not None:
                row["regions"] = regions[i]
        rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]], task: str) -> None:
    """Tab-separated text: input, verdict, probability or score."""
    for r in rows:
        name = shown(r["id"] if r["input"] != r["id"] and r["id"].count(":") else r["input"])
        if task == "classify":
            top = sorted(r["probs"].items(), key=lambda kv: -kv[1])[:3]
            verdict = shown(r["predicted"]) if r["predicted"] is not None else "REVIEW"
            alts = ", ".join(f"{shown(c)} {p:.2f}" for c, p in top)
            print(f"{name}\t{verdict}\t{r['probability']:.3f}\t[{alts}]")
        else:
            verdict = {True: "ANOMALOUS", False: "good", None: "?"}[r["anomalous"]]
            if r.get("review") and not r["anomalous"]:
                verdict = "REVIEW"
            thr = "" if r["threshold"] is None else f" (threshold {r['threshold']:.4g})"
            print(f"{name}\t{verdict}\tscore {r['score']:.4g}{thr}")
    sys.stdout.flush()


@register_command
class Predict(Command):
    name = "predict"
    help = "class probabilities or anomaly verdict per input"
    order = 30

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", metavar="MODEL_DIR")
        add_on_error(parser)
        parser.add_argument(
            "inputs", nargs="*", metavar="PATH", help="image files, folders, wafer .npz"
        )
        add_archive_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from inspectkit.runtime import progress_bar

        project = Project.from_args(args)
        model_dir = pick(args.model, project, lambda p: p.model(args.name), "--model", "predict")
        if wants_archive(args):  # --out: Parquet rows, resumable, locally or on Ray
            run_archive(args, model_dir, self.progress(args))
            return EXIT_OK
        pipe, card = load_model(model_dir)
        task = card["task"]
        data = load_inputs_for(args.inputs, card, "predict", args.on_error)
        skipped = list(data.skipped)
        if skipped and not args.json:
            skipped_rows(skipped)
        rows: list[dict[str, Any]] = []
        bar = progress_bar(
            enabled=self.progress(args) and len(data) > PREDICT_BATCH, total=len(data)
        )
        with bar:
            for result, lost in scored_batches(pipe, data, PREDICT_BATCH, args.on_error):
                batch_rows = prediction_rows(result, task) if result is not None else []
                bar.update(len(batch_rows) + len(lost))
                if not args.json:
                    skipped_rows(lost)
                    print_rows(batch_rows, task)
                rows.extend(batch_rows)
                skipped.extend(lost)
        if args.json:
            out = {"schema": PREDICT_SCHEMA, "task": task, "predictions": rows, "skipped": skipped}
            print(json.dumps(out))
        if not rows:
            raise UsageError(
                f"inspectkit predict: nothing could be scored ({len(skipped)} skipped)"
            )
        return EXIT_OK
