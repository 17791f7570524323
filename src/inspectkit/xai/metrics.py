"""Scoring heatmaps against ground truth and against the model itself.

* :func:`energy_pointing_game` (EBPG, Wang et al. 2020 "Score-CAM"): the share of a
  heatmap's energy that falls inside the ground-truth boxes or mask (1 best).
* :func:`mask_l1`: mean absolute difference between the [0, 1] heatmap and the binary
  ground-truth mask (0 best, 1 worst).
* :func:`deletion_auc` / :func:`insertion_auc` (RISE, Petsiuk et al. 2018): the target
  probability while the most salient pixels are removed (lower is better) or inserted
  into a blurred canvas (higher is better), as area under the curve.

Ground truth is an ``N×H×W`` (or ``N×1×H×W``) mask tensor, or a list of box lists
(:class:`~inspectkit.records.Box`), which :func:`boxes_to_mask` rasterises.

Example:
    >>> import torch
    >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> m = torch.tensor([[[1, 0], [0, 0]]])
    >>> energy_pointing_game(h, m).tolist(), mask_l1(h, m).tolist()
    ([0.5], [0.25])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from inspectkit.errors import ConfigError, DataError
from inspectkit.records import Box, Explained, Report
from inspectkit.xai._layers import check_inputs, eval_mode, model_device, resolve_targets

GroundTruth = torch.Tensor | Sequence[Sequence[Box]]


def boxes_to_mask(boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """Rasterise boxes (pixel coordinates) into an ``H×W`` bool mask.

    A pixel ``(y, x)`` is inside a box when its area overlaps it: rows
    ``floor(ymin) .. ceil(ymax) - 1`` and columns ``floor(xmin) .. ceil(xmax) - 1``,
    clipped to the image.

    Raises:
        DataError: No boxes, or a box that lies entirely outside the image.

    Example:
        >>> from inspectkit.records import Box
        >>> boxes_to_mask([Box(label="d", xmin=1, ymin=0, xmax=3, ymax=1)], (2, 4)).int().tolist()
        [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    h, w = int(size[0]), int(size[1])
    if not boxes:
        raise DataError("no ground-truth boxes for this image; leave images without boxes out")
    mask = torch.zeros((h, w), dtype=torch.bool)
    for b in boxes:
        x0, y0 = max(0, math.floor(b.xmin)), max(0, math.floor(b.ymin))
        x1, y1 = min(w, math.ceil(b.xmax)), min(h, math.ceil(b.ymax))
        if x1 <= x0 or y1 <= y0:
            raise DataError(
                f"box {b.label!r} ({b.xmin}, {b.ymin}, {b.xmax}, {b.ymax}) lies outside the "
                f"{h}×{w} heatmap; boxes must be in the heatmap's pixel coordinates"
            )
        mask[y0:y1, x0:x1] = True
    return mask


def _heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    if not isinstance(heatmaps, torch.Tensor):
        raise DataError(f"heatmaps must be an N×H×W tensor, got {type(heatmaps).__name__}")
    if heatmaps.ndim == 4 and heatmaps.shape[1] == 1:
        heatmaps = heatmaps[:, 0]
    if heatmaps.ndim != 3:
        raise DataError(f"heatmaps must be N×H×W, got shape {tuple(heatmaps.shape)}")
    if heatmaps.shape[0] == 0:
        raise DataError("no heatmaps to score")
    h = heatmaps.detach().double().cpu()
    if not bool(torch.isfinite(h).all()):
        raise DataError("heatmaps contain NaN/inf values")
    return h


def ground_truth_masks(gt: GroundTruth, n: int, size: tuple[int, int]) -> torch.Tensor:
    """Ground truth as an ``N×H×W`` bool tensor matching ``n`` heatmaps of ``size``.

    Raises:
        DataError: Count or size mismatch, an empty mask, or an image without boxes.
    """
    if isinstance(gt, torch.Tensor):
        m = gt
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.ndim != 3:
            raise DataError(f"ground-truth masks must be N×H×W or N×1×H×W, got {tuple(gt.shape)}")
        if m.shape[0] != n:
            raise DataError(f"{m.shape[0]} ground-truth masks for {n} heatmaps")
        if tuple(m.shape[-2:]) != tuple(size):
            raise DataError(
                f"ground-truth masks are {tuple(m.shape[-2:])} but heatmaps {tuple(size)}; "
                "resize one to the other (nearest for masks) before scoring"
            )
        m = m.detach().cpu() > 0 if m.dtype != torch.bool else m.detach().cpu()
    else:
        boxes = list(gt)
        if len(boxes) != n:
            raise DataError(f"{len(boxes)} box lists for {n} heatmaps")
        m = torch.stack([boxes_to_mask(list(b), size) for b in boxes])
    empty = (~m.flatten(1).any(1)).nonzero().flatten()
    if empty.numel():
        raise DataError(
            f"ground truth of image(s) {empty[:5].tolist()} is empty; score only images with a "
            "defect region"
        )
    return m


def energy_pointing_game(heatmaps: torch.Tensor, gt: GroundTruth) -> torch.Tensor:
    """Energy-based pointing game per image: ``sum(h · gt) / sum(h)``.

    Args:
        heatmaps: ``N×H×W`` non-negative heatmaps.
        gt: ``N×H×W`` masks (non-zero = defect) or one list of boxes per image.

    Returns:
        ``N`` float64 values in [0, 1]; 0 for an all-zero heatmap.

    Raises:
        DataError: Negative heatmaps, size/count mismatch, empty ground truth.
    """
    h = _heatmaps(heatmaps)
    if float(h.min()) < 0:
        raise DataError("heatmaps must be non-negative for the energy pointing game")
    m = ground_truth_masks(gt, h.shape[0], (h.shape[1], h.shape[2])).double()
    total = h.flatten(1).sum(1)
    inside = (h * m).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))


