"""``inspectkit serve``: a warm inspection service (FastAPI + uvicorn, the ``serve`` extra).

:func:`create_app` builds the application around one loaded model (a saved pipeline or an
exported ONNX model); :class:`~inspectkit.serve.drift.DriftMonitor` measures score drift
against reference goods. See :mod:`inspectkit.serve.app` for the endpoints.
"""

from __future__ import annotations

from inspectkit.serve.app import DEFAULT_MAX_BODY, ModelHolder, create_app
from inspectkit.serve.drift import DriftMonitor, ks_statistic, psi
from inspectkit.serve.predictors import PipelinePredictor, RuntimePredictor, load_predictor

__all__ = [
    "DEFAULT_MAX_BODY",
    "DriftMonitor",
    "ModelHolder",
    "PipelinePredictor",
    "RuntimePredictor",
    "create_app",
    "ks_statistic",
    "load_predictor",
    "psi",
]
