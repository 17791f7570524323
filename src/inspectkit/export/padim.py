"""PaDiM's scoring as an exportable graph: the detector's own ``_score_batch`` (embedding,
per-position Mahalanobis distance as one batched matmul with the stored inverses, the
fused upsample-and-smooth) traces to ONNX as it is. The inverse covariances are a graph
initializer: positions × features² floats (1,024 × 100² = 41 MB at 128 px)."""

from __future__ import annotations

import torch
from torch import nn

from inspectkit.export.base import register_detector_exporter


class ScoreBatchGraph(nn.Module):
    """A detector whose ``_score_batch`` is traceable as it is."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = self.detector._score_batch(x)
        return scores.float(), maps.float()


@register_detector_exporter("padim")
def export_padim(detector: nn.Module) -> nn.Module:
    return ScoreBatchGraph(detector)


__all__ = ["ScoreBatchGraph", "export_padim"]
