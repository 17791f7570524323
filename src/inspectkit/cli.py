"""The ``inspectkit`` command line: the teachable-machine flow for people who do not code.

Collect samples per class, generate more, train, predict with probabilities, evaluate,
explain::

    inspectkit demo
    inspectkit train    --data PATH --task classify|anomaly --out MODEL_DIR
    inspectkit predict  --model MODEL_DIR PATH... [--json]
    inspectkit evaluate --model MODEL_DIR --data PATH [--json] [--report DIR]
    inspectkit explain  --model MODEL_DIR PATH... --out DIR
    inspectkit generate --data PATH --class NAME --n N --method augment|vae --out DIR

``PATH`` is a class-per-folder tree (``root/<class>/*.png``), an MVTec-AD category
folder (``train/good``, ``test/<defect>``, ``ground_truth``), a magnetic-tile folder
(``MT_<class>/Imgs``), a wafer-map ``.npz`` or an original ``LSWMD.pkl``; the layout is
detected. ``--project DIR`` fills the paths from the project convention
``DIR/data/<class>/``, ``DIR/generated/<class>/``, ``DIR/models/``, ``DIR/reports/``.

Exit codes: 0 on success, 2 on bad arguments or input (one line naming the file and the
problem), 1 on an internal failure. A user mistake never prints a Python traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from inspectkit._version import __version__
from inspectkit.errors import InspectkitError

log = logging.getLogger("inspectkit.cli")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

#: File written beside a saved pipeline by ``inspectkit train``.
CARD_FILE = "inspectkit-model.json"
#: Schema tag of ``inspectkit evaluate --json``.
EVALUATE_SCHEMA = "inspectkit.evaluate/1"
#: Schema tag of ``inspectkit predict --json``.
PREDICT_SCHEMA = "inspectkit.predict/1"
#: Inputs decoded and predicted at a time by ``inspectkit predict`` (memory stays flat).
PREDICT_BATCH = 256

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
_LAYOUTS = ("wafer-npz", "lswmd", "mvtec", "magnetic-tile", "class-folders", "images")


class UsageError(InspectkitError):
    """Bad command-line arguments or input paths."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def demo_data_path(name: str) -> Path:
    """Path of a file shipped in ``inspectkit/data``."""
    return Path(str(resources.files("inspectkit") / "data" / name))


def _say(args: argparse.Namespace, text: str, *, always: bool = False) -> None:
    if always or not getattr(args, "quiet", False):
        print(text, flush=True)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and os.environ.get("INSPECTKIT_PROGRESS", "1") != "0"


# ---------------------------------------------------------------------- data layouts
def detect_layout(path: Path) -> str:
    """Which layout ``path`` holds: one of ``wafer-npz``, ``lswmd``, ``mvtec``,
    ``magnetic-tile``, ``class-folders`` or ``images`` (image files / a flat folder).

    Raises:
        UsageError: the path does not exist or holds nothing inspectkit can read.
    """
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return "wafer-npz"
        if suffix == ".pkl":
            return "lswmd"
        if suffix in _IMAGE_SUFFIXES:
            return "images"
        raise UsageError(
            f"{path}: unrecognised file type {suffix or '(none)'}; expected a wafer .npz, "
            "LSWMD.pkl, an image file or a folder"
        )
    subdirs = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if (path / "train" / "good").is_dir():
        return "mvtec"
    if any(p.name.startswith("MT_") for p in subdirs):
        return "magnetic-tile"
    if any(_has_images(p) for p in subdirs):
        return "class-folders"
    if _has_images(path):
        return "images"
    raise UsageError(
        f"{path}: no images found; expected one sub-folder per class holding image files "
        "(or an MVTec / magnetic-tile folder, a wafer .npz, LSWMD.pkl)"
    )


def _has_images(folder: Path) -> bool:
    try:
        return any(
            p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
            for p in folder.iterdir()
        )
    except OSError:
        return False


