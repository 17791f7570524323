"""The self-supervised (CutPaste) detector scores with its head on the learned backbone:
its graph is the head's (PaDiM for ``head="gaussian"``, PatchCore for ``"patchcore"``)."""

from __future__ import annotations

from torch import nn

from inspectkit.export.base import detector_graph, register_detector_exporter


@register_detector_exporter("selfsupervised")
def export_selfsupervised(detector: nn.Module) -> nn.Module:
    head = detector.patchcore if detector.head == "patchcore" else detector.gaussian
    return detector_graph(head)


__all__ = ["export_selfsupervised"]
