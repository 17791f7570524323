"""An exported inspectkit model, run with ONNX Runtime: read, preprocess, predict.

Example:
    >>> import inspectkit_runtime as ikr                      # doctest: +SKIP
    >>> model = ikr.load("line3.onnx")                        # doctest: +SKIP
    >>> model.predict(["part-0001.png"])[0]["anomalous"]      # doctest: +SKIP
    False
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspectkit_runtime.errors import InputError, RuntimeModelError
from inspectkit_runtime.images import collect_inputs, decode_image, read_wafer_npz
from inspectkit_runtime.preprocess import apply_steps, resize_maps
from inspectkit_runtime.regions import rows_regions
from inspectkit_runtime.sidecar import PREDICT_SCHEMA, read_sidecar, sha256_file

#: Inputs preprocessed and run through the graph at a time (detector graphs hold
#: patches × memory bank distances per batch, so this stays small).
DEFAULT_BATCH = 8


class InspectionModel:
    """An exported model: the ONNX graph, its sidecar, an ONNX Runtime session.

    Args:
        path: ``MODEL.onnx``, its sidecar ``MODEL.json``, or a folder holding ``model.json``.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: Intra-op threads of the session (``None``: ONNX Runtime's choice).
        batch_size: Inputs per graph run (``None``: the sidecar's hint, else 8).
        verify: Check the SHA-256 of the ONNX file (and external data) against the sidecar.

    Raises:
        RuntimeModelError: a missing or tampered file, an unknown format.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        verify: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.sidecar_path, self.sidecar = read_sidecar(path)
        side = self.sidecar
        folder = self.sidecar_path.parent
        self.onnx_path = folder / side["model"]
        files = [(self.onnx_path, side["sha256"])]
        for entry in side.get("external_data", []):
            files.append((folder / entry["file"], entry["sha256"]))
        for file, digest in files:
            if Path(file).name != Path(file).name.strip() or Path(file).parent != folder:
                raise RuntimeModelError(f"{self.sidecar_path}: unsafe file name {file.name!r}")
            if not Path(file).is_file():
                raise RuntimeModelError(f"{file}: missing (named by {self.sidecar_path.name})")
            if verify and sha256_file(file) != digest:
                raise RuntimeModelError(
                    f"{file}: SHA-256 differs from the one {self.sidecar_path.name} records "
                    "(a changed or partly copied file); export the model again"
                )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeModelError(
                f"{self.onnx_path}: ONNX Runtime cannot load it ({exc})"
            ) from None
        graph = side["graph"]
        self.input_name: str = graph["input"]
        self.output_names: list[str] = list(graph["outputs"])
        self.input_shape: tuple[int, int, int] = tuple(graph["input_shape"])  # type: ignore[assignment]
        self.batch_size = int(batch_size or side.get("batch_hint") or DEFAULT_BATCH)
        if self.batch_size < 1:
            raise RuntimeModelError(f"batch_size must be at least 1, got {self.batch_size}")

    # ------------------------------------------------------------------ description
    @property
    def task(self) -> str:
        """``"anomaly"`` or ``"classify"``."""
        return str(self.sidecar["task"])

    @property
    def kind(self) -> str:
        """``"wafer"`` (reads ``.npz`` wafer maps) or ``"image"`` (image files)."""
        return str(self.sidecar["input"]["kind"])

    @property
    def channels(self) -> int | None:
        """Channels images are decoded to (``None``: as stored)."""
        return self.sidecar["input"].get("channels")

    @property
    def classes(self) -> list[str]:
        return list(self.sidecar.get("classes") or [])

    @property
    def threshold(self) -> float | None:
        return self.sidecar.get("threshold")

    # ------------------------------------------------------------------ running
    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded images (``H×W`` or ``H×W×C``) → the graph's float32 ``N×C×H×W`` input."""
        x = apply_steps(images, self.sidecar["preprocess"])
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"the preprocessed images are {tuple(x.shape[1:])} (C, H, W) but the model takes "
                f"{self.input_shape}; give {self.input_shape[0]}-channel images"
            )
        return x

    def run_arrays(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs (``score``, ``map``, ``normalized``, ``anomalous`` and
        ``review`` with a review band, or ``probs``, ``class``) for decoded images,
        ``batch_size`` at a time. Maps are at the working size, or at the images' own
        size when the model says ``maps="source"`` and the images share one size (as the
        library returns them)."""
        if len(images) == 0:
            raise InputError("no images given")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start : start + self.batch_size])
            for name, value in zip(self.output_names, self.session.run(None, {self.input_name: x})):
                parts[name].append(value)
        out = {name: np.concatenate(values) for name, values in parts.items()}
        sizes = {tuple(np.asarray(a).shape[:2]) for a in images}
        if "map" in out and self.sidecar.get("maps") == "source" and len(sizes) == 1:
            (source,) = sizes
            if source != tuple(out["map"].shape[-2:]):  # the library's maps="source"
                out["map"] = resize_maps(out["map"], source)
        return out

    def rows(
        self,
        outputs: dict[str, np.ndarray],
        ids: Sequence[str],
        sources: Sequence[str],
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[dict[str, Any]]:
        """Per-input dicts as ``inspectkit predict --json`` writes them (``image_sizes``:
        each input's ``(H, W)``, which region boxes are given in)."""
        rows: list[dict[str, Any]] = []
        regions = self.regions(outputs, image_sizes) if self.task != "classify" else None
        for i, (sid, src) in enumerate(zip(ids, sources)):
            row: dict[str, Any] = {"input": src or sid, "id": sid}
            if self.task == "classify":
                probs = outputs["probs"][i]
                k = int(outputs["class"][i])
                row["predicted"] = self.classes[k] if k >= 0 else None
                row["probability"] = round(float(probs.max()), 6)
                row["probs"] = {c: round(float(p), 6) for c, p in zip(self.classes, probs)}
            else:
                row["score"] = round(float(outputs["score"][i]), 6)
                norm = outputs.get("normalized")
                flag = outputs.get("anomalous")
                row["normalized"] = None if norm is None else round(float(norm[i]), 6)
                row["anomalous"] = None if flag is None else bool(flag[i])
                row["threshold"] = self.threshold
                if "review" in outputs:
                    row["review"] = bool(outputs["review"][i])
                if regions is not None:
                    row["regions"] = regions[i]
            rows.append(row)
        return rows

    def regions(
        self,
        outputs: dict[str, np.ndarray],
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[list[list[int]]] | None:
        """Per part, the boxes of its defect region (the library's rule,
        :mod:`inspectkit_runtime.regions`), in its image's pixels (``image_sizes``,
        ``(H, W)`` each; the map's own without); ``None`` for a model without a
        calibration or maps."""
        cal = self.sidecar.get("calibration")
        if cal is None or "map" not in outputs or "anomalous" not in outputs:
            return None
        line = cal.get("region_threshold")
        line = cal.get("threshold") if line is None else line
        if isinstance(line, bool) or not isinstance(line, int | float) or not math.isfinite(line):
            raise RuntimeModelError(
                f"{self.sidecar_path}: the calibration's region threshold is not a finite "
                f"number ({line!r}); export the model again"
            )
        shown = outputs["anomalous"].astype(bool)
        if "review" in outputs:
            shown = shown | outputs["review"].astype(bool)
        maps = outputs["map"]
        lines = np.full(len(maps), float(line))
        return rows_regions(maps, lines, shown, image_sizes)

    def predict_arrays(
        self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows (see :meth:`rows`) for decoded images; ids default to their positions."""
        ids = [str(i) for i in range(len(images))] if ids is None else list(ids)
        sizes = [np.asarray(a).shape[:2] for a in images]
        return self.rows(self.run_arrays(images), ids, ids, sizes)

    def read(self, source: Any, name: str) -> list[tuple[str, np.ndarray]]:
        """``(id, array)`` pairs from one uploaded file (bytes): a wafer ``.npz`` gives one
        per map (``STEM:INDEX``), an image one."""
        if self.kind == "wafer":
            if not name.lower().endswith(".npz"):
                raise InputError(f"{name}: this model reads wafer maps (.npz), not images")
            stem = Path(name).stem
            return [(f"{stem}:{i}", m) for i, m in enumerate(read_wafer_npz(source, name=name))]
        if name.lower().endswith(".npz"):
            raise InputError(f"{name}: this model reads images, not wafer maps")
        return [(name, decode_image(source, self.channels, name=name))]

    def predict(self, paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
        """Rows for image files, folders of images or wafer ``.npz`` files, read and run
        ``batch_size`` at a time."""
        rows: list[dict[str, Any]] = []
        pending: list[tuple[str, str, np.ndarray]] = []
        taken: set[str] = set()

        def flush() -> None:
            if pending:
                outs = self.run_arrays([a for _, _, a in pending])
                sizes = [a.shape[:2] for _, _, a in pending]
                ids = [i for i, _, _ in pending]
                rows.extend(self.rows(outs, ids, [s for _, s, _ in pending], sizes))
                pending.clear()

        for sid, src, array in collect_inputs(list(paths), kind=self.kind, channels=self.channels):
            while sid in taken:
                sid += "'"
            taken.add(sid)
            pending.append((sid, src, array))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        return rows

    def predict_json(self, paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
        """The document ``inspectkit predict --json`` prints, for these inputs."""
        return {"schema": PREDICT_SCHEMA, "task": self.task, "predictions": self.predict(paths)}

    def card(self) -> dict[str, Any]:
        """The model card: task, input, classes or calibration, and the export's notes."""
        side = self.sidecar
        keys = (
            "task",
            "method",
            "classes",
            "threshold",
            "calibration",
            "input",
            "inspectkit_version",
            "exported_at",
            "notes",
            "card",
            "opset",
        )
        return {k: side[k] for k in keys if k in side}


def load(path: str | os.PathLike[str], **kwargs: Any) -> InspectionModel:
    """:class:`InspectionModel` of ``path`` (keyword arguments go to its constructor)."""
    return InspectionModel(path, **kwargs)


__all__ = ["DEFAULT_BATCH", "InspectionModel", "load"]