def load_labelled(
    path: Path, task: str, *, purpose: str, channels: int | None = None, limit: int | None = None
) -> Any:
    """Load a labelled :class:`~inspectkit.records.ImageSet` for training or evaluation.

    For ``task="anomaly"`` and ``purpose="train"`` only the good samples are kept (MVTec:
    ``train/good``); for evaluation an MVTec folder gives its ``test`` split.
    """
    from inspectkit import sources

    layout = detect_layout(path)
    if layout in ("wafer-npz", "lswmd"):
        data = sources.load_wafer_maps(path, unlabelled="skip", limit=limit)
    elif layout == "mvtec":
        split = "train" if (task == "anomaly" and purpose == "train") else "test"
        data = sources.load_mvtec(path, split=split, channels=channels)
    elif layout == "magnetic-tile":
        data = sources.load_magnetic_tile(path, limit_per_class=limit)
    elif layout == "class-folders":
        data = sources.load_image_folder(path, channels=channels)
    else:
        raise UsageError(
            f"{path}: a flat folder of images has no labels; put each class in its own "
            "sub-folder (data/<class>/*.png)"
        )
    if task == "anomaly" and purpose == "train":
        data = _good_only(data, path)
    return data


def _good_only(data: Any, path: Path) -> Any:
    from inspectkit.report import anomaly_truth

    truth = anomaly_truth(data)
    keep = [i for i, bad in enumerate(truth.tolist()) if not bad]
    if not keep:
        raise UsageError(
            f"{path}: no good samples to learn from; an anomaly model trains on good parts "
            "only (a folder named good/ok/Free, MVTec train/good, wafer class 'none')"
        )
    return data.subset(keep)


def _image_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.suffix.lower() in _IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
            )
            if not found:
                raise UsageError(f"{p}: the folder holds no image files")
            files += found
        else:
            files.append(p)
    return files


def load_inputs(paths: Sequence[str], card: dict[str, Any], args: argparse.Namespace) -> Any:
    """Images to predict or explain: image files, folders of images, or wafer files."""

    from inspectkit.records import ImageSet, LazyImages, SampleMeta
    from inspectkit.sources import load_wafer_maps
    from inspectkit.sources._common import read_image

    sets = []
    plain: list[Path] = []
    for raw in paths:
        p = Path(raw)
        layout = detect_layout(p)
        if layout in ("wafer-npz", "lswmd"):
            sets.append(load_wafer_maps(p))
        else:
            plain.append(p)
    if plain:
        if card.get("kind") == "wafer":
            raise UsageError(
                f"{plain[0]}: this model reads wafer maps (.npz / LSWMD.pkl), not image files"
            )
        files = _image_files(plain)
        channels = card.get("channels")
        taken: set[str] = set()
        samples = []
        for f in files:
            sid = str(f)
            while sid in taken:
                sid += "'"
            taken.add(sid)
            samples.append(SampleMeta(id=sid, source=str(f)))
        # decoded a batch at a time while predicting: a folder of 100,000 parts is fine
        stacked: Any = LazyImages([str(f) for f in files], partial(read_image, channels=channels))
        sets.append(ImageSet.build(images=stacked, samples=samples, classes=[]))
    if len(sets) == 1:
        return sets[0]
    return ImageSet.concat(sets)


# ---------------------------------------------------------------------- model folders
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: {what} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None


