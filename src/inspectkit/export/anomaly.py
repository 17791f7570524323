"""The anomaly-detector stage as an export: resize (antialiased) to the working size,
optional intensity standardisation and scaling to [0, 1] in the runtime; the detector's
graph, then the calibration (verdict ``score > threshold`` in float64, the normalised
score) inside the graph, so a line program reads the verdict straight from it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from inspectkit.anomaly.threshold import Calibration
from inspectkit.export.base import (
    ExportContext,
    StageExport,
    approximations,
    detector_graph,
    exact_detector,
    register_stage_exporter,
)


class DetectorGraph(nn.Module):
    """Detector graph plus calibration: ``score``, ``map`` and, when calibrated,
    ``normalized`` and ``anomalous`` (the library's own ``Calibration.normalize`` and
    ``verdict``, traced)."""

    def __init__(self, core: nn.Module, calibration: Calibration | None) -> None:
        super().__init__()
        self.core = core
        self.calibration = calibration

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, maps = self.core(x)
        scores = scores.float()
        if self.calibration is None:
            return scores, maps
        return scores, maps, self.calibration.normalize(scores), self.calibration.verdict(scores)


@register_stage_exporter("anomaly_detector")
def export_anomaly_detector(stage: Any, ctx: ExportContext) -> StageExport:
    stage.check_fitted()
    cfg = stage.config
    inexact = approximations(stage.detector)
    if inexact:
        ctx.notes.append(
            "exact float32 scoring exported; the model's own run differs by: " + "; ".join(inexact)
        )
    core = detector_graph(exact_detector(stage.detector))
    steps: list[dict[str, Any]] = [{"op": "resize", "size": list(cfg.size), "mode": "antialias"}]
    if cfg.intensity == "standardize":
        mean, std = stage.intensity_stats
        steps.append({"op": "intensity", "mean": mean, "std": std})
    steps.append({"op": "to_float", "scale": 255})
    cal = stage.calibration
    outputs = ["score", "map"] + (["normalized", "anomalous"] if cal is not None else [])
    return StageExport(
        steps=steps,
        module=DetectorGraph(core, cal).eval(),
        outputs=outputs,
        input_shape=(int(stage.in_channels or 1), *cfg.size),
        sidecar={
            "task": "anomaly",
            "method": cfg.method,
            "calibration": None if cal is None else cal.to_state(),
            "threshold": None if cal is None else cal.threshold,
            "exact_float32": not inexact,
        },
    )


__all__ = ["DetectorGraph", "export_anomaly_detector"]