def mask_l1(heatmaps: torch.Tensor, gt: GroundTruth) -> torch.Tensor:
    """Mean absolute difference between [0, 1] heatmaps and binary ground truth, per image.

    Raises:
        DataError: Heatmaps outside [0, 1] (normalise them first), size/count mismatch,
            empty ground truth.
    """
    h = _heatmaps(heatmaps)
    if float(h.min()) < 0 or float(h.max()) > 1 + 1e-6:
        raise DataError(
            f"heatmaps must lie in [0, 1] for mask L1 (got {float(h.min()):.3g}..{float(h.max()):.3g}); "
            "min-max normalise them first"
        )
    m = ground_truth_masks(gt, h.shape[0], (h.shape[1], h.shape[2])).double()
    return (h - m).abs().flatten(1).mean(1)


def _curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under curves sampled at equally spaced fractions of [0, 1]."""
    steps = curves.shape[1] - 1
    return (curves.sum(1) - (curves[:, 0] + curves[:, -1]) / 2) / steps


def _causal_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    heatmaps: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None,
    start: torch.Tensor,
    finish: torch.Tensor,
    steps: int,
    batch_size: int,
) -> torch.Tensor:
    """Target probability as the most salient pixels move from ``start`` to ``finish``."""
    n, _, h, w = inputs.shape
    hm = _heatmaps(heatmaps)
    if hm.shape[0] != n or tuple(hm.shape[1:]) != (h, w):
        raise DataError(
            f"heatmaps are {tuple(hm.shape)} but inputs {n}×{h}×{w}; they must match in number and size"
        )
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    device = model_device(model)
    hw = h * w
    curves = torch.empty((n, steps + 1), dtype=torch.float64)
    counts = torch.tensor([math.ceil(hw * s / steps) for s in range(steps + 1)])
    with eval_mode(model), torch.no_grad():
        if target is None:
            t = torch.cat(
                [
                    model(inputs[i : i + batch_size].to(device)).argmax(1).cpu()
                    for i in range(0, n, batch_size)
                ]
            )
        else:
            k = int(model(inputs[:1].to(device)).shape[1])
            t = resolve_targets(target, n, k)  # type: ignore[assignment]
        for i in range(n):
            order = torch.argsort(hm[i].flatten(), descending=True, stable=True)
            rank = torch.empty(hw, dtype=torch.long)
            rank[order] = torch.arange(hw)
            # variant s takes its `counts[s]` most salient pixels from `finish`, the rest from `start`
            take = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, h, w).to(device)
            x0, x1 = start[i].to(device), finish[i].to(device)
            probs = []
            for s in range(0, steps + 1, batch_size):
                batch = torch.where(take[s : s + batch_size], x1[None], x0[None])
                probs.append(model(batch).float().softmax(1)[:, int(t[i])].double().cpu())
            curves[i] = torch.cat(probs)
    return curves


def deletion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    heatmaps: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int = 50,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 32,
) -> torch.Tensor:
    """Deletion AUC per image (RISE): lower means the heatmap found what the model uses.

    Pixels are replaced by ``baseline`` (0 = the mean colour for mean/std-normalised
    inputs) in order of decreasing heat, ``steps`` equal steps from none to all, and the
    target's softmax probability is integrated over the deleted fraction.

    Args:
        model: Classifier ``N×C×H×W -> N×K`` logits.
        inputs: Preprocessed float inputs.
        heatmaps: ``N×H×W``, same size as the inputs.
        target: Class per input, one for all, or ``None`` = predicted on the intact input.
        steps: Number of deletion steps (``steps + 1`` forward passes per image).
        baseline: Value (or tensor broadcastable to the inputs) deleted pixels take.
        batch_size: Forward-pass batch size.

    Raises:
        DataError: Size mismatch, target out of range. ConfigError: bad steps.
    """
    x = check_inputs(inputs).float()
    base = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    return _curve_auc(_causal_curves(model, x, heatmaps, target, x, base, steps, batch_size))


def insertion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    heatmaps: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int = 50,
    baseline: float | torch.Tensor | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Insertion AUC per image (RISE): higher means the heatmap found what the model uses.

    Starting from ``baseline`` (default: the input blurred with a Gaussian of σ = 5 px,
    kernel 11 (smaller for tiny inputs), as in RISE), pixels of the input are inserted in order of decreasing heat.

    Args: as :func:`deletion_auc`.
    """
    x = check_inputs(inputs).float()
    if baseline is None:
        k = min(
            11, 2 * min(int(x.shape[2]), int(x.shape[3])) - 1
        )  # reflect padding needs k//2 < size
        base = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[5.0, 5.0]) if k > 1 else x.clone()
    else:
        base = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    return _curve_auc(_causal_curves(model, x, heatmaps, target, base, x, steps, batch_size))


