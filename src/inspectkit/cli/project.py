"""The project folder and model folders of the command line.

A project keeps one line's work in one place::

    PROJECT/data/<class>/         the real samples
    PROJECT/generated/<class>/    what `inspectkit generate` wrote (trains, never scored)
    PROJECT/models/<name>/        saved pipelines (+ inspectkit-model.json)
    PROJECT/reports/<name>/       report.html / report.json

A model folder is a saved :class:`~inspectkit.Pipeline` with the model card
``inspectkit-model.json`` (task, kind of input, channels, classes, training counts) as
an attachment saved in the same atomic unit, by :func:`save_model` only; the previous
model is kept as ``MODEL_DIR.prev`` (:data:`KEEP_PREVIOUS`). The card is optional on
load: any saved pipeline works with ``predict``/``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectkit._version import __version__
from inspectkit.cli.command import UsageError, wrap
from inspectkit.errors import InspectkitError

#: The model card: saved with the pipeline by ``inspectkit train`` and ``inspectkit demo``.
CARD_FILE = "inspectkit-model.json"
CARD_FORMAT = "inspectkit.model-card"
#: Previous versions of a model the command line keeps (``MODEL_DIR.prev``).
KEEP_PREVIOUS = 1


@dataclass(frozen=True)
class Project:
    """Paths of a project folder (see the module docstring)."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> Project:
        path = Path(root)
        if not path.is_dir():
            raise UsageError(f"{path}: project folder not found (expected {path}/data/<class>/)")
        return cls(path)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Project | None:
        """The ``--project`` folder, or ``None`` when not given."""
        root = getattr(args, "project", None)
        return None if root is None else cls.open(root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    def generated_class(self, cls: str) -> Path:
        return self.generated / cls

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def report(self, name: str) -> Path:
        return self.root / "reports" / name

    def load_generated(self, data: Any, channels: int | None = None) -> Any:
        """Samples under ``generated/<class>/`` flagged ``synthetic`` (``None`` if none),
        with the classes of the real set ``data``."""
        from inspectkit.records import ImageSet
        from inspectkit.sources import load_image_folder, load_wafer_maps

        folder = self.generated
        if not folder.is_dir():
            return None
        if data.kind == "wafer":
            files = sorted(folder.glob("*/*.npz"))
            if not files:
                return None
            gen = ImageSet.concat([load_wafer_maps(f, classes=list(data.classes)) for f in files])
        else:
            from inspectkit.sources.folders import CLASS_FOLDERS

            if not CLASS_FOLDERS.detect(folder):
                return None
            gen = load_image_folder(folder, channels=channels)
            unknown = [c for c in gen.classes if c not in data.classes]
            if unknown:
                raise UsageError(
                    f"{folder}: generated classes {unknown} have no real samples under data/"
                )
        samples = [
            s.model_copy(update={"synthetic": True, "id": f"generated/{s.id}"}) for s in gen.samples
        ]
        return gen.replace(samples=samples, classes=list(data.classes))


def pick(
    value: str | None,
    project: Project | None,
    default: Callable[[Project], Path],
    flag: str,
    command: str,
) -> Path:
    """``value``, else the project's default path; a ``UsageError`` when neither is given."""
    if value is not None:
        return Path(value)
    if project is not None:
        return default(project)
    raise UsageError(f"inspectkit {command}: {flag} is required (or give --project)")


def out_folder(path: Path) -> Path:
    """``path`` as an output folder: it may not be a file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a folder")
    return path


# ---------------------------------------------------------------------- model folders
def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; a one-line ``UsageError`` naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None
    return parse_json(raw, path, what)


def parse_json(raw: bytes, path: Path, what: str) -> Any:
    """``raw`` parsed as JSON; a one-line ``UsageError`` naming ``path`` otherwise."""
    try:
        return json.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: {what} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None


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
) -> dict[str, Any]:
    """Save a pipeline trained on ``data`` with its model card, in one atomic unit (the
    card is an attachment of :meth:`Pipeline.save`), and return the card.

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
    if started is not None:
        card["seconds"] = round(time.perf_counter() - started, 1)
    pipe.save(model_dir, attachments={CARD_FILE: json.dumps(card, indent=2)}, keep=keep)
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
    card.setdefault("task", task_of(pipe))
    card.setdefault("kind", getattr(pipe.stages[-1], "kind", None))
    card.setdefault("channels", None)
    return pipe, card


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
    "Project",
    "load_model",
    "out_folder",
    "parse_json",
    "pick",
    "read_json",
    "save_model",
    "task_of",
]
