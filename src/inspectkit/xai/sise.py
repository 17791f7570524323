"""SISE: Semantic Input Sampling for Explanation (Sattarzadeh et al., AAAI 2021).

Four phases, per image and target class:

1. **Layer selection** — the output at the end of each conv block: the last feature map
   the network produces at each spatial resolution before it downsamples (torchvision
   ResNets: ``layer1`` … ``layer4``; a plain CNN: the last conv/activation before each
   pooling). The deepest ``max_blocks`` are used, or the names given in ``layers``.
2. **Positive-gradient selection** — one forward/backward pass gives each feature map's
   spatially averaged gradient of the target logit; only maps with a positive average
   gradient are kept (the ``max_masks`` with the largest gradients per block).
3. **Attribution-based input sampling** — every kept map is upsampled to the input size
   and min-max normalised to [0, 1]; it masks the input (``x · mask``) and the masked
   inputs run through the model in batches. A block's map is the sum of the masks weighted
   by the target's softmax probability on each masked input.
4. **Block-wise fusion** — in cascade from shallow to deep: the fused map so far is
   normalised, the next (deeper) block's normalised map is added, and the sum is
   multiplied by that block's Otsu-binarised map, so each deeper block gates where the
   finer, shallower evidence may show. The result is min-max normalised. (This is the
   order of the public SISE re-implementations; "multiply the previous map by the gate,
   then add the deeper map" leaves the deeper block's background in the result and
   scored about half the energy-pointing-game on our tests.)

Cost: one forward/backward pass plus at most ``max_blocks × max_masks`` masked forward
passes per image (defaults 4 × 16 = 64), run on :func:`inference_copy` of the model
(per-image timings in BENCHMARKS.md, "Explanations"). Lower ``max_masks`` for a faster,
coarser map.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from inspectkit.xai import SISE
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    >>> SISE(net, max_masks=4).attribute(torch.rand(2, 1, 16, 16)).shape
    torch.Size([2, 16, 16])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from inspectkit.errors import ConfigError, DataError
from inspectkit.xai._layers import (
    Capture,
    check_inputs,
    eval_mode,
    find_blocks,
    model_device,
    normalize_maps,
    resolve_targets,
    upsample,
)
from inspectkit.xai.stage import Explain

log = logging.getLogger(__name__)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising between-class variance.

    Computed from a ``bins``-bin histogram (no scikit-image needed). Values strictly above
    the returned threshold form the foreground.

    Example:
        >>> v = torch.tensor([0.1, 0.12, 0.11, 0.9, 0.92, 0.88])
        >>> (v > otsu_threshold(v)).tolist()
        [False, False, False, True, True, True]
    """
    v = values.detach().flatten().float().clamp(0, 1)
    if v.numel() == 0:
        raise DataError("cannot threshold an empty map")
    hist = torch.histc(v, bins=bins, min=0.0, max=1.0).double()
    p = hist / hist.sum()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w1 = p.cumsum(0)
    w2 = 1 - w1
    m_cum = (p * centers).cumsum(0)
    mu = m_cum[-1]
    with torch.no_grad():
        m1 = m_cum / w1
        m2 = (mu - m_cum) / w2
        between = w1 * w2 * (m1 - m2) ** 2
    between = torch.nan_to_num(between, nan=0.0, posinf=0.0, neginf=0.0)
    between[(w1 <= 0) | (w2 <= 1e-12)] = 0
    idx = int(between.argmax())
    return float(edges[idx + 1])


