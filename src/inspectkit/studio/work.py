"""What the studio's screens do, through the library's public functions.

Nothing here has model code of its own: data comes from :func:`inspectkit.sources.load`,
pipelines from :mod:`inspectkit.recipes`, models are saved by
:func:`inspectkit.cli.card.save_model` (atomic, the previous model kept), reports by
:func:`inspectkit.report.write_html`, overlays by :mod:`inspectkit.xai.overlay`. So what a
person does on screen is what ``inspectkit train/generate/evaluate --project`` do.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

from inspectkit.errors import ConfigError, DataError
from inspectkit.studio.jobs import JobContext
from inspectkit.studio.safety import Busy, StudioError
from inspectkit.studio.workspace import MODEL_NAME, StudioProject

#: Training sets of at least this size get a validation split (the live score curve).
MIN_VALIDATION = 20
#: Epochs the Train screen offers first (the command line trains longer by default).
DEFAULT_EPOCHS = 10
#: Most images one "Generate" asks for.
MAX_GENERATE = 1000
#: Shares of good map pixels the threshold screen offers for where defect regions end
#: (the library's default, 0.001, in the middle).
REGION_RATES = (0.0001, 0.0003, 0.001, 0.003, 0.01)

#: Held while the library builds or runs a model: building a feature extractor traces the
#: network with torch.fx, which is not thread-safe, so two at once in one process fail.
MODEL_LOCK = threading.Lock()
#: Seconds a test-screen request waits for the model before it is refused as busy.
MODEL_WAIT = 30.0


@contextmanager
def model_turn(wait: float | None = MODEL_WAIT) -> Iterator[None]:
    """Hold :data:`MODEL_LOCK` (a job waits for it; a request waits ``wait`` seconds,
    then gets :class:`Busy`)."""
    if not MODEL_LOCK.acquire(timeout=-1 if wait is None else wait):
        raise Busy("the model is busy with a running job; try again when it has finished")
    try:
        yield
    finally:
        MODEL_LOCK.release()


#: One line per training setting, shown beside it on the Train screen.
TIPS = {
    "epochs": "How many times the model sees every image. More can help, but takes longer; "
    "watch the curves flatten.",
    "batch_size": "Images per learning step. 'auto' picks a size that suits the data; "
    "smaller steps are noisier but can help with few images.",
    "lr": "How big each learning step is. Too high and the loss jumps around; "
    "too low and it barely falls.",
    "size": "Images are resized to this many pixels per side. Larger sees finer "
    "defects but is slower.",
    "backbone": "The network that looks at the image. 'auto' picks the one the library "
    "validated for good-only inspection.",
    "weights": "Start from ImageNet weights (learned from millions of photos; 'auto' uses "
    "them when installed) or from random weights (slower to learn).",
    "method": "How normal images are remembered. 'default' is the library's validated "
    "recipe; patchcore keeps a memory of good patches, padim their statistics.",
}


_CLASSIFY_ONLY = ("epochs", "batch_size", "lr")


@dataclass(frozen=True)
class TrainSettings:
    """The Train screen's settings, checked before a job starts."""

    epochs: int = 10
    batch_size: int | str = "auto"
    lr: float = 3e-3
    size: int | None = None
    method: str | None = None
    backbone: str | None = None
    weights: str | None = None
    seed: int = 0

    @classmethod
    def parse(cls, raw: dict[str, Any], task: str) -> TrainSettings:
        from inspectkit.ops import SIZE_RANGE

        def number(key: str, kind: type, lo: float, hi: float) -> Any:
            value = raw.get(key)
            if value in (None, ""):
                return getattr(cls, key)
            try:
                v = kind(value)
            except (TypeError, ValueError):
                raise StudioError(f"{key} must be a number, got {value!r}") from None
            if (isinstance(v, float) and not math.isfinite(v)) or not lo <= v <= hi:
                raise StudioError(f"{key} must be between {lo:g} and {hi:g}, got {value!r}")
            return v

        batch = raw.get("batch_size", "auto")
        batch = "auto" if batch in (None, "", "auto") else number("batch_size", int, 2, 1024)
        size = raw.get("size")
        if size not in (None, ""):
            lo, hi = SIZE_RANGE
            size = number("size", int, max(lo, 16), min(hi, 1024))
        else:
            size = None
        text = {
            k: (str(raw[k]) if raw.get(k) not in (None, "") else None)
            for k in ("method", "backbone", "weights")
        }
        if task != "anomaly" and any(text.values()):
            raise StudioError("method, backbone and weights apply to good-only (anomaly) projects")
        if task == "anomaly" and any(raw.get(k) not in (None, "") for k in _CLASSIFY_ONLY):
            raise StudioError(
                f"{', '.join(_CLASSIFY_ONLY)} apply to classify projects; a good-only "
                "detector learns without epochs"
            )
        return cls(
            epochs=number("epochs", int, 1, 500),
            batch_size=batch,
            lr=number("lr", float, 1e-6, 1.0),
            size=size,
            seed=number("seed", int, 0, 2**31 - 1),
            **text,
        )