def load_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The saved pipeline and its model card (task, kind, channels, classes)."""
    import inspectkit as ik

    if not model_dir.exists():
        raise UsageError(f"{model_dir}: no such model folder; train one with 'inspectkit train'")
    if not (model_dir / "pipeline.json").is_file():
        raise UsageError(f"{model_dir}: not a model folder (no pipeline.json)")
    pipe = ik.Pipeline.load(model_dir)
    card_path = model_dir / CARD_FILE
    card = _read_json(card_path, "model card") if card_path.is_file() else {}
    if not isinstance(card, dict):
        raise UsageError(f"{card_path}: the model card must be a JSON object")
    card.setdefault("task", _task_of(pipe))
    last = pipe.stages[-1]
    card.setdefault("kind", getattr(last, "kind", None))
    card.setdefault("channels", None)
    return pipe, card


def _task_of(pipe: Any) -> str:
    from inspectkit.records import AnomalyScores, Predictions

    out = pipe.output_type
    if issubclass(out, Predictions):
        return "classify"
    if issubclass(out, AnomalyScores):
        return "anomaly"
    raise UsageError(
        f"this pipeline produces {out.__name__}; predict needs a classifier or detector"
    )


def default_pipeline(task: str, kind: str, args: argparse.Namespace, *, n_train: int) -> list[Any]:
    """The stages ``inspectkit train`` builds when no ``--spec`` is given."""
    from inspectkit.stages import Wrangle

    size = args.size or (48 if kind == "wafer" else 64)
    progress = _progress(args)
    if task == "classify":
        from inspectkit.stages import Classifier

        return [
            Wrangle(size=size),
            Classifier(
                arch="compact",
                epochs=args.epochs or 30,
                seed=args.seed,
                progress=progress,
                val_fraction=0.1 if n_train >= 50 else 0.0,
            ),
        ]
    from inspectkit.stages import AnomalyDetector

    return [
        AnomalyDetector(
            method=args.method or "patchcore",
            size=args.size or 128,
            seed=args.seed,
            progress=progress,
            on_defective="drop",
        )
    ]


def _spec_pipeline(spec_path: Path, args: argparse.Namespace) -> Any:
    import inspectkit as ik

    spec = _read_json(spec_path, "pipeline spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        raise UsageError(f'{spec_path}: a pipeline spec is a JSON object with a "stages" list')
    overrides = {"seed": args.seed}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if not _progress(args):
        overrides["progress"] = False
    from inspectkit.registry import get_stage

    for entry in spec["stages"]:
        if not isinstance(entry, dict) or "name" not in entry:
            continue
        try:
            fields = get_stage(str(entry["name"])).Config.model_fields
        except InspectkitError as exc:
            raise UsageError(f"{spec_path}: {exc}") from None
        config = dict(entry.get("config") or {})
        for k, v in overrides.items():
            if k in fields and (k != "seed" or "seed" not in config or args.seed_given):
                config[k] = v
        entry["config"] = config
    try:
        return ik.Pipeline.from_spec(spec)
    except InspectkitError as exc:
        raise UsageError(f"{spec_path}: {exc}") from None


# ---------------------------------------------------------------------- project folders
def _project(args: argparse.Namespace) -> Path | None:
    p = getattr(args, "project", None)
    if p is None:
        return None
    root = Path(p)
    if not root.is_dir():
        raise UsageError(f"{root}: project folder not found (expected {root}/data/<class>/)")
    return root


def _need(value: Any, flag: str, command: str) -> Any:
    if value is None:
        raise UsageError(f"inspectkit {command}: {flag} is required (or give --project)")
    return value


def _load_generated(folder: Path, data: Any, args: argparse.Namespace) -> Any:
    """Samples under ``PROJECT/generated/<class>/``, flagged synthetic."""
    from inspectkit.records import ImageSet
    from inspectkit.sources import load_image_folder, load_wafer_maps

    if not folder.is_dir():
        return None
    if data.kind == "wafer":
        files = sorted(folder.glob("*/*.npz"))
        if not files:
            return None
        gen = ImageSet.concat([load_wafer_maps(f, classes=list(data.classes)) for f in files])
    else:
        if not any(_has_images(p) for p in folder.iterdir() if p.is_dir()):
            return None
        gen = load_image_folder(folder, channels=args.channels)
        unknown = [c for c in gen.classes if c not in data.classes]
        if unknown:
            raise UsageError(
                f"{folder}: generated classes {unknown} have no real samples under data/"
            )
    samples = [
        s.model_copy(update={"synthetic": True, "id": f"generated/{s.id}"}) for s in gen.samples
    ]
    return gen.replace(samples=samples, classes=list(data.classes))


def _write_card(model_dir: Path, card: dict[str, Any]) -> None:
    from inspectkit.atomic import atomic_write

    atomic_write(model_dir / CARD_FILE, json.dumps(card, indent=2))


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """Train a classifier or a good-only anomaly detector and save it."""
    import inspectkit as ik

    project = _project(args)
    data_path = Path(args.data) if args.data else (project / "data" if project else None)
    data_path = _need(data_path, "--data", "train")
    out = args.out or (str(project / "models" / args.name) if project else None)
    out = Path(_need(out, "--out", "train"))
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "pipeline.json").is_file():
        raise UsageError(f"{out}: a non-empty folder that holds no model; choose another --out")
    t0 = time.perf_counter()
    data = load_labelled(data_path, args.task, purpose="train", channels=args.channels)
    if project is not None and args.task == "classify":
        gen = _load_generated(project / "generated", data, args)
        if gen is not None:
            data = ik.ImageSet.concat([data, gen])
            _say(args, f"+ {len(gen)} generated samples from {project / 'generated'}")
    counts = data.class_counts(include_synthetic=False)
    _say(
        args,
        f"training a {args.task} model on {len(data)} samples from {data_path} "
        f"({data.kind}; " + ", ".join(f"{c} {n}" for c, n in counts.items() if n) + ")",
    )
    if args.spec:
        pipe = _spec_pipeline(Path(args.spec), args)
    else:
        pipe = ik.Pipeline(default_pipeline(args.task, data.kind, args, n_train=len(data)))
    task = _task_of(pipe)
    if task != args.task:
        raise UsageError(f"{args.spec}: this pipeline does the {task} task, not {args.task}")
    pipe.fit(data)
    pipe.save(out)
    card = {
        "format": "inspectkit.model-card",
        "inspectkit_version": __version__,
        "task": args.task,
        "kind": data.kind,
        "channels": data.channels if data.kind != "wafer" else None,
        "classes": list(getattr(pipe.stages[-1], "classes", None) or data.classes),
        "data": str(data_path),
        "layout": detect_layout(data_path),
        "samples": len(data),
        "class_counts": counts,
        "seed": args.seed,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_card(out, card)
    if args.json:
        print(json.dumps({"model": str(out), **card}))
    else:
        _say(args, f"model saved to {out} ({card['seconds']:.0f} s)", always=True)
    return EXIT_OK


def _prediction_rows(result: Any, task: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if task == "classify":
        for i, s in enumerate(result.samples):
            probs = {c: round(float(p), 6) for c, p in zip(result.classes, result.probs[i])}
            rows.append(
                {
                    "input": s.source or s.id,
                    "id": s.id,
                    "predicted": result.predicted[i],
                    "probability": round(float(result.probs[i].max()), 6),
                    "probs": probs,
                }
            )
        return rows
    for i, s in enumerate(result.samples):
        verdict = None if result.is_anomalous is None else bool(result.is_anomalous[i])
        rows.append(
            {
                "input": s.source or s.id,
                "id": s.id,
                "score": round(float(result.scores[i]), 6),
                "normalized": None
                if result.normalized is None
                else round(float(result.normalized[i]), 6),
                "anomalous": verdict,
                "threshold": result.threshold,
            }
        )
    return rows


def cmd_predict(args: argparse.Namespace) -> int:
    """Class probabilities (or anomaly score and verdict) per input, a batch at a time."""
    from inspectkit.runtime import progress_bar

    project = _project(args)
    model_dir = args.model or (str(project / "models" / args.name) if project else None)
    pipe, card = load_model(Path(_need(model_dir, "--model", "predict")))
    if not args.inputs:
        raise UsageError("inspectkit predict: give at least one image, folder or wafer file")
    data = load_inputs(args.inputs, card, args)
    rows: list[dict[str, Any]] = []
    bar = progress_bar(enabled=_progress(args) and len(data) > PREDICT_BATCH, total=len(data))
    with bar:
        for result in pipe.iter_run(data, batch_size=PREDICT_BATCH):
            batch_rows = _prediction_rows(result, card["task"])
            bar.update(len(batch_rows))
            if not args.json:
                _print_prediction_rows(batch_rows, card["task"])
            rows.extend(batch_rows)
    if args.json:
        print(json.dumps({"schema": PREDICT_SCHEMA, "task": card["task"], "predictions": rows}))
    return EXIT_OK


def _print_prediction_rows(rows: list[dict[str, Any]], task: str) -> None:
    for r in rows:
        name = r["id"] if r["input"] != r["id"] and r["id"].count(":") else r["input"]
        if task == "classify":
            top = sorted(r["probs"].items(), key=lambda kv: -kv[1])[:3]
            shown = r["predicted"] if r["predicted"] is not None else "REVIEW"
            alts = ", ".join(f"{c} {p:.2f}" for c, p in top)
            print(f"{name}\t{shown}\t{r['probability']:.3f}\t[{alts}]")
        else:
            verdict = {True: "ANOMALOUS", False: "good", None: "?"}[r["anomalous"]]
            thr = "" if r["threshold"] is None else f" (threshold {r['threshold']:.4g})"
            print(f"{name}\t{verdict}\tscore {r['score']:.4g}{thr}")
    sys.stdout.flush()


def evaluation_json(
    report: Any, *, task: str, model: str, data: str, html: str | None
) -> dict[str, Any]:
    """The stable ``inspectkit evaluate --json`` object (schema ``inspectkit.evaluate/1``)."""
    import math

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a saved model on labelled data; print metrics, optionally write a report."""
    project = _project(args)
    model_dir = Path(
        _need(
            args.model or (str(project / "models" / args.name) if project else None),
            "--model",
            "evaluate",
        )
    )
    data_path = Path(
        _need(args.data or (str(project / "data") if project else None), "--data", "evaluate")
    )
    report_dir = args.report or (str(project / "reports" / args.name) if project else None)
    pipe, card = load_model(model_dir)
    task = card["task"]
    data = load_labelled(data_path, task, purpose="evaluate", channels=card.get("channels"))
    if task == "classify":
        from inspectkit.metrics import classification_report

        result = pipe.run(data)
        report = classification_report(result, title=f"{model_dir.name} on {data_path.name}")
        extra: dict[str, Any] = {"predictions": result}
    else:
        from inspectkit.metrics import anomaly_report

        result = pipe.run(data)
        report = anomaly_report(result, title=f"{model_dir.name} on {data_path.name}")
        extra = {"scores": result}
    html = None
    if report_dir:
        from inspectkit.report import write_html

        report.save(Path(report_dir) / "report.json")
        html = str(write_html(report, report_dir, **extra))
    if args.json:
        print(
            json.dumps(
                evaluation_json(
                    report, task=task, model=str(model_dir), data=str(data_path), html=html
                )
            )
        )
        return EXIT_OK
    _print_report(report)
    if html:
        print(f"report: {html}")
    return EXIT_OK


