"""The classifier stage as an export: resize to the network's input size and scaling in
the runtime; the input encoding (wafer one-hot, photo standardisation), the network with
BatchNorm folded, the test-time views and the softmax inside the graph. Outputs:
``probs`` (``N×K``) and ``class`` (the index of the top class, ``-1`` where
``reject_below`` sends the sample to review)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from inspectkit.export.base import ExportContext, ExportError, StageExport, register_stage_exporter
from inspectkit.models.inputs import WAFER_CODES
from inspectkit.stages.classify import ViewAverage


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.rot90(x, k, dims=(-2, -1))`` as flips and a transpose (ONNX has no rot90)."""
    k %= 4
    if k == 1:
        return x.flip(-1).transpose(-2, -1)
    if k == 2:
        return x.flip(-1).flip(-2)
    if k == 3:
        return x.flip(-2).transpose(-2, -1)
    return x


class ExportViewAverage(ViewAverage):
    """:class:`~inspectkit.stages.classify.ViewAverage` with its quarter-turns written as
    flips and transposes: the same views, exportable."""

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.views == "flip" or x.shape[-1] != x.shape[-2]:
            return super()._views(x)
        turns = [rot90(x, k) for k in range(4)]
        return turns + [t.flip(-1) for t in turns]


class InputEncoding(nn.Module):
    """:meth:`~inspectkit.models.inputs.InputSpec.encode` in exportable operations: wafer
    codes (rounded, clamped) to three one-hot channels, photos standardised."""

    def __init__(self, spec: Any) -> None:
        super().__init__()
        self.wafer = spec.kind == "wafer"
        self.standardize = spec.kind != "wafer" and spec.mean is not None
        if self.standardize:
            self.register_buffer("mean", spec.mean.detach().float().view(1, -1, 1, 1).clone())
            self.register_buffer("std", spec.std.detach().float().view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wafer:
            codes = x.round().clamp(0, WAFER_CODES - 1)
            return torch.stack([(codes[:, 0] == k).float() for k in range(WAFER_CODES)], 1)
        return (x - self.mean) / self.std if self.standardize else x


class ClassifierGraph(nn.Module):
    def __init__(self, net: nn.Module, spec: Any, tta: str, reject_below: float | None) -> None:
        super().__init__()
        self.net = ExportViewAverage(net, tta) if tta != "none" else net
        self.encode = InputEncoding(spec)
        self.reject_below = reject_below

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(self.encode(x))
        probs = torch.softmax(logits.double(), dim=1).float()
        top, idx = probs.max(dim=1)
        if self.reject_below is not None:
            idx = torch.where(top.double() >= self.reject_below, idx, torch.full_like(idx, -1))
        return probs, idx


def input_steps(stage: Any, what: str, ctx: ExportContext) -> list[dict[str, Any]]:
    """The runtime's steps before a classifier's graph, from its fitted input contract:
    resize (or, where the stage refuses other sizes, require) its size, then scale to
    float. Refuses a stage whose kind of input is not what the stages before it give."""
    stage.check_fitted()
    spec = stage.input_spec
    if ctx.kind != spec.kind:
        raise ExportError(
            f"the {what} was trained on {spec.kind!r} data but the stages before it give "
            f"{ctx.kind!r} data"
        )
    size = (
        {"op": "require_size", "size": list(spec.size)}
        if spec.size_policy == "refuse"
        else {"op": "resize", "size": list(spec.size), "mode": spec.resize_mode}
    )
    return [size, {"op": "to_float", "scale": 1 if spec.kind == "wafer" else 255}]


@register_stage_exporter("classifier")
def export_classifier(stage: Any, ctx: ExportContext) -> StageExport:
    steps = input_steps(stage, "Classifier", ctx)
    spec = stage.input_spec
    cfg = stage.config
    return StageExport(
        steps=steps,
        module=ClassifierGraph(stage.model.fused().eval(), spec, cfg.tta, cfg.reject_below).eval(),
        outputs=["probs", "class"],
        input_shape=(spec.data_channels, *spec.size),
        sidecar={
            "task": "classify",
            "classes": list(stage.classes),
            "reject_below": cfg.reject_below,
            "tta": cfg.tta,
        },
    )


__all__ = [
    "ClassifierGraph",
    "ExportViewAverage",
    "InputEncoding",
    "export_classifier",
    "input_steps",
    "rot90",
]