# ---------------------------------------------------------------------- data
def load_project_data(
    project: StudioProject, *, purpose: str = "evaluate", channels: int | None = None
) -> Any:
    """The real images of ``data/<class>/``: every labelled one (``purpose="evaluate"``),
    or what ``inspectkit train --project`` trains on (``"train"``: good ones only for a
    good-only project)."""
    from inspectkit.sources import load

    if not any(c["images"] for c in project.classes()):
        raise StudioError("add images to at least one class first")
    try:
        return load(project.paths.data, purpose=purpose, task=project.task, channels=channels)
    except DataError as exc:
        raise StudioError(_relative(project, str(exc))) from None


def training_part(project: StudioProject, data: Any, seed: int) -> Any:
    """``data`` less the project's held-out test split (``Project.held_out``: made once,
    seeded, stored in ``split.json``, shared with ``inspectkit train/evaluate --project``;
    a project whose classes are all smaller than ``MIN_SPLIT_CLASS`` has none yet)."""
    test = project.paths.held_out(data, seed)
    keep = [i for i, s in enumerate(data.samples) if s.id not in test]
    if not keep:
        raise StudioError("the project's test split holds every image: add more images")
    train = data.subset(keep)
    if project.task == "classify" and len({s.label for s in train.samples}) < 2:
        raise StudioError("a classifier needs images in at least two classes")
    return train


def held_out_part(project: StudioProject, pipe: Any, data: Any) -> tuple[Any, str | None]:
    """The images of ``data`` the model did not train on, and the note
    ``inspectkit evaluate --project`` gives with them (``cli.evaluate.held_out_part``)."""
    from inspectkit.cli.evaluate import held_out_part as cli_held_out

    return cli_held_out(project.paths, pipe, data)


def _relative(project: StudioProject, text: str) -> str:
    """A message with the project's absolute path cut to the project name."""
    return text.replace(str(project.root.parent) + "/", "")


# ---------------------------------------------------------------------- training
def train(project: StudioProject, settings: TrainSettings, ctx: JobContext) -> dict[str, Any]:
    """Train the project's model on its training part and save it (previous one kept)."""
    from inspectkit.cli.card import save_model
    from inspectkit.recipes import default_pipeline
    from inspectkit.records import ImageSet
    from inspectkit.runtime import observe_epochs

    started = time.perf_counter()
    task = project.task
    ctx.phase("reading images")
    data = load_project_data(project, purpose="train")
    train_set = training_part(project, data, settings.seed)
    trained_ids = {s.id for s in train_set.samples}
    if task == "classify":
        generated = project.paths.load_generated(train_set, None)
        if generated is not None:
            train_set = ImageSet.concat([train_set, generated])
    try:
        pipe = default_pipeline(
            task,
            kind=data.kind,
            n_train=len(train_set),
            size=settings.size,
            epochs=settings.epochs,
            seed=settings.seed,
            method=settings.method,
            backbone=settings.backbone,
            weights=None if settings.weights == "none" else settings.weights,
            progress=False,
        )
        if settings.weights == "none":  # random features: the stage's 'no weights'
            pipe.set_params(anomaly_detector__weights=None)
        if task == "classify":
            changes: dict[str, Any] = {
                "classifier__batch_size": settings.batch_size,
                "classifier__lr": settings.lr,
            }
            if len(train_set.real()) >= MIN_VALIDATION:
                changes["classifier__val_fraction"] = 0.2
            pipe.set_params(**changes)
    except ConfigError as exc:
        raise StudioError(str(exc)) from None
    ctx.phase(f"training on {len(train_set)} images")
    with observe_epochs(ctx.epoch):
        pipe.fit(train_set)
    ctx.phase("saving the model")
    save_model(
        project.model_dir,
        pipe,
        train_set,
        task=task,
        source=str(project.paths.data),
        seed=settings.seed,
        layout="class-folders",
        started=started,
        held_out=(len(data) - len(trained_ids)) or None,
    )
    everything = load_project_data(project)
    held = everything.subset(
        [i for i, s in enumerate(everything.samples) if s.id not in trained_ids]
    )
    ctx.phase(f"checking {len(held)} held-out images")
    metrics = held_out_metrics(task, pipe, held)
    return {"metrics": metrics, "trained_on": len(train_set), "held_out": len(held)}


