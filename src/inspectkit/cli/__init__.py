"""The ``inspectkit`` command line: the teachable-machine flow for people who do not code.

Collect samples per class, generate more, train, predict with probabilities, evaluate,
explain::

    inspectkit demo
    inspectkit train    --data PATH --task classify|anomaly --out MODEL_DIR [--spec pipeline.json]
    inspectkit predict  --model MODEL_DIR PATH... [--json] [--on-error skip]
    inspectkit evaluate --model MODEL_DIR --data PATH [--json] [--report DIR] [--on-error skip]
    inspectkit rollback --model MODEL_DIR
    inspectkit explain  --model MODEL_DIR PATH... --out DIR
    inspectkit generate --data PATH --class NAME --n N --method augment|vae --out DIR
    inspectkit spec-schema

``PATH`` is any layout :func:`inspectkit.sources.detect` recognises: class folders,
MVTec AD, magnetic tile, Pascal VOC (NEU-DET), a wafer ``.npz`` or ``LSWMD.pkl``.
``--project DIR`` fills the paths from ``DIR/data/<class>/``, ``DIR/generated/<class>/``,
``DIR/models/``, ``DIR/reports/`` (:class:`~inspectkit.cli.project.Project`).

Each command is one module of this package holding a registered
:class:`~inspectkit.cli.command.Command`; installed packages add commands under the
entry-point group ``inspectkit.commands``. Nothing here imports torch until a command
runs, so ``inspectkit --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import os
import warnings

from inspectkit.cli.card import CARD_FILE, load_model
from inspectkit.cli.command import (
    COMMANDS,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    UsageError,
    register_command,
)
from inspectkit.cli.demo import demo_data_path
from inspectkit.cli.evaluate import EVALUATE_SCHEMA, evaluation_json
from inspectkit.cli.main import build_parser, main
from inspectkit.cli.predict import PREDICT_BATCH, PREDICT_SCHEMA
from inspectkit.cli.project import Project


def detect_layout(path: str | os.PathLike[str]) -> str:
    """Deprecated alias of :func:`inspectkit.sources.detect` (same layout names)."""
    warnings.warn(
        "inspectkit.cli.detect_layout is deprecated; use inspectkit.sources.detect",
        DeprecationWarning,
        stacklevel=2,
    )
    from inspectkit.sources import detect

    return detect(path)


__all__ = [
    "CARD_FILE",
    "COMMANDS",
    "EVALUATE_SCHEMA",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "PREDICT_BATCH",
    "PREDICT_SCHEMA",
    "Command",
    "Project",
    "UsageError",
    "build_parser",
    "demo_data_path",
    "detect_layout",
    "evaluation_json",
    "load_model",
    "main",
    "register_command",
]
