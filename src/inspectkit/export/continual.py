"""The continual classifier as an export: the classifier's runtime steps and input
encoding, then the latest network, or with ``ensemble=True`` every per-experience member,
each class's probability averaged over the members that know it and rows renormalised
(``ReplayTrainer.predict_proba``). Outputs: ``probs`` and ``class``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.export.base import ExportContext, StageExport, register_stage_exporter
from inspectkit.export.classifier import InputEncoding, input_steps


def _fused(net: nn.Module) -> nn.Module:
    fused = getattr(net, "fused", None)
    return (fused() if callable(fused) else net).eval()


class ContinualGraph(nn.Module):
    def __init__(self, nets: list[nn.Module], outputs: list[int], spec: Any) -> None:
        super().__init__()
        self.encode = InputEncoding(spec)
        self.nets = nn.ModuleList(_fused(n) for n in nets)
        self.k = max(outputs)
        count = torch.zeros(self.k)
        for km in outputs:
            count[:km] += 1
        self.register_buffer("count", count.clamp_min(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.encode(x)
        total: torch.Tensor | None = None
        for net in self.nets:
            p = torch.softmax(net(e), dim=1)
            p = F.pad(p, [0, self.k - p.shape[1]])
            total = p if total is None else total + p
        assert total is not None
        probs = total / self.count
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
        return probs, probs.argmax(1)


@register_stage_exporter("continual_classifier")
def export_continual_classifier(stage: Any, ctx: ExportContext) -> StageExport:
    from inspectkit.continual.trainer import num_outputs

    steps = input_steps(stage, "ContinualClassifier", ctx)
    spec = stage.input_spec
    nets = list(stage.members) if stage.config.ensemble and stage.members else [stage.model]
    outputs = [num_outputs(n) for n in nets]
    return StageExport(
        steps=steps,
        module=ContinualGraph(nets, outputs, spec).eval(),
        outputs=["probs", "class"],
        input_shape=(spec.data_channels, *spec.size),
        sidecar={"task": "classify", "classes": list(stage.classes), "reject_below": None},
    )


__all__ = ["ContinualGraph", "export_continual_classifier"]