def held_out_metrics(task: str, pipe: Any, held: Any) -> dict[str, float | None]:
    """Accuracy (classify) or image AUROC and rates (anomaly) on the held-out part."""
    if len(held) == 0:
        return {}
    out = pipe.run(held)
    if task == "classify":
        from inspectkit.metrics import classification_report

        report = classification_report(out, title="held-out")
        keys = ("accuracy", "macro_f1")
    else:
        from inspectkit.metrics import anomaly_report

        report = anomaly_report(out, title="held-out")
        keys = ("image_auroc", "miss_rate", "false_alarm_rate")
    return {
        k: (float(report.metrics[k]) if math.isfinite(report.metrics[k]) else None)
        for k in keys
        if k in report.metrics
    }


# ---------------------------------------------------------------------- generation
def generate(
    project: StudioProject, cls: str, n: int, method: str, ctx: JobContext
) -> dict[str, Any]:
    """``n`` synthetic images of class ``cls`` into ``generated/<cls>/`` (PNG)."""
    from inspectkit.cli.generate import save_generated
    from inspectkit.recipes import generation_pipeline, synthetic_samples

    if method not in ("augment", "vae"):
        raise StudioError(f"method must be 'augment' or 'vae' (use AI), got {method!r}")
    if not 1 <= n <= MAX_GENERATE:
        raise StudioError(f"count must be between 1 and {MAX_GENERATE}, got {n}")
    project.require_class(cls)
    ctx.phase("reading images")
    train_set = training_part(project, load_project_data(project, purpose="train"), 0)
    ctx.phase("learning the class" if method == "vae" else "augmenting")
    try:
        pipe = generation_pipeline(train_set, cls, n, method=method, seed=0, progress=False)
        synth = synthetic_samples(pipe.fit_run(train_set), cls, n)
    except DataError as exc:
        raise StudioError(str(exc)) from None
    ctx.phase("writing images")
    written = save_generated(synth, project.class_dir(cls, "generated"), cls)
    return {"class": cls, "generated": len(synth), "files": [p.name for p in written]}


# ---------------------------------------------------------------------- evaluation
def evaluate(project: StudioProject, ctx: JobContext) -> dict[str, Any]:
    """The report ``inspectkit evaluate --project`` writes (the images the model did not
    train on, with the same notes), into ``reports/model/``."""
    from inspectkit.cli.card import load_model, training_note
    from inspectkit.cli.evaluate import scored_report
    from inspectkit.report import write_html

    ctx.phase("loading the model")
    pipe, card = _load_model(project, load_model)
    task = card["task"]
    ctx.phase("reading images")
    data = load_project_data(project, channels=card.get("channels"))
    data, note = held_out_part(project, pipe, data)
    notes = [note] if note else []
    seen = training_note(pipe, card, data, project.paths.data)
    if seen:
        notes.append(seen)
    ctx.phase(f"running the model on {len(data)} images")
    title = f"{project.model_dir.name} on {project.paths.data.name}"
    report, extra = scored_report(pipe, task, data, title, notes)
    ctx.phase("writing the report")
    out = project.paths.report(MODEL_NAME)
    report.save(out / "report.json")
    write_html(report, out, **extra)
    metrics = {k: (v if math.isfinite(v) else None) for k, v in report.metrics.items()}
    return {
        "metrics": metrics,
        "scored": len(data),
        "notes": notes,
        "report": f"reports/{MODEL_NAME}/report.html",
    }


def _load_model(project: StudioProject, loader: Any) -> tuple[Any, dict[str, Any]]:
    if not project.has_model():
        raise StudioError("train a model first")
    return loader(project.model_dir)


