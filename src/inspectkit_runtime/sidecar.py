"""The sidecar JSON beside an exported ONNX file: what the runtime needs besides the graph.

``MODEL.json`` beside ``MODEL.onnx`` holds the format tag and version, the task
(``"anomaly"`` or ``"classify"``), how inputs are read (``input``: kind, channels to
decode to), the preprocessing steps (:mod:`inspectkit_runtime.preprocess`), the graph's
input and output names, the classes or the calibration, and the SHA-256 of the ONNX file
and of its external data, so a sidecar never describes another graph.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from inspectkit_runtime.errors import RuntimeModelError

FORMAT = "inspectkit.onnx-model"
FORMAT_VERSION = 1
#: The ``schema`` of :meth:`InspectionModel.predict_json`, as ``inspectkit predict --json``.
PREDICT_SCHEMA = "inspectkit.predict/1"
TASKS = ("anomaly", "classify")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``MODEL.json`` for ``MODEL.onnx`` (or the folder's ``model.json``)."""
    p = Path(path)
    if p.is_dir():
        return p / "model.json"
    return p if p.suffix == ".json" else p.with_suffix(".json")


def read_sidecar(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """``(sidecar path, parsed sidecar)`` for a model path; checks the format and fields."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeModelError(
            f"{side}: sidecar not found (export writes it beside the .onnx)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuntimeModelError(f"{side}: unreadable sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RuntimeModelError(f"{side}: not an inspectkit ONNX sidecar (format {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RuntimeModelError(
            f"{side}: sidecar format version {version!r} is newer than {FORMAT_VERSION}; "
            "upgrade inspectkit-runtime"
        )
    missing = [
        k for k in ("task", "model", "sha256", "input", "preprocess", "graph") if k not in data
    ]
    if missing:
        raise RuntimeModelError(f"{side}: sidecar lacks {', '.join(missing)}")
    if data["task"] not in TASKS:
        raise RuntimeModelError(f"{side}: unknown task {data['task']!r}")
    return side, data


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PREDICT_SCHEMA",
    "TASKS",
    "read_sidecar",
    "sha256_file",
    "sidecar_path",
]
