"""Self-supervised detector (CutPaste): learn features from good images only.

Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization",
CVPR 2021. A backbone (random init, or a local weights file) learns to tell three kinds
of crops apart: unchanged good crops, crops with a patch cut from elsewhere and pasted
back (CutPaste), and crops with a thin rotated scar. The synthetic defects are local
irregularities, so the features learned to spot them also respond to real ones, without
any pretrained weights and without a defect sample.

Scoring uses a density of good features from the learned backbone:

* ``head="gaussian"`` (default; the paper fits a Gaussian to the learned embeddings): a
  Gaussian per feature-map position, i.e. :class:`PaDiM` on the learned features, so the
  Mahalanobis distance of each patch is its anomaly score. One Gaussian shared by all
  positions was tried first and flagged image borders (zero padding makes border patches
  rare), hence one per position;
* ``head="patchcore"``: the learned backbone feeds a :class:`PatchCore` memory bank.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.padim import PaDiM
from inspectkit.anomaly.patchcore import PatchCore
from inspectkit.anomaly.registry import register_detector
from inspectkit.errors import ConfigError
from inspectkit.models.features import FeatureExtractor
from inspectkit.runtime import progress_bar

log = logging.getLogger(__name__)


def _rand(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def cutpaste(x: torch.Tensor, gen: torch.Generator, *, scar: bool = False) -> torch.Tensor:
    """A copy of the ``C×H×W`` image ``x`` (float, [0, 1]) with a synthetic local defect.

    ``scar=False``: a rectangle (2-15 % of the area, aspect 0.3-3.3) is cut at one place,
    its brightness jittered, and pasted at another. ``scar=True``: a thin strip (2-16 px
    wide, 10-25 % of the side long), rotated by up to ±45°, pasted the same way.

    Example:
        >>> img = torch.rand(1, 64, 64)
        >>> bool((cutpaste(img, torch.Generator().manual_seed(0)) != img).any())
        True
    """
    _, h, w = x.shape
    if scar:
        pw = max(1, min(w - 1, _randint(gen, 2, max(2, w // 16))))
        ph = max(2, min(h - 1, _randint(gen, max(2, h // 10), max(2, h // 4))))
    else:
        area = _rand(gen, 0.02, 0.15) * h * w
        ratio = math.exp(_rand(gen, math.log(0.3), math.log(1 / 0.3)))
        ph = max(2, min(h - 1, round(math.sqrt(area * ratio))))
        pw = max(2, min(w - 1, round(math.sqrt(area / ratio))))
    sy, sx = _randint(gen, 0, h - ph), _randint(gen, 0, w - pw)
    patch = x[:, sy : sy + ph, sx : sx + pw].clone()
    patch = (patch * _rand(gen, 0.7, 1.3) + _rand(gen, -0.15, 0.15)).clamp(0, 1)
    mask = torch.ones(1, ph, pw, dtype=x.dtype)
    if scar:
        angle = _rand(gen, -45, 45)
        side = math.ceil(math.hypot(ph, pw))
        side = min(side, h, w)
        canvas = torch.zeros(x.shape[0] + 1, side, side, dtype=x.dtype)
        oy, ox = (side - min(ph, side)) // 2, (side - min(pw, side)) // 2
        canvas[:-1, oy : oy + min(ph, side), ox : ox + min(pw, side)] = patch[:, :side, :side]
        canvas[-1:, oy : oy + min(ph, side), ox : ox + min(pw, side)] = 1
        canvas = TF.rotate(canvas, angle)
        patch, mask = canvas[:-1], (canvas[-1:] > 0.5).to(x.dtype)
        ph = pw = side
    ty, tx = _randint(gen, 0, h - ph), _randint(gen, 0, w - pw)
    out = x.clone()
    region = out[:, ty : ty + ph, tx : tx + pw]
    out[:, ty : ty + ph, tx : tx + pw] = region * (1 - mask) + patch * mask
    return out


@register_detector
class SelfSupervised(AnomalyModel):
    """CutPaste-trained backbone + Gaussian (or PatchCore) density on its patch features.

    Args:
        backbone: torchvision / registered name, or any ``nn.Module`` (trained in place).
        layers: Layers whose patch features are scored and pooled for the training head.
        weights: Local state-dict file to start from; ``None`` = seeded random init.
        crop_size: Side of the random training crops (smaller = faster training).
        steps: Optimiser steps of the 3-way (good / cutpaste / scar) classification.
        lr: SGD learning rate (cosine schedule, momentum 0.9).
        head: ``"gaussian"`` or ``"patchcore"`` (see module docs).
        coreset_ratio: Coreset ratio of the PatchCore head.
        n_features: Channels (random subset) of the Gaussian head.
        settings, **shared: The settings every detector has (``seed`` of init, crops
            and synthetic defects; ``batch_size`` of scoring and of the crops per kind;
            ``sigma``, ``device``, ``progress``; ``feature_dtype`` of the heads'
            scoring passes): see :class:`~inspectkit.anomaly.base.DetectorSettings`.

    Example:
        >>> import torch
        >>> ss = SelfSupervised(steps=2, crop_size=32, batch_size=4, progress=False)
        >>> ss = ss.fit(torch.rand(6, 1, 64, 64))
        >>> ss.score(torch.rand(1, 1, 64, 64))[1].shape
        torch.Size([1, 64, 64])
    """

    name = "selfsupervised"
    uses_pretrained = False  # trains its own features from the good images

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str | os.PathLike[str] | None = None,
        *,
        crop_size: int = 64,
        steps: int = 300,
        lr: float = 0.03,
        head: str = "gaussian",
        coreset_ratio: float = 0.1,
        n_features: int | None = 100,
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        if head not in ("gaussian", "patchcore"):
            raise ConfigError(f"head must be 'gaussian' or 'patchcore', got {head!r}")
        if crop_size < 16:
            raise ConfigError(f"crop_size must be at least 16, got {crop_size}")
        if steps < 0:
            raise ConfigError(f"steps must be non-negative, got {steps}")
        self.extractor = FeatureExtractor(backbone, layers, weights, seed=self.seed)
        dim = sum(self.extractor.out_channels().values())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.classifier = nn.Linear(dim, 3)
        self.crop_size = int(crop_size)
        self.steps = int(steps)
        self.lr = float(lr)
        self.head = head
        self.patchcore = PatchCore(
            extractor=self.extractor, coreset_ratio=coreset_ratio, settings=self.settings
        )
        self.gaussian = PaDiM(
            extractor=self.extractor, n_features=n_features, settings=self.settings
        )

    # ------------------------------------------------------------------ training
    def _crops(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        c = min(self.crop_size, h, w)
        idx = torch.randint(n, (self.batch_size,), generator=gen)
        out = []
        for i in idx.tolist():
            y, x = _randint(gen, 0, h - c), _randint(gen, 0, w - c)
            crop = images[i, :, y : y + c, x : x + c]
            if bool(torch.rand(1, generator=gen) < 0.5):
                crop = crop.flip(-1)
            out.append(crop)
        batch = torch.stack(out)
        return batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()

    def _train(self, images: torch.Tensor) -> None:
        if self.steps == 0:
            return
        gen = torch.Generator().manual_seed(self.seed)
        params = list(self.extractor.parameters()) + list(self.classifier.parameters())
        opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=3e-5)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        self.extractor.train()
        self.classifier.train()
        bar = progress_bar(enabled=self.show_progress, total=self.steps, desc="CutPaste training")
        labels = torch.arange(3).repeat_interleave(self.batch_size).to(self.device)
        for _ in range(self.steps):
            good = self._crops(images, gen)
            pasted = torch.stack([cutpaste(t, gen) for t in good])
            scarred = torch.stack([cutpaste(t, gen, scar=True) for t in good])
            x = torch.cat([good, pasted, scarred]).to(self.device)
            feats = self.extractor(x)
            pooled = torch.cat([f.mean((2, 3)) for f in feats.values()], 1)
            loss = F.cross_entropy(self.classifier(pooled), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=float(loss.detach()))
        bar.close()
        self.extractor.eval()
        self.classifier.eval()

    def _fit(self, images: torch.Tensor) -> None:
        self._train(images)
        self.eval()
        head = self.patchcore if self.head == "patchcore" else self.gaussian
        head.fit(images)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.patchcore if self.head == "patchcore" else self.gaussian
        return head._score_batch(x)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        self.patchcore._search_cache = None
        fitted = bool(self.fitted_flag)
        self.patchcore.fitted_flag.fill_(fitted and self.head == "patchcore")
        self.gaussian.fitted_flag.fill_(fitted and self.head == "gaussian")


__all__ = ["SelfSupervised", "cutpaste"]