def fuse_blocks(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cascade fusion of block maps ``H×W`` ordered shallow → deep (SISE phase 4).

    ``F = norm(V_1)``; for each deeper block ``F = (norm(F) + norm(V_l)) · [norm(V_l) > otsu]``
    (Otsu's threshold of ``norm(V_l)``); returns ``norm(F)``. Blocks whose map is flat (no
    evidence) are skipped.
    """
    kept = [m for m in maps if float(m.max() - m.min()) > 0]
    if not kept:
        return torch.zeros_like(maps[0])
    fused = normalize_maps(kept[0][None])[0]
    for m in kept[1:]:
        vn = normalize_maps(m[None])[0]
        gate = vn > otsu_threshold(vn)
        fused = (normalize_maps(fused[None])[0] + vn) * gate
    return normalize_maps(fused[None])[0]


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` for SISE's masked forward passes (no gradients).

    The copy has BatchNorm folded into the convolutions where the model offers it (the
    ``fused()`` of :class:`~inspectkit.models.ClassifierNet`) and its weights in
    channels-last memory format, which oneDNN/cuDNN convolutions run faster (figures in
    BENCHMARKS.md); the logits agree with the model's to
    float rounding (:func:`compute_sise` checks that on its first batch and falls back to
    the model when they do not). A model that cannot be copied is returned as it is. The
    caller's model is never modified.
    """
    try:
        fused = getattr(model, "fused", None)
        fast = fused() if callable(fused) else copy.deepcopy(model)
        if not isinstance(fast, nn.Module):
            return model
        fast.eval()
        for p in fast.parameters():
            p.requires_grad_(False)
        return fast.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
    except Exception as exc:  # any copy failure: fall back to the model itself
        log.debug("SISE: using the model itself for masked passes (%s)", exc)
        return model


def compute_sise(
    model: nn.Module,
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    layers: Sequence[str] | None = None,
    max_masks: int = 16,
    max_blocks: int = 4,
    batch_size: int = 32,
) -> torch.Tensor:
    """SISE heatmaps of ``model`` for ``inputs``, ``N×H×W`` in [0, 1] on the CPU.

    Args:
        model: Any CNN classifier ``N×C×H×W -> N×K`` logits (eval mode while running).
        inputs: Preprocessed float inputs ``N×C×H×W``.
        target: Class per input, one class for all, or ``None`` for the predicted class.
        layers: Module names of the block ends; ``None`` finds them (see module docs).
        max_masks: Most masks (masked forward passes) per block and image.
        max_blocks: How many of the deepest blocks to use when ``layers`` is ``None``.
        batch_size: Images per gradient pass and masked inputs per forward pass.

    Raises:
        ConfigError: Bad knobs, unknown layer names, or a model without conv blocks.
        DataError: Bad inputs or a target class out of range.
    """
    inputs = check_inputs(inputs)
    for knob, value in (
        ("max_masks", max_masks),
        ("max_blocks", max_blocks),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{knob} must be at least 1, got {value}")
    device = model_device(model)
    n, size = inputs.shape[0], (int(inputs.shape[2]), int(inputs.shape[3]))
    out = torch.empty((n, *size), dtype=torch.float32)
    with eval_mode(model):
        blocks = find_blocks(model, inputs[:1].to(device), layers, max_blocks)
        log.debug("SISE blocks: %s", [(b.name, b.size) for b in blocks])
        scorer = inference_copy(model)
        capture = Capture(model, blocks)
        try:
            targets: torch.Tensor | None = None
            for start in range(0, n, batch_size):
                x = inputs[start : start + batch_size].to(device)
                capture.reset()
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    logits = model(xg)
                    if target is None:
                        t = logits.detach().argmax(1)
                    else:
                        if targets is None:
                            targets = resolve_targets(target, n, int(logits.shape[1]))
                            assert targets is not None
                        t = targets[start : start + x.shape[0]].to(device)
                    feats = capture.outputs
                    if any(f is None for f in feats):
                        raise ConfigError(
                            "a selected SISE layer was not reached in the forward pass"
                        )
                    score = logits.gather(1, t[:, None]).sum()
                    grads = torch.autograd.grad(score, feats, allow_unused=True)  # type: ignore[arg-type]
                if start == 0 and scorer is not model:
                    scorer = _checked_scorer(model, scorer, x, logits.detach())
                for i in range(x.shape[0]):
                    block_maps = _block_maps(
                        scorer,
                        x[i],
                        int(t[i]),
                        [f[i].detach() for f in feats],  # type: ignore[index]
                        [g[i] if g is not None else None for g in grads],
                        size,
                        max_masks,
                        batch_size,
                    )
                    out[start + i] = fuse_blocks(block_maps).cpu()
        finally:
            capture.remove()
    return out


def _checked_scorer(
    model: nn.Module, scorer: nn.Module, x: torch.Tensor, logits: torch.Tensor
) -> nn.Module:
    """``scorer`` if its logits on ``x`` match the model's, else the model itself."""
    with torch.inference_mode():
        fast = scorer(x.contiguous(memory_format=torch.channels_last)).float()
    ref = logits.float()
    tol = 1e-3 * (1.0 + float(ref.abs().max()))
    if fast.shape == ref.shape and float((fast - ref).abs().max()) <= tol:
        return scorer
    log.warning(
        "SISE: the inference copy of %s disagrees with the model; using the model itself",
        type(model).__name__,
    )
    return model


def _block_maps(
    model: nn.Module,  # the scorer: inference_copy() of the explained model
    x: torch.Tensor,
    target: int,
    feats: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    size: tuple[int, int],
    max_masks: int,
    batch_size: int,
) -> list[torch.Tensor]:
    """Phases 2-3 for one image: one visualisation map per block."""
    masks_per_block: list[torch.Tensor] = []
    for feat, grad in zip(feats, grads):
        if grad is None:
            masks_per_block.append(feat.new_zeros((0, *size)))
            continue
        avg = grad.mean((1, 2))
        flat = feat.flatten(1)
        varying = (flat.max(1).values - flat.min(1).values) > 0
        keep = torch.nonzero((avg > 0) & varying).flatten()
        if keep.numel() > max_masks:
            keep = keep[avg[keep].topk(max_masks).indices]
        if keep.numel() == 0:
            masks_per_block.append(feat.new_zeros((0, *size)))
            continue
        m = upsample(feat[keep][:, None].float(), size)[:, 0]
        masks_per_block.append(normalize_maps(m))
    all_masks = torch.cat(masks_per_block)
    scores = torch.empty(all_masks.shape[0], device=x.device)
    with torch.inference_mode():
        for s in range(0, all_masks.shape[0], batch_size):
            m = all_masks[s : s + batch_size]
            masked = (x[None] * m[:, None]).contiguous(memory_format=torch.channels_last)
            probs = model(masked).float().softmax(1)
            scores[s : s + m.shape[0]] = probs[:, target]
    maps: list[torch.Tensor] = []
    pos = 0
    for m in masks_per_block:
        k = m.shape[0]
        if k == 0:
            maps.append(torch.zeros(size, device=x.device))
        else:
            maps.append(torch.einsum("k,khw->hw", scores[pos : pos + k], m))
        pos += k
    return maps


class SISE(Explain):
    """SISE: an attribution method on a model, and a pipeline stage after a classifier.

    ``SISE(model).attribute(inputs, target)`` returns ``N×H×W`` heatmaps; ``SISE()``
    without a model is an :class:`Explain` stage.

    Args:
        model: CNN to explain directly, or ``None`` inside a pipeline.
        blocks: Module names of the block ends (``None`` = automatic).
        max_masks: Most masked forward passes per block and image (bounds the cost).
        max_blocks: Deepest blocks used when ``blocks`` is ``None``.
        target: ``"predicted"`` or a fixed class index (stage use).
        batch_size: Images per gradient pass / masked inputs per forward pass.

    Example:
        >>> from inspectkit.xai import SISE
        >>> SISE(max_masks=16).config.max_masks
        16
    """

    name = "sise"

    class Config(Explain.Config):
        method: Literal["sise"] = "sise"
        blocks: list[str] | None = None
        max_masks: int = Field(16, ge=1, le=4096)
        max_blocks: int = Field(4, ge=1, le=16)

    config: Config

    def attribute(
        self,
        inputs: torch.Tensor,
        target: int | Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SISE heatmaps ``N×H×W`` in [0, 1] for preprocessed float ``inputs``.

        Args:
            inputs: ``N×C×H×W`` float tensor as the model takes it.
            target: Class index per input, one for all, or ``None`` = predicted class.
        """
        cfg = self.config
        return compute_sise(
            self.model,
            inputs,
            target,
            layers=cfg.blocks,
            max_masks=cfg.max_masks,
            max_blocks=cfg.max_blocks,
            batch_size=cfg.batch_size,
        )


__all__ = ["SISE", "compute_sise", "fuse_blocks", "inference_copy", "otsu_threshold"]
