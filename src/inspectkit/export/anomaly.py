"""The anomaly-detector stage as an export: resize (antialiased) to the working size,
optional intensity standardisation and scaling to [0, 1] in the runtime; the detector's
graph (through tiles when the stage tiles), then the calibration (verdict
``score > threshold`` in float64, the normalised score, the review band) inside the
graph, so a line program reads the verdict straight from it. Per-product routing
(``group_by``) is refused: export one model per product."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.export.base import (
    ExportContext,
    ExportError,
    StageExport,
    approximations,
    detector_graph,
    exact_detector,
    register_stage_exporter,
)


class TiledGraph(nn.Module):
    """A detector graph applied to fixed overlapping tiles of the working-size image and
    stitched back with the stage's window (``inspectkit.anomaly.tiling``); the image score
    is the stitched map's maximum. The padding-and-sum stitch adds the tiles in the same
    order as the library's ``stitch``."""

    def __init__(self, core: nn.Module, size: tuple[int, int], tile: int, overlap: float) -> None:
        super().__init__()
        from inspectkit.anomaly import tiling

        self.core = core
        self.grid = tiling.tile_grid(size, tile, overlap)
        self.tile = tile
        self.size = size
        window = tiling.tile_window(tile, overlap)
        weight = torch.zeros(size)
        for y, x in self.grid:
            weight[y : y + tile, x : x + tile] += window
        self.register_buffer("window", window)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, (h, w) = self.tile, self.size
        tiles = torch.stack([x[:, :, y : y + t, xx : xx + t] for y, xx in self.grid], 1).flatten(
            0, 1
        )
        _, maps = self.core(tiles)
        maps = maps.float().view(-1, len(self.grid), t, t)
        out: torch.Tensor | None = None
        for k, (y, xx) in enumerate(self.grid):
            part = F.pad(maps[:, k] * self.window, [xx, w - xx - t, y, h - y - t])
            out = part if out is None else out + part
        assert out is not None
        stitched = out / self.weight
        return stitched.flatten(1).amax(1), stitched


class DetectorGraph(nn.Module):
    """Detector graph plus calibration: ``score``, ``map`` and, when calibrated,
    ``normalized``, ``anomalous`` (and ``review`` with a review band): the library's own
    ``Calibration`` methods, traced."""

    def __init__(self, core: nn.Module, calibration: Any) -> None:
        super().__init__()
        self.core = core
        self.calibration = calibration
        self.review = (
            calibration is not None and getattr(calibration, "review_threshold", None) is not None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, maps = self.core(x)
        scores = scores.float()
        cal = self.calibration
        if cal is None:
            return scores, maps
        out = (scores, maps, cal.normalize(scores), cal.verdict(scores))
        return (*out, cal.in_review(scores)) if self.review else out


def working_size(stage: Any) -> tuple[int, int]:
    """The size the stage resizes images to (``size="auto"`` resolved in fit)."""
    resolve = getattr(stage, "_working_size", None)
    size = resolve() if callable(resolve) else stage.config.size
    return int(size[0]), int(size[1])


@register_stage_exporter("anomaly_detector")
def export_anomaly_detector(stage: Any, ctx: ExportContext) -> StageExport:
    stage.check_fitted()
    cfg = stage.config
    group_by = getattr(cfg, "group_by", None)
    if group_by:
        raise ExportError(
            f"this AnomalyDetector routes each image to its product's detector (group_by="
            f"{group_by!r}), which needs the product key beside each image; per-product routing "
            "is not exported: export one model per product (fit one AnomalyDetector per product)"
        )
    inexact = approximations(stage.detector)
    if inexact:
        ctx.notes.append(
            "exact float32 scoring exported; the model's own run differs by: " + "; ".join(inexact)
        )
    size = working_size(stage)
    core = detector_graph(exact_detector(stage.detector))
    tile = getattr(cfg, "tile", None)
    if tile is not None:
        core = TiledGraph(core, size, int(tile), float(cfg.tile_overlap))
    steps: list[dict[str, Any]] = [{"op": "resize", "size": list(size), "mode": "antialias"}]
    standardizes = getattr(stage, "standardizes", cfg.intensity == "standardize")
    if standardizes:
        mean, std = stage.intensity_stats
        steps.append({"op": "intensity", "mean": mean, "std": std})
    steps.append({"op": "to_float", "scale": 255})
    cal = stage.calibration
    graph = DetectorGraph(core, cal).eval()
    outputs = ["score", "map"]
    if cal is not None:
        outputs += ["normalized", "anomalous"] + (["review"] if graph.review else [])
    return StageExport(
        steps=steps,
        module=graph,
        outputs=outputs,
        input_shape=(int(stage.in_channels or 1), *size),
        sidecar={
            "task": "anomaly",
            "method": cfg.method,
            "calibration": None if cal is None else cal.to_state(),
            "threshold": None if cal is None else cal.threshold,
            "maps": getattr(cfg, "maps", "working"),
            "tile": tile,
            "exact_float32": not inexact,
        },
    )


__all__ = ["DetectorGraph", "TiledGraph", "export_anomaly_detector", "working_size"]
