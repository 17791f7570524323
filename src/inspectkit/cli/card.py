"""Model folders of the command line: a saved pipeline with its model card.

A model folder is a saved :class:`~inspectkit.Pipeline` with the model card
``inspectkit-model.json`` (task, kind of input, channels, classes, training counts, data,
seed, library version, the detector's recipe) and the fingerprints of the samples it was
trained on (:data:`SAMPLES_FILE`) as attachments saved in the same atomic unit, by
:func:`save_model` only; the previous model is kept as ``MODEL_DIR.prev``
(:data:`KEEP_PREVIOUS`). The card is optional on load (any saved pipeline works with
``predict``/``evaluate``), but a card that contradicts its pipeline is refused. Every
evaluation counts the samples it shares with the training set (:func:`seen_in_training`)
and says so in its notes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectkit._text import printable
from inspectkit._version import __version__
from inspectkit.cli.command import UsageError, wrap
from inspectkit.cli.project import SPLIT_FILE, parse_json
from inspectkit.errors import InspectkitError

#: The model card: saved with the pipeline by ``inspectkit train`` and ``inspectkit demo``.
CARD_FILE = "inspectkit-model.json"
CARD_FORMAT = "inspectkit.model-card"
#: Previous versions of a model the command line keeps (``MODEL_DIR.prev``).
KEEP_PREVIOUS = 1
#: Attachment with an 8-byte fingerprint per training sample (sorted), see :func:`fingerprints`.
SAMPLES_FILE = "inspectkit-training-samples.bin"
#: Training sets larger than this are not fingerprinted (the attachment stays under 8 MB).
MAX_FINGERPRINTS = 1_000_000
TASKS = ("classify", "anomaly")


def sample_key(sample: Any) -> str:
    """What identifies a sample across runs: its file (absolute) and its id in the file."""
    source = os.path.abspath(sample.source) if sample.source else ""
    return f"{source}\0{sample.id}"


def fingerprints(samples: Any) -> bytes:
    """Sorted 8-byte BLAKE2 digests of :func:`sample_key` (the :data:`SAMPLES_FILE` format)."""
    digests = {
        hashlib.blake2b(sample_key(s).encode(), digest_size=8).digest()
        for s in samples
        if not s.synthetic
    }
    return b"".join(sorted(digests))


def seen_in_training(pipe: Any, data: Any) -> list[int] | None:
    """Positions of the real samples of ``data`` that trained the model, or ``None`` when
    the model does not record its training samples (saved by inspectkit 0.1.0, or a
    training set over :data:`MAX_FINGERPRINTS`)."""
    raw = getattr(pipe, "attachments", {}).get(SAMPLES_FILE)
    if raw is None or len(raw) % 8:
        return None
    seen = {raw[i : i + 8] for i in range(0, len(raw), 8)}
    return [
        i
        for i, s in enumerate(data.samples)
        if not s.synthetic
        and hashlib.blake2b(sample_key(s).encode(), digest_size=8).digest() in seen
    ]


def training_note(pipe: Any, card: dict[str, Any], data: Any, data_path: Path) -> str | None:
    """The note an evaluation carries when it includes samples the model was trained on."""
    seen = seen_in_training(pipe, data)
    if seen is None:
        trained_on = card.get("data")
        if isinstance(trained_on, str) and _same_path(trained_on, data_path):
            return (
                f"this model was trained on data from {printable(str(data_path))} and does not "
                "record which samples: this evaluation may include its training samples"
            )
        return None
    if not seen:
        return None
    n = sum(1 for s in data.samples if not s.synthetic)
    return (
        f"{len(seen)} of the {n} evaluated samples were used to train this model: these "
        "figures overstate how it does on new parts"
    )


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def save_model(
    model_dir: Path,
    pipe: Any,
    data: Any,
    *,
    task: str,
    source: str,
    seed: int,
    layout: str | None = None,
    started: float | None = None,
    keep: int = KEEP_PREVIOUS,
    held_out: int | None = None,
) -> dict[str, Any]:
    """Save a pipeline trained on ``data`` with its model card and the fingerprints of its
    training samples, in one atomic unit (attachments of :meth:`Pipeline.save`), and
    return the card.

    Args:
        model_dir: The model folder.
        pipe: The fitted pipeline (its last stage's ``classes`` when it has them).
        data: The training set (kind, channels, class counts).
        task: ``"classify"`` or ``"anomaly"``.
        source: Where the data came from (a path, or a description).
        seed: The training seed.
        layout: The data layout name (``inspectkit.sources.detect``).
        started: ``time.perf_counter()`` when training began, for ``seconds``.
        keep: Previous versions kept beside the model (``MODEL_DIR.prev`` ...).
        held_out: Test samples of the project split left out of ``data`` (projects only).
    """
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "inspectkit_version": __version__,
        "task": task,
        "kind": data.kind,
        "channels": data.channels if data.kind != "wafer" else None,
        "classes": list(getattr(pipe.stages[-1], "classes", None) or data.classes),
        "data": source,
        "layout": layout,
        "samples": len(data),
        "class_counts": data.class_counts(include_synthetic=False),
        "seed": seed,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if held_out is not None:
        card["held_out"] = {"split": SPLIT_FILE, "test_samples": held_out}
    recipe = getattr(pipe.stages[-1], "recipe", None)  # a detector: features, recipe, threshold
    if callable(recipe):
        card["recipe"] = recipe()
    attachments = {}
    real = sum(1 for s in data.samples if not s.synthetic)
    card["training_samples_recorded"] = real <= MAX_FINGERPRINTS
    if real <= MAX_FINGERPRINTS:
        attachments[SAMPLES_FILE] = fingerprints(data.samples)
    if started is not None:
        card["seconds"] = round(time.perf_counter() - started, 1)
    attachments[CARD_FILE] = json.dumps(card, indent=2)
    try:
        pipe.save(model_dir, attachments=attachments, keep=keep)
    except InspectkitError as exc:  # e.g. a full disk: name the model folder
        raise wrap(model_dir, exc) from None
    return card


def load_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The saved pipeline and its model card (``task``, ``kind`` and ``channels`` filled in
    from the pipeline when the card is missing)."""
    from inspectkit.pipeline import Pipeline

    if not model_dir.exists():
        raise UsageError(f"{model_dir}: no such model folder; train one with 'inspectkit train'")
    if not (model_dir / "pipeline.json").is_file():
        raise UsageError(f"{model_dir}: not a model folder (no pipeline.json)")
    try:
        pipe = Pipeline.load(model_dir)
    except InspectkitError as exc:
        raise wrap(model_dir, exc) from None
    card_path = model_dir / CARD_FILE
    raw = pipe.attachments.get(CARD_FILE)
    card = parse_json(raw, card_path, "model card") if raw is not None else {}
    if not isinstance(card, dict):
        raise UsageError(f"{card_path}: the model card must be a JSON object")
    check_card(card, pipe, card_path)
    card.setdefault("task", task_of(pipe))
    card.setdefault("kind", getattr(pipe.stages[-1], "kind", None))
    card.setdefault("channels", None)
    return pipe, card


def check_card(card: dict[str, Any], pipe: Any, card_path: Path) -> None:
    """Refuse a card that contradicts its pipeline or cannot be used: a task other than
    what the pipeline does, an unknown kind of input, a channel count other than 1 or 3."""
    task = card.get("task")
    if task is not None:
        if task not in TASKS:
            raise UsageError(f"{card_path}: the model card names an unknown task {task!r}")
        actual = task_of(pipe)
        if task != actual:
            raise UsageError(
                f"{card_path}: the model card says task {task!r} but its pipeline does "
                f"{actual!r}; the card does not belong to this model (train it again)"
            )
    if card.get("kind") not in (None, "wafer", "image"):
        raise UsageError(f"{card_path}: the model card names an unknown kind {card['kind']!r}")
    if card.get("channels") not in (None, 1, 3) or isinstance(card.get("channels"), bool):
        raise UsageError(
            f"{card_path}: the model card gives channels {card['channels']!r}; expected 1 or 3"
        )


def model_task(model_dir: Path) -> str | None:
    """The task of the model saved at ``model_dir`` (``None``: no model there); a
    ``UsageError`` when it holds a model that cannot be read."""
    if not (model_dir / "pipeline.json").is_file():
        return None
    _, card = load_model(model_dir)
    return str(card["task"])


def task_of(pipe: Any) -> str:
    """``"classify"`` or ``"anomaly"``: what the pipeline's output type says it does."""
    from inspectkit.records import AnomalyScores, Predictions

    out = pipe.output_type
    if issubclass(out, Predictions):
        return "classify"
    if issubclass(out, AnomalyScores):
        return "anomaly"
    raise UsageError(
        f"this pipeline produces {out.__name__}; predict needs a classifier or detector"
    )


__all__ = [
    "CARD_FILE",
    "KEEP_PREVIOUS",
    "MAX_FINGERPRINTS",
    "SAMPLES_FILE",
    "TASKS",
    "check_card",
    "fingerprints",
    "load_model",
    "model_task",
    "sample_key",
    "save_model",
    "seen_in_training",
    "task_of",
    "training_note",
]