def explanation_report(explained: Explained, *, title: str = "explanations") -> Report:
    """EBPG and mask L1 of an :class:`Explained` set against its masks (else its boxes).

    Synthetic samples and samples without ground truth (no boxes, empty mask) are left
    out and counted in the report.

    Raises:
        DataError: The set has neither masks nor boxes, or none of its samples has any.
    """
    data = explained.real()
    if data.masks is None and data.boxes is None:
        raise DataError("the explained set has no masks or boxes to score heatmaps against")
    keep: list[int] = []
    gts: list[torch.Tensor] = []
    size = (int(data.heatmaps.shape[1]), int(data.heatmaps.shape[2]))
    for i in range(len(data)):
        if data.masks is not None:
            m = data.masks[i]
            if tuple(m.shape[-2:]) != size:
                raise DataError(
                    f"mask of {data.samples[i].id!r} is {tuple(m.shape[-2:])}, heatmaps {size}"
                )
            m = m.reshape(size) > 0
            if bool(m.any()):
                keep.append(i)
                gts.append(m)
        elif data.boxes is not None and data.boxes[i]:
            keep.append(i)
            gts.append(boxes_to_mask(data.boxes[i], size))
    if not keep:
        raise DataError("no sample of the explained set has a non-empty defect region")
    h = data.heatmaps[torch.tensor(keep)]
    gt = torch.stack(gts)
    ebpg = energy_pointing_game(h, gt)
    l1 = mask_l1(h.clamp(0, 1), gt)
    details: dict[str, Any] = {"ids": [data.samples[i].id for i in keep]}
    return Report(
        title=title,
        metrics={"ebpg": float(ebpg.mean()), "mask_l1": float(l1.mean())},
        counts={"scored": len(keep), "without_ground_truth": len(data) - len(keep)},
        notes=[f"method: {data.method}"],
        details=details,
    )


__all__ = [
    "boxes_to_mask",
    "deletion_auc",
    "energy_pointing_game",
    "explanation_report",
    "ground_truth_masks",
    "insertion_auc",
    "mask_l1",
]