# ---------------------------------------------------------------------- testing
def png_data_url(img: Any) -> str:
    buf = BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def predict(
    project: StudioProject, paths: list[Path], names: list[str], explain: str | None
) -> list[dict[str, Any]]:
    """One row per image: class probabilities (classify), or score, verdict and anomaly
    map overlay (anomaly); with ``explain`` a Grad-CAM / SISE overlay per image."""
    from inspectkit.cli.card import load_model
    from inspectkit.cli.predict import prediction_rows
    from inspectkit.pipeline import Pipeline
    from inspectkit.sources import load_inputs

    pipe, card = _load_model(project, load_model)
    task = card["task"]
    data = load_inputs(
        [str(p) for p in paths], channels=card.get("channels"), kind=card.get("kind")
    )
    data = data.subset(range(len(data)))  # decoded once, for the overlays
    if task == "classify" and explain:
        from inspectkit.xai import Explain, available_methods

        if explain not in available_methods():
            raise StudioError(f"unknown explanation {explain!r}; choose {available_methods()}")
        result = Pipeline([*pipe.stages, Explain(method=explain, progress=False)]).run(data)
    else:
        result = pipe.run(data)
    rows = prediction_rows(result, task)
    by_source = {str(p): name for p, name in zip(paths, names)}
    overlays = _overlays(task, data, result, explain)
    for row, sample, pic in zip(rows, result.samples, overlays):
        row["input"] = by_source.get(sample.source or "", sample.id)
        row.pop("id", None)
        if pic is not None:
            row["overlay"] = pic
    return rows


def _overlays(task: str, data: Any, result: Any, explain: str | None) -> list[str | None]:
    from inspectkit.xai.overlay import anomaly_scale, overlay, scale_map

    n = len(result)
    if task == "anomaly" and getattr(result, "maps", None) is not None:
        from inspectkit.metrics.anomaly import defect_regions

        lo, hi = anomaly_scale(result.maps, result.threshold)
        regions = None if result.threshold is None else defect_regions(result)
        return [
            png_data_url(
                overlay(
                    data.images[i],
                    scale_map(result.maps[i], lo, hi),
                    kind=data.kind,
                    region=None if regions is None else regions[i],
                )
            )
            for i in range(n)
        ]
    if task == "classify" and explain and getattr(result, "heatmaps", None) is not None:
        return [
            png_data_url(overlay(data.images[i], result.heatmaps[i], kind=data.kind))
            for i in range(n)
        ]
    return [None] * n


# ---------------------------------------------------------------------- threshold
def threshold_view(project: StudioProject) -> dict[str, Any]:
    """The anomaly scores of the held-out images (good and defective) and the model's
    threshold, for the threshold screen (which computes rates as the slider moves)."""
    from inspectkit.cli.card import load_model

    pipe, card = _load_model(project, load_model)
    if card["task"] != "anomaly":
        raise StudioError("the threshold belongs to good-only (anomaly) projects")
    good, defect = _held_out_scores(project, pipe, card)
    stage = pipe.stages[-1]
    cal = getattr(stage, "calibration", None)
    return {
        "threshold": stage.threshold,
        # the lower threshold of a review band (parts between the two go to a person)
        "review_threshold": getattr(cal, "review_threshold", None),
        # where a flagged part's defect region ends: a share of good map pixels
        "region_rate": getattr(cal, "region_false_alarm_rate", None),
        "region_rates": list(REGION_RATES),
        "good": good,
        "defect": defect,
        "can_save": can_set_threshold(stage),
    }


def _held_out_run(project: StudioProject, pipe: Any, card: dict[str, Any]) -> tuple[Any, list]:
    """The model's scores (and maps) of the project's held-out images, and which of them
    are defective."""
    from inspectkit.metrics.anomaly import is_defective

    data = load_project_data(project, channels=card.get("channels"))
    if not project.paths.split_file.is_file():
        raise StudioError("no held-out images yet: give 'good' at least 10 images and train again")
    held, _ = held_out_part(project, pipe, data)
    return pipe.run(held), [is_defective(s) for s in held.samples]


def _held_out_scores(project: StudioProject, pipe: Any, card: dict[str, Any]) -> tuple[list, list]:
    result, bad = _held_out_run(project, pipe, card)
    scores = [float(s) for s in result.scores]
    return [s for s, b in zip(scores, bad) if not b], [s for s, b in zip(scores, bad) if b]


def can_set_threshold(stage: Any) -> bool:
    """Whether the detector stage takes a fixed ``threshold`` setting (the line's choice)."""
    return "threshold" in getattr(type(getattr(stage, "config", None)), "model_fields", {})


