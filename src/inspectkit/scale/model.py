"""The model of an archive run: its digest, and scoring decoded inputs into result rows.

A model is a folder saved by ``Pipeline.save`` / ``inspectkit train`` (run in torch) or a
model exported with ``Pipeline.export`` (``MODEL.onnx`` + ``MODEL.json``, run by
:mod:`inspectkit_runtime` in ONNX Runtime). Its digest is the SHA-256 of the file that
records the SHA-256 of every other one (``pipeline.json``, the sidecar), so it is cheap
and changes with any weight; folders of format 1, whose ``pipeline.json`` records no
digests, add their state files' bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspectkit.scale.output import ScaleError

#: Verdicts of a detector (``anomaly.threshold.Calibration.verdicts``) and of a
#: classifier's input sent to a person.
REVIEW = "review"


def is_exported(path: str | os.PathLike[str]) -> bool:
    """``MODEL.onnx`` / ``MODEL.json``, or a folder holding ``model.json`` and no
    ``pipeline.json`` (the rule ``inspectkit serve`` uses)."""
    p = Path(path)
    return p.suffix in (".onnx", ".json") or (
        p.is_dir() and (p / "model.json").is_file() and not (p / "pipeline.json").is_file()
    )


def model_digest(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 naming the model at ``path`` exactly (see the module notes).

    Example:
        >>> from inspectkit.scale import model_digest
        >>> model_digest("models/line3")[:12]  # doctest: +SKIP
        '3f0c9a51e2d4'
    """
    p = Path(path)
    if is_exported(p):
        from inspectkit_runtime.sidecar import sidecar_path

        side = sidecar_path(p)
        try:
            return hashlib.sha256(side.read_bytes()).hexdigest()
        except OSError as exc:
            raise ScaleError(f"{side}: cannot read the exported model ({exc.strerror})") from None
    from inspectkit.modelfolder import LEGACY_ATTACHMENTS, SPEC_FILE

    try:
        raw = (p / SPEC_FILE).read_bytes()
    except OSError as exc:
        raise ScaleError(f"{p}: not a model folder ({SPEC_FILE}: {exc.strerror})") from None
    h = hashlib.sha256(raw)
    try:
        spec = json.loads(raw)
        stages = spec.get("stages", []) if isinstance(spec, dict) else []
        unrecorded = [s["state"] for s in stages if s.get("state") and "sha256" not in s]
        if isinstance(spec, dict) and spec.get("format_version", 2) < 2:
            unrecorded += [n for n in LEGACY_ATTACHMENTS if (p / n).is_file()]
        for name in unrecorded:  # format 1: the spec records no digests
            h.update(name.encode() + b"\0" + (p / name).read_bytes())
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise ScaleError(f"{p}: unreadable {SPEC_FILE} ({exc})") from None
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know of a model before any worker loads it."""

    path: str
    backend: str  # "torch" or "onnx"
    task: str  # "classify" or "anomaly"
    kind: str  # "wafer" or "image"
    channels: int | None
    digest: str

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelInfo:
        p = Path(path).absolute()
        digest = model_digest(p)
        if is_exported(p):
            from inspectkit_runtime.sidecar import read_sidecar

            _, side = read_sidecar(p)
            return cls(
                str(p),
                "onnx",
                side["task"],
                side["input"].get("kind") or "image",
                side["input"].get("channels"),
                digest,
            )
        from inspectkit.cli.card import load_model

        pipe, card = load_model(p)
        del pipe  # the workers load their own
        return cls(
            str(p), "torch", card["task"], card.get("kind") or "image", card.get("channels"), digest
        )


class Scorer(ABC):
    """A loaded model scoring decoded inputs. Built by :func:`load_scorer`."""

    task: str

    @abstractmethod
    def score(
        self, arrays: Sequence[Any], ids: Sequence[str], sources: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One row (result columns) per input; ``arrays`` are ``C×H×W`` NumPy arrays."""