def _print_report(report: Any) -> None:
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


def cmd_explain(args: argparse.Namespace) -> int:
    """Heatmap overlays (classifier: Grad-CAM/SISE; detector: anomaly maps) per input."""
    import inspectkit as ik

    project = _project(args)
    model_dir = args.model or (str(project / "models" / args.name) if project else None)
    out = args.out or (str(project / "reports" / "explain") if project else None)
    out = Path(_need(out, "--out", "explain"))
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    pipe, card = load_model(Path(_need(model_dir, "--model", "explain")))
    if not args.inputs:
        raise UsageError("inspectkit explain: give at least one image, folder or wafer file")
    data = load_inputs(args.inputs, card, args)
    if card["task"] == "classify":
        from inspectkit.xai import Explain, write_overlays

        explainer = ik.Pipeline(
            [*pipe.stages, Explain(method=args.method, progress=_progress(args))]
        )
        explained = explainer.run(data)
        paths = write_overlays(explained, out)
    else:
        paths = _anomaly_overlays(pipe.run(data), out)
    _say(args, f"{len(paths)} overlays written to {out}", always=True)
    return EXIT_OK


def _anomaly_overlays(scores: Any, out: Path) -> list[Path]:
    import re

    from inspectkit.xai.overlay import overlay

    out.mkdir(parents=True, exist_ok=True)
    if scores.maps is None:
        raise UsageError("this anomaly model produces no anomaly maps to draw")
    paths, entries = [], []
    maps = scores.maps
    lo, hi = float(maps.min()), float(maps.max())
    if scores.threshold is not None:  # one colour scale for all: the threshold sits mid-way
        hi = max(hi, 2 * scores.threshold - lo)
    scale = (hi - lo) or 1.0
    for i, s in enumerate(scores.samples):
        img = overlay(scores.images[i], ((maps[i] - lo) / scale).clamp(0, 1), kind=scores.kind)
        verdict = None if scores.is_anomalous is None else bool(scores.is_anomalous[i])
        tag = {True: "anomalous", False: "good", None: "scored"}[verdict]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", s.id).strip("._") or "x"
        name = f"{i:05d}_{safe[-60:]}_{tag}_{float(scores.scores[i]):.3g}.png"
        img.save(out / name)
        paths.append(out / name)
        entries.append(
            {"file": name, "id": s.id, "score": float(scores.scores[i]), "anomalous": verdict}
        )
    index = {"method": "anomaly_map", "threshold": scores.threshold, "overlays": entries}
    from inspectkit.atomic import atomic_write

    atomic_write(out / "overlays.json", json.dumps(index, indent=2))
    return paths