def save_threshold(
    project: StudioProject, value: Any, review: Any = None, region_rate: Any = None
) -> dict[str, Any]:
    """Fix the detector's threshold at ``value`` and its review band's lower threshold
    at ``review`` (``None``: no band) through the stage's API (its ``threshold`` and
    ``review_threshold`` settings and a ``Calibration.fixed`` normalised on the held-out
    good scores) and save it as a new model version (the previous one kept). The defect
    regions' line is kept, or with ``region_rate`` set anew on the held-out good images'
    maps (the stage's ``region_false_alarm_rate``)."""
    from inspectkit.anomaly.threshold import REGION_TAIL_SHARE, Calibration, PixelTail
    from inspectkit.cli.card import CARD_FILE, load_model

    named = {"threshold": value} | ({} if review is None else {"review threshold": review})
    if region_rate is not None:
        named["region rate"] = region_rate
    for name, x in named.items():
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise StudioError(f"{name} must be a finite number, got {x!r}")
    if region_rate is not None and not 0 < region_rate <= REGION_TAIL_SHARE:
        raise StudioError(
            f"region rate {region_rate} is not a share of good pixels in (0, {REGION_TAIL_SHARE}]"
        )
    if review is not None and review > value:
        raise StudioError(
            f"review threshold {review} lies above the threshold {value}: the review band "
            "sits below the threshold"
        )
    pipe, card = _load_model(project, load_model)
    stage = pipe.stages[-1]
    if card["task"] != "anomaly" or not can_set_threshold(stage):
        raise StudioError("this model's threshold cannot be set here")
    held, bad = _held_out_run(project, pipe, card)
    good = [float(s) for s, b in zip(held.scores, bad) if not b]
    rv = None if review is None else float(review)
    try:
        # a band set here replaces one set at a rate in training (`--review-rate`)
        stage.set_params(threshold=float(value), review_threshold=rv, review_false_alarm_rate=None)
        cal = Calibration.fixed(float(value), _tensor(good) if good else None)
        before = stage.calibration
        if region_rate is not None:
            goods = [i for i, b in enumerate(bad) if not b]
            if not goods or held.maps is None:
                raise StudioError("no held-out good images to set the defect regions on")
            tail = PixelTail.of(held.maps[goods])
            cal = cal.with_region(rate=float(region_rate), tail=tail)
            stage.set_params(region_false_alarm_rate=float(region_rate), region_threshold=None)
        elif before is not None and before.region_threshold is not None:
            # the defect regions rest on the held-out goods' maps, not on this threshold
            cal = replace(
                cal,
                region_threshold=before.region_threshold,
                region_false_alarm_rate=before.region_false_alarm_rate,
            )
        stage.calibration = cal.with_review(threshold=rv)
    except (ConfigError, DataError) as exc:
        raise StudioError(str(exc)) from None
    card = {**card, "threshold_set_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    pipe.save(project.model_dir, attachments={**pipe.attachments, CARD_FILE: _json(card)}, keep=1)
    cal = stage.calibration
    return {
        "threshold": stage.threshold,
        "review_threshold": cal.review_threshold,
        "region_rate": cal.region_false_alarm_rate,
    }


def _tensor(values: list[float]) -> Any:
    import torch

    return torch.tensor(values, dtype=torch.float64)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2)


# ---------------------------------------------------------------------- export
def onnx_available() -> bool:
    """Whether the library can export a pipeline to ONNX here (``Pipeline.export`` and
    the packages it needs)."""
    import importlib.util

    from inspectkit.pipeline import Pipeline

    return callable(getattr(Pipeline, "export", None)) and all(
        importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime")
    )


def export_onnx(project: StudioProject) -> Path:
    """The project's model exported by ``Pipeline.export`` into ``models/model-onnx/``
    (``model.onnx`` and its sidecar ``model.json``), as a zip in the scratch folder."""
    from inspectkit.cli.card import load_model

    if not onnx_available():
        raise StudioError("ONNX export is not available in this installation")
    pipe, _ = _load_model(project, load_model)
    out = project.model_dir.with_name(project.model_dir.name + "-onnx")
    out.mkdir(parents=True, exist_ok=True)
    pipe.export(out / "model.onnx", format="onnx")
    return project.zip_folders([out], out.parent)


__all__ = [
    "TIPS",
    "TrainSettings",
    "can_set_threshold",
    "evaluate",
    "export_onnx",
    "generate",
    "held_out_metrics",
    "held_out_part",
    "load_project_data",
    "onnx_available",
    "predict",
    "save_threshold",
    "threshold_view",
    "train",
    "training_part",
]