class TorchScorer(Scorer):
    """A saved pipeline, run as ``Pipeline.run`` runs it on one in-memory batch."""

    def __init__(self, info: ModelInfo) -> None:
        from inspectkit.cli.card import load_model

        self.pipeline, card = load_model(Path(info.path))
        self.task, self.kind = info.task, info.kind
        if card["task"] != info.task:
            raise ScaleError(f"{info.path}: the model changed during the run")

    def score(
        self, arrays: Sequence[Any], ids: Sequence[str], sources: Sequence[str]
    ) -> list[dict[str, Any]]:
        import torch

        from inspectkit.records import ImageSet, SampleMeta

        tensors = [torch.from_numpy(a) for a in arrays]
        # as ImageSet.materialize batches a lazy set (one tensor when sizes agree); wafer
        # maps stay the ragged list load_wafer_npz gives
        same = self.kind != "wafer" and len({tuple(t.shape) for t in tensors}) == 1
        taken: set[str] = set()
        samples = []
        for sid, src in zip(ids, sources):
            while sid in taken:  # ids are unique within a set (two archives' STEM:0)
                sid += "'"
            taken.add(sid)
            samples.append(SampleMeta(id=sid, source=src))
        data = ImageSet.build(
            images=torch.stack(tensors) if same else tensors, samples=samples, kind=self.kind
        )
        return torch_rows(self.pipeline.run(data), self.task)


def torch_rows(result: Any, task: str) -> list[dict[str, Any]]:
    """Result columns per sample of a ``Predictions`` or ``AnomalyScores`` record."""
    rows: list[dict[str, Any]] = []
    if task == "classify":
        probs = result.probs.double().tolist()
        for i, top in enumerate(result.predicted):
            rows.append(_class_row(result.classes, probs[i], top))
        return rows
    from inspectkit.metrics.anomaly import part_regions

    scores = result.scores.double().tolist()
    norm = None if result.normalized is None else result.normalized.double().tolist()
    flags = None if result.is_anomalous is None else result.is_anomalous.tolist()
    review = None if result.review is None else result.review.tolist()
    regions = part_regions(result)
    for i, score in enumerate(scores):
        rows.append(
            _anomaly_row(
                score,
                None if norm is None else norm[i],
                result.threshold,
                None if flags is None else flags[i],
                None if review is None else review[i],
                None if regions is None else regions[i],
            )
        )
    return rows


def _class_row(classes: Sequence[str], probs: Sequence[float], top: str | None) -> dict[str, Any]:
    return {
        "verdict": REVIEW if top is None else top,
        "predicted": top,
        "probability": max(probs) if len(probs) else None,
        "probs": list(zip(classes, probs)),
    }


def _anomaly_row(
    score: float,
    norm: float | None,
    threshold: float | None,
    bad: bool | None,
    review: bool | None,
    regions: list[list[int]] | None,
) -> dict[str, Any]:
    verdict = None if bad is None else "defect" if bad else REVIEW if review else "good"
    return {
        "verdict": verdict,
        "score": score,
        "normalized": norm,
        "threshold": None if threshold is None else float(threshold),
        "regions": regions,
    }


class OnnxScorer(Scorer):
    """An exported model, run by :class:`inspectkit_runtime.InspectionModel`."""

    def __init__(self, info: ModelInfo, threads: int | None = None) -> None:
        from inspectkit_runtime import InspectionModel

        self.model = InspectionModel(info.path, threads=threads)
        self.task = self.model.task

    def score(
        self, arrays: Sequence[Any], ids: Sequence[str], sources: Sequence[str]
    ) -> list[dict[str, Any]]:
        import numpy as np

        # the runtime reads H×W or H×W×C arrays; the decoders here give C×H×W
        images = [
            a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)) for a in arrays
        ]
        out = self.model.run_arrays(images)
        rows: list[dict[str, Any]] = []
        if self.task == "classify":
            classes = self.model.classes
            for probs, k in zip(out["probs"].astype(np.float64).tolist(), out["class"].tolist()):
                rows.append(_class_row(classes, probs, classes[k] if k >= 0 else None))
            return rows
        n = len(images)
        norm = out.get("normalized")
        flag = out.get("anomalous")
        review = out.get("review")
        regions = self.model.regions(out, [a.shape[:2] for a in images])
        for i in range(n):
            rows.append(
                _anomaly_row(
                    float(out["score"][i]),
                    None if norm is None else float(norm[i]),
                    self.model.threshold,
                    None if flag is None else bool(flag[i]),
                    None if review is None else bool(review[i]),
                    None if regions is None else regions[i],
                )
            )
        return rows


def load_scorer(info: ModelInfo, threads: int | None = None) -> Scorer:
    """Load the model of ``info`` and check it is still the one the run started with."""
    scorer: Scorer = OnnxScorer(info, threads) if info.backend == "onnx" else TorchScorer(info)
    if model_digest(info.path) != info.digest:
        raise ScaleError(
            f"{info.path}: the model changed since the run started (its digest differs); "
            "run again to score with the new one"
        )
    return scorer


__all__ = [
    "ModelInfo",
    "OnnxScorer",
    "Scorer",
    "TorchScorer",
    "is_exported",
    "load_scorer",
    "model_digest",
    "torch_rows",
]
