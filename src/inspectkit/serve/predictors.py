"""What the service runs: a saved pipeline (torch) or an exported model (ONNX Runtime),
behind one interface.

Both read uploads with :mod:`inspectkit_runtime.images` (the library's decoder, in NumPy)
and answer with the rows of ``inspectkit predict --json``, so a client sees the same
JSON whichever backend serves it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inspectkit_runtime.images import collect_inputs, decode_image, read_wafer_npz

#: One decoded input: ``(id, source, H×W or H×W×C array)``.
Item = tuple[str, str, np.ndarray]


class Predictor(Protocol):
    """A loaded model the service can run."""

    path: Path
    task: str
    kind: str
    channels: int | None

    def card(self) -> dict[str, Any]: ...

    def predict(self, items: Sequence[Item]) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        """Rows of ``predict --json`` and the anomaly scores (``None`` for classifiers)."""
        ...


def read_upload(data: bytes, name: str, kind: str, channels: int | None) -> list[Item]:
    """Decoded inputs of one uploaded file: a wafer ``.npz`` gives one per map
    (``STEM:INDEX``), an image one. Raises ``InputError`` naming the file."""
    from inspectkit_runtime.errors import InputError

    is_npz = name.lower().endswith(".npz")
    if kind == "wafer":
        if not is_npz:
            raise InputError(f"{name}: this model reads wafer maps (.npz), not images")
        stem = Path(name).stem
        return [(f"{stem}:{i}", name, m) for i, m in enumerate(read_wafer_npz(data, name=name))]
    if is_npz:
        raise InputError(f"{name}: this model reads images, not wafer maps")
    return [(name, name, decode_image(data, channels, name=name))]


def read_paths(
    paths: Sequence[str | os.PathLike[str]], kind: str, channels: int | None
) -> list[Item]:
    """Decoded inputs of files and folders (as ``inspectkit predict`` reads them)."""
    return list(collect_inputs(list(paths), kind=kind, channels=channels))


class PipelinePredictor:
    """A model folder saved by ``Pipeline.save`` / ``inspectkit train``, run in torch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from inspectkit.cli.card import load_model

        self.path = Path(path)
        self.pipeline, self._card = load_model(self.path)
        self.task: str = self._card["task"]
        self.kind: str = self._card.get("kind") or "image"
        self.channels: int | None = self._card.get("channels")

    def card(self) -> dict[str, Any]:
        last = self.pipeline.stages[-1]
        card = {**self._card, "backend": "torch", "path": str(self.path)}
        card["stages"] = [s["name"] for s in self.pipeline.spec()["stages"]]
        if self.task == "anomaly":
            card["threshold"] = getattr(last, "threshold", None)
        else:
            card["classes"] = list(getattr(last, "classes", []) or card.get("classes") or [])
        return card

    def predict(self, items: Sequence[Item]) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        import torch

        from inspectkit.cli.predict import prediction_rows
        from inspectkit.records import ImageSet, SampleMeta

        tensors = [
            torch.from_numpy(np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)))
            for _, _, a in items
        ]
        same = len({(tuple(t.shape), t.dtype) for t in tensors}) == 1
        data = ImageSet.build(
            images=torch.stack(tensors) if same else tensors,
            samples=[SampleMeta(id=i, source=s) for i, s, _ in items],
            kind=self.kind,
        )
        result = self.pipeline.run(data)
        scores = result.scores.numpy() if self.task == "anomaly" else None
        return prediction_rows(result, self.task), scores


class RuntimePredictor:
    """An exported ``MODEL.onnx`` + ``MODEL.json``, run with ONNX Runtime."""

    def __init__(self, path: str | os.PathLike[str], **options: Any) -> None:
        from inspectkit_runtime import InspectionModel

        self.model = InspectionModel(path, **options)
        self.path = self.model.onnx_path
        self.task = self.model.task
        self.kind = self.model.kind
        self.channels = self.model.channels

    def card(self) -> dict[str, Any]:
        return {**self.model.card(), "backend": "onnxruntime", "path": str(self.path)}

    def predict(self, items: Sequence[Item]) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        outputs = self.model.run_arrays([a for _, _, a in items])
        ids, sources = [i for i, _, _ in items], [s for _, s, _ in items]
        rows = self.model.rows(outputs, ids, sources, [a.shape[:2] for _, _, a in items])
        return rows, outputs.get("score")


def load_predictor(path: str | os.PathLike[str], **options: Any) -> Predictor:
    """A :class:`RuntimePredictor` for ``MODEL.onnx`` / ``MODEL.json`` (or a folder with
    ``model.json`` and no ``pipeline.json``), else a :class:`PipelinePredictor`."""
    p = Path(path)
    exported = p.suffix in (".onnx", ".json") or (
        p.is_dir() and (p / "model.json").is_file() and not (p / "pipeline.json").is_file()
    )
    return RuntimePredictor(p, **options) if exported else PipelinePredictor(p)


__all__ = [
    "Item",
    "PipelinePredictor",
    "Predictor",
    "RuntimePredictor",
    "load_predictor",
    "read_paths",
    "read_upload",
]
