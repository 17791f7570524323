"""The recipe detectors: ``"default"`` holds one detector and scores with it; ``"auto"``
keeps the candidate it chose. Their graphs are the held detector's."""

from __future__ import annotations

from torch import nn

from inspectkit.export.base import detector_graph, register_detector_exporter


@register_detector_exporter("default")
def export_recommended(detector: nn.Module) -> nn.Module:
    return detector_graph(detector.inner)


@register_detector_exporter("auto")
def export_auto(detector: nn.Module) -> nn.Module:
    return detector_graph(detector.detector)


__all__ = ["export_auto", "export_recommended"]
