"""The ensemble as an exportable graph: every member's graph on the same batch, their maps
z-scored with the held-out statistics and averaged with the member weights; the image
score is the fused map's maximum or the weighted mean of z-scored member scores. Members
that read the same frozen backbone share one pass over it, as when the library scores
(:func:`~inspectkit.anomaly.ensemble.feature_plan`): the graph holds that backbone once."""

from __future__ import annotations

import torch
from torch import nn

from inspectkit.anomaly.ensemble import feature_plan, shared_features
from inspectkit.export.base import detector_graph, register_detector_exporter


class EnsembleGraph(nn.Module):
    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.members = nn.ModuleList(detector_graph(m) for m in detector.members)
        self.register_buffer("weights", detector.member_weights.detach().float().clone())
        self.register_buffer("image_stats", detector.image_stats.detach().float().clone())
        self.register_buffer("map_stats", detector.map_stats.detach().float().clone())
        self.image_score = detector.image_score
        # the detectors (not submodules: the member graphs hold them) and who reads whose pass
        self.__dict__["detectors"] = list(detector.members)
        self.plan = feature_plan(self.detectors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps: torch.Tensor | None = None
        scores: torch.Tensor | None = None
        with shared_features(self.detectors, self.plan, x):
            outputs = [member(x) for member in self.members]
        for k, (s, m) in enumerate(outputs):
            w = self.weights[k]
            z = (m.float() - self.map_stats[k, 0]) / self.map_stats[k, 1] * w
            maps = z if maps is None else maps + z
            if self.image_score == "mean":
                zs = (s.float() - self.image_stats[k, 0]) / self.image_stats[k, 1] * w
                scores = zs if scores is None else scores + zs
        assert maps is not None
        if self.image_score == "map_max":
            return maps.flatten(1).amax(1), maps
        assert scores is not None
        return scores, maps


@register_detector_exporter("ensemble")
def export_ensemble(detector: nn.Module) -> nn.Module:
    return EnsembleGraph(detector)


__all__ = ["EnsembleGraph", "export_ensemble"]
