"""PaDiM: a multivariate Gaussian per feature-map position, Mahalanobis scoring.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021. Features of three backbone layers are brought to the first
layer's grid and concatenated; a fixed random subset of ``n_features`` channels is kept;
each position gets its own mean and covariance (+ ``eps``·I). The statistics are
accumulated batch by batch (float32 sums of outer products of the features minus the
first batch's mean, float64 sums of the features), so memory does not grow with the
number of training images; covariances are formed and inverted in float64, one chunk of
positions at a time, and kept as float32 inverses.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import register_detector
from inspectkit.errors import ConfigError, DataError
from inspectkit.models.features import FeatureExtractor
from inspectkit.runtime import torch_threads

log = logging.getLogger(__name__)


@register_detector
class PaDiM(AnomalyModel):
    """PaDiM detector as a plain torch module.

    Args:
        backbone: torchvision / registered name, or any ``nn.Module``.
        layers: Layers whose features are concatenated (first one sets the grid).
        weights: Local state-dict file for the backbone; ``None`` = seeded random init.
        n_features: Channels kept by the random subset (paper: 100 for ResNet-18).
        eps: Regularisation added to every covariance diagonal.
        extractor: A ready :class:`FeatureExtractor` (overrides backbone/layers/weights).
        settings, **shared: The settings every detector has (``seed`` of backbone init
            and channel subset, ``sigma``, ``batch_size``, ``device``, ``progress``,
            ``feature_dtype``): see :class:`~inspectkit.anomaly.base.DetectorSettings`.

    Example:
        >>> import torch
        >>> pd = PaDiM(n_features=20, progress=False).fit(torch.rand(6, 1, 64, 64))
        >>> pd.score(torch.rand(1, 1, 64, 64))[1].shape
        torch.Size([1, 64, 64])
    """

    name = "padim"

    #: positions whose covariance sums / inverses are computed at once (bounds temporaries)
    POSITION_CHUNK = 512
    #: positions whose Mahalanobis distances are computed at once when scoring
    SCORE_CHUNK = 256

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        weights: str | os.PathLike[str] | None = None,
        *,
        n_features: int | None = 100,
        eps: float = 0.01,
        extractor: FeatureExtractor | None = None,
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        if eps <= 0:
            raise ConfigError(f"eps must be positive, got {eps}")
        seed = self.seed
        self.extractor = extractor or FeatureExtractor(backbone, layers, weights, seed=seed)
        total = sum(self.extractor.out_channels().values())
        d = total if not n_features else min(int(n_features), total)
        if d < 1:
            raise ConfigError(f"n_features must be positive, got {n_features}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=g)[:d].sort().values
        self.register_buffer("channel_index", idx)
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(0, 0))
        self.register_buffer("inv_cov", torch.zeros(0, 0, 0))

    def _layer_index(self, channels: list[int]) -> list[torch.Tensor]:
        """``channel_index`` split per layer (local indices), cached."""
        key = (tuple(channels), self.channel_index.device, self.channel_index.data_ptr())
        cached = self.__dict__.get("_split_index")
        if cached is None or cached[0] != key:
            bounds = torch.tensor([0, *channels]).cumsum(0).tolist()
            idx = self.channel_index
            parts = [idx[(idx >= lo) & (idx < hi)] - lo for lo, hi in itertools.pairwise(bounds)]
            cached = (key, parts)
            self.__dict__["_split_index"] = cached
        return cached[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Selected features ``N×d×h×w`` on the first layer's grid.

        Channels are picked per layer before the deeper layers are brought to the first
        layer's grid (nearest neighbour), so only the ``d`` kept channels are upsampled.
        """
        feats = list(self.features(x).values())
        size = feats[0].shape[-2:]
        parts = self._layer_index([f.shape[1] for f in feats])
        out = []
        for f, idx in zip(feats, parts):
            if idx.numel() == 0:
                continue
            f = f if idx.numel() == f.shape[1] else f.index_select(1, idx)
            out.append(f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="nearest"))
        return torch.cat(out, 1)

    def _reset_own_caches(self) -> None:
        self.__dict__.pop("_split_index", None)

    @torch.no_grad()
    def _fit(self, images: torch.Tensor) -> None:
        self.eval()
        n = 0
        shift: torch.Tensor | None = None
        s1: torch.Tensor | None = None
        s2: torch.Tensor | None = None
        for x in self.batches(images, desc="PaDiM fit"):
            e = self.embed(x)  # B×d×h×w
            b, d, h, w = e.shape
            e = e.permute(2, 3, 0, 1).reshape(h * w, b, d)  # P×B×d
            if shift is None:
                # sums of features minus the first batch's mean per position: small
                # numbers, so float32 sums of their outer products lose next to nothing
                shift = e.mean(1, keepdim=True)
                s1 = torch.zeros(h * w, d, dtype=torch.float64, device=e.device)
                s2 = torch.zeros(h * w, d, d, dtype=torch.float32, device=e.device)
            assert s1 is not None and s2 is not None
            e = e - shift
            s1 += e.sum(1).double()
            s2.baddbmm_(e.transpose(1, 2), e)
            n += b
        assert shift is not None and s1 is not None and s2 is not None
        if n < 2:
            raise DataError("PaDiM needs at least 2 good images to estimate covariances")
        offset = s1 / n  # mean minus shift, per position
        self.mean = (shift.squeeze(1).double() + offset).float()
        self.inv_cov = self._inverse_covariances(s2, offset, n)

    def _inverse_covariances(self, s2: torch.Tensor, mean: torch.Tensor, n: int) -> torch.Tensor:
        """Float32 inverses of the per-position covariances, written over ``s2``.

        ``s2`` holds the float32 sums of outer products of the (shifted) features and
        ``mean`` their float64 mean. Each covariance is formed and inverted in float64:
        it is symmetric positive definite (``eps·I`` added), so it is inverted through a
        Cholesky factor, which is stable where batched LU (``linalg.inv``) failed on
        thousands of 200×200 matrices; a position whose factorisation fails falls back
        to the pseudo-inverse. Positions go ``POSITION_CHUNK`` at a time, so float64
        copies exist for one chunk only and the inverses take the sums' memory.
        """
        p = s2.shape[0]
        for start in range(0, p, self.POSITION_CHUNK):
            sl = slice(start, start + self.POSITION_CHUNK)
            m = mean[sl].unsqueeze(2)
            cov = torch.baddbmm(s2[sl].double(), m, m.transpose(1, 2), alpha=-n)
            cov.div_(n - 1).diagonal(dim1=1, dim2=2).add_(self.eps)
            # one thread on CPU: MKL's batched factorisation with two threads ran 13× slower
            # than with one as soon as anything else loaded the box (BENCHMARKS.md, s. 8)
            with torch_threads(1 if cov.device.type == "cpu" else None):
                chol, info = torch.linalg.cholesky_ex(cov)
                part = torch.cholesky_inverse(chol)
                bad = info != 0
                if bool(bad.any()):
                    part[bad] = torch.linalg.pinv(cov[bad], hermitian=True)
            s2[sl] = part
        return s2

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        b, d, h, w = e.shape
        if h * w != self.mean.shape[0]:
            raise DataError(
                f"feature grid {h}×{w} differs from the one PaDiM was fitted on; "
                "score images of the training size"
            )
        delta = e.permute(2, 3, 0, 1).reshape(h * w, b, d) - self.mean.unsqueeze(1)  # P×B×d
        if torch.jit.is_tracing() or delta.requires_grad:  # the export: one product
            m = torch.bmm(delta, self.inv_cov).mul_(delta).sum(2)
        else:
            # SCORE_CHUNK positions at a time into one reused buffer: the same products
            # as one bmm over all positions, without a fresh P×B×d result for the
            # kernel to fault in (a quarter of PaDiM's scoring time on 2 cores)
            m = delta.new_empty(h * w, b)
            buf = delta.new_empty(min(self.SCORE_CHUNK, h * w), b, d)
            for start in range(0, h * w, self.SCORE_CHUNK):
                sl = slice(start, start + self.SCORE_CHUNK)
                dl = delta[sl]
                part = torch.bmm(dl, self.inv_cov[sl], out=buf[: len(dl)])
                torch.sum(part.mul_(dl), 2, out=m[sl])
        m = m.clamp_min_(0).sqrt_()  # P×B
        patch_maps = m.T.reshape(b, h, w)
        maps = self.upsample_smooth(patch_maps, tuple(x.shape[-2:]))
        return maps.flatten(1).amax(1), maps


__all__ = ["PaDiM"]