def _save_generated(synth: Any, out: Path, cls: str) -> list[Path]:
    """PNG files (photos) or one ragged ``.npz`` plus PNG previews (wafer maps)."""
    import numpy as np
    import torch
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe_cls = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cls)
    if synth.kind == "wafer":
        maps = [t[0].numpy().astype(np.uint8) for t in synth.images]
        shapes = np.array([m.shape for m in maps], dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
        path = out / f"{safe_cls}-{stamp}.npz"
        from inspectkit.atomic import atomic_write

        atomic_write(
            path,
            lambda fh: np.savez_compressed(
                fh,
                flat=np.concatenate([m.ravel() for m in maps]),
                shapes=shapes,
                offsets=offsets,
                failure_type=np.array([cls] * len(maps)),
            ),
        )
        written.append(path)
        preview = out / "previews"
        preview.mkdir(exist_ok=True)
        for i, m in enumerate(maps[:64]):
            Image.fromarray(m * 127).resize((m.shape[1] * 4, m.shape[0] * 4), Image.NEAREST).save(
                preview / f"{safe_cls}-{stamp}-{i:04d}.png"
            )
        return written
    from inspectkit.ops import to_float

    for i in range(len(synth)):
        x = synth.images[i]
        if x.dtype != torch.uint8:
            x = (to_float(x).clamp(0, 1) * 255).round().to(torch.uint8)
        arr = x.numpy()
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
        path = out / f"{safe_cls}-{stamp}-{i:05d}.png"
        Image.fromarray(arr).save(path)
        written.append(path)
    return written


def cmd_generate(args: argparse.Namespace) -> int:
    """Synthesise N more samples of one class (augmentation or a learned VAE)."""
    import inspectkit as ik
    from inspectkit.stages import Wrangle

    project = _project(args)
    data_path = Path(
        _need(args.data or (str(project / "data") if project else None), "--data", "generate")
    )
    out = Path(
        _need(
            args.out or (str(project / "generated" / args.cls) if project else None),
            "--out",
            "generate",
        )
    )
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if args.n < 1:
        raise UsageError(f"inspectkit generate: --n must be at least 1, got {args.n}")
    data = load_labelled(data_path, "classify", purpose="train", channels=args.channels)
    counts = data.class_counts()
    if args.cls not in counts:
        raise UsageError(f"{data_path}: no class {args.cls!r}; classes are {list(counts)}")
    if counts[args.cls] == 0:
        raise UsageError(f"{data_path}: class {args.cls!r} has no samples to learn from")
    size = args.size or (64 if data.kind == "wafer" else None)
    if size is None and data.size is None:
        size = 64
    stages: list[Any] = [Wrangle(size=size)] if size else []
    if args.method == "augment":
        from inspectkit.stages import Augment

        stages.append(
            Augment(per_class=counts[args.cls] + args.n, classes=[args.cls], seed=args.seed)
        )
    else:
        from inspectkit.stages import Generate

        cfg: dict[str, Any] = {
            "method": "vae",
            "classes": [args.cls],
            "per_class": counts[args.cls] + args.n,
            "seed": args.seed,
            "progress": _progress(args),
        }
        if args.steps:
            cfg["steps"] = args.steps
        stages.append(Generate(**cfg))
    _say(
        args,
        f"generating {args.n} '{args.cls}' samples with {args.method} from {len(data)} real ones",
    )
    result = ik.Pipeline(stages).fit_run(data)
    synth = result.select(lambda s: s.synthetic and s.label == args.cls)
    if len(synth) == 0:
        raise UsageError(f"{data_path}: nothing was generated for class {args.cls!r}")
    synth = synth.subset(range(min(args.n, len(synth))))
    written = _save_generated(synth, out, args.cls)
    _say(args, f"{len(synth)} samples written to {out} ({len(written)} files)", always=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Train and evaluate a compact wafer-map classifier on the shipped WM-811K sample."""
    import inspectkit as ik
    from inspectkit.metrics import classification_report
    from inspectkit.report import write_html
    from inspectkit.sources import load_wafer_maps
    from inspectkit.stages import Classifier, Wrangle

    t0 = time.perf_counter()
    train = load_wafer_maps(demo_data_path("wm811k_demo_train.npz"))
    test = load_wafer_maps(demo_data_path("wm811k_demo_test.npz"))
    _say(args, f"wafer line demo: {len(train)} training maps, {len(test)} test maps, 9 classes")
    pipe = ik.Pipeline(
        [
            Wrangle(size=args.size),
            Classifier(
                arch="compact", epochs=args.epochs, seed=args.seed, progress=_progress(args)
            ),
        ]
    )
    pipe.fit(train)
    pred = pipe.run(test)
    report = classification_report(pred, title="WM-811K demo sample: compact CNN")
    out = Path(args.out)
    pipe.save(out / "model")
    _write_card(
        out / "model",
        {
            "format": "inspectkit.model-card",
            "inspectkit_version": __version__,
            "task": "classify",
            "kind": "wafer",
            "channels": None,
            "classes": list(pred.classes),
            "data": "inspectkit demo sample (WM-811K)",
            "seed": args.seed,
        },
    )
    report.save(out / "report.json")
    explained = _explain_mistakes(pipe, pred, limit=16)
    html = write_html(report, out, predictions=pred, explained=explained)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps(
                {
                    "metrics": {k: (v if v == v else None) for k, v in report.metrics.items()},
                    "out": str(out),
                    "report_html": str(html),
                    "seconds": round(elapsed, 1),
                }
            )
        )
        return EXIT_OK
    m = report.metrics
    _say(
        args,
        f"accuracy {m.get('accuracy', float('nan')):.3f}  macro-F1 {m.get('macro_f1', float('nan')):.3f}"
        f"  ({elapsed:.0f} s)",
        always=True,
    )
    for cls, fig in report.per_class.items():
        _say(args, f"  {cls:<10} recall {fig.get('recall', float('nan')):.2f}")
    _say(args, f"model saved to {out / 'model'}; report at {html}")
    return EXIT_OK


def _explain_mistakes(pipe: Any, pred: Any, limit: int) -> Any:
    """Grad-CAM heatmaps of the most confident mistakes (``None`` if none or unavailable)."""
    wrong = [
        i
        for i, s in enumerate(pred.samples)
        if s.label is not None and pred.predicted[i] is not None and pred.predicted[i] != s.label
    ]
    if not wrong:
        return None
    conf = pred.probs.max(dim=1).values
    wrong = sorted(wrong, key=lambda i: -float(conf[i]))[:limit]
    try:
        import inspectkit as ik
        from inspectkit.xai import Explain
    except ImportError:  # pragma: no cover - xai ships with the package
        return None
    explainer = ik.Pipeline([*pipe.stages, Explain(method="gradcam", progress=False)])
    return explainer.stages[-1].run(pred.subset(wrong))


# ---------------------------------------------------------------------- parser
def _common(
    quiet: bool = True, json_flag: bool = True, project: bool = True
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if quiet:
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter")
    p.add_argument("--verbose", "-v", dest="verbose_sub", action="store_true", help="log details")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    if project:
        p.add_argument(
            "--project",
            metavar="DIR",
            help="project folder: DIR/data/<class>/, DIR/generated/<class>/, DIR/models/, DIR/reports/",
        )
        p.add_argument(
            "--name", default="model", help="model name inside PROJECT/models/ (default: model)"
        )
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="inspectkit", description="AI visual inspection for production lines.")
    parser.add_argument("--version", action="version", version=f"inspectkit {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    common = _common()

    p = sub.add_parser(
        "demo",
        parents=[_common(project=False)],
        help="train and evaluate a wafer-map classifier on shipped sample data",
    )
    p.add_argument("--out", default="inspectkit-demo", help="output folder (model + report)")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument(
        "--size", type=_positive_int, default=48, help="wafer maps are resized to SIZE×SIZE"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", parents=[common], help="train a classifier or an anomaly detector")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="class folders, MVTec / magnetic-tile folder, wafer .npz or LSWMD.pkl",
    )
    p.add_argument("--task", choices=["classify", "anomaly"], default="classify")
    p.add_argument("--out", metavar="MODEL_DIR", help="folder to save the model to")
    p.add_argument("--spec", metavar="pipeline.json", help="pipeline spec (stage names + configs)")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--size", type=_positive_int, default=None, help="images are resized to SIZE×SIZE"
    )
    p.add_argument(
        "--channels", type=int, choices=[1, 3], default=None, help="force gray (1) or RGB (3)"
    )
    p.add_argument(
        "--method",
        choices=["patchcore", "padim", "autoencoder", "selfsupervised", "ensemble"],
        default=None,
        help="anomaly detector of --task anomaly (default patchcore; ensemble = patchcore + padim)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "predict", parents=[common], help="class probabilities or anomaly verdict per input"
    )
    p.add_argument("--model", metavar="MODEL_DIR")
    p.add_argument("inputs", nargs="*", metavar="PATH", help="image files, folders, wafer .npz")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", parents=[common], help="metrics of a model on labelled data")
    p.add_argument("--model", metavar="MODEL_DIR")
    p.add_argument("--data", metavar="PATH")
    p.add_argument("--report", metavar="DIR", help="also write report.html and report.json here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("explain", parents=[common], help="heatmap overlays per input")
    p.add_argument("--model", metavar="MODEL_DIR")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--method", choices=["gradcam", "sise"], default="gradcam")
    p.add_argument("inputs", nargs="*", metavar="PATH")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("generate", parents=[common], help="synthesise more samples of one class")
    p.add_argument("--data", metavar="PATH")
    p.add_argument("--class", dest="cls", required=True, metavar="NAME")
    p.add_argument("--n", type=_positive_int, required=True)
    p.add_argument("--method", choices=["augment", "vae"], default="augment")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=_positive_int, default=None, help="VAE training steps")
    p.add_argument("--size", type=_positive_int, default=None)
    p.add_argument("--channels", type=int, choices=[1, 3], default=None)
    p.set_defaults(func=cmd_generate)
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
        if hasattr(args, "seed"):
            args.seed_given = args.seed is not None
            if args.seed is None:
                args.seed = 0
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_USAGE
        return func(args)
    except InspectkitError as exc:
        print(f"inspectkit: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"inspectkit: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("inspectkit: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # internal failure: say so, the traceback only with -v
        if verbose:
            traceback.print_exc()
        print(
            f"inspectkit: internal error: {type(exc).__name__}: {_one_line(exc)}"
            + ("" if verbose else " (run with -v for the traceback)"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _one_line(exc: BaseException, limit: int = 600) -> str:
    """The message on one line, cut after ``limit`` characters (full text with ``-v``)."""
    text = " ".join(str(exc).split())
    if len(text) > limit and not logging.getLogger().isEnabledFor(logging.INFO):
        text = text[:limit].rstrip() + " … (run with -v for the full message)"
    return text


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
