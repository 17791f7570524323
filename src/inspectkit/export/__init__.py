"""Export a fitted pipeline to ONNX, with its preprocessing and calibration, checked.

``Pipeline.export(path)`` (or :func:`export_pipeline`) writes ``MODEL.onnx`` and the
sidecar ``MODEL.json`` that :mod:`inspectkit_runtime` (ONNX Runtime, NumPy, Pillow; no
torch) or any ONNX Runtime binding reads. One exporter per stage kind and per detector,
found through registries (:mod:`inspectkit.export.base`); a stage or detector without
one is an :class:`ExportError` naming it.

Example:
    >>> pipe.export("line3.onnx")                     # doctest: +SKIP
    PosixPath('line3.onnx')
"""

from __future__ import annotations

from inspectkit.export.base import (
    DETECTOR_EXPORTERS,
    STAGE_EXPORTERS,
    ExportContext,
    ExportError,
    StageExport,
    approximations,
    detector_graph,
    exact_detector,
    exact_reference,
    register_detector_exporter,
    register_stage_exporter,
    stage_exporter,
)
from inspectkit.export.writer import (
    EXTERNAL_DATA_BYTES,
    MAP_TOL,
    OPSET,
    SCORE_RTOL,
    compare,
    export_pipeline,
)

__all__ = [
    "DETECTOR_EXPORTERS",
    "EXTERNAL_DATA_BYTES",
    "MAP_TOL",
    "OPSET",
    "SCORE_RTOL",
    "STAGE_EXPORTERS",
    "ExportContext",
    "ExportError",
    "StageExport",
    "approximations",
    "compare",
    "detector_graph",
    "exact_detector",
    "exact_reference",
    "export_pipeline",
    "register_detector_exporter",
    "register_stage_exporter",
    "stage_exporter",
]
