"""A convolutional autoencoder: reconstruction error as the anomaly map.

The network squeezes the image through a narrow bottleneck (``H/16 × W/16 ×
latent_channels``) and is trained on good images only; regions it cannot rebuild are
suspicious. Maps are ``1 − SSIM`` (structure, default) or squared error (``"l2"``)
between image and reconstruction, Gaussian-smoothed; the image score is the map's
maximum. Known weakness (reported from industry, and visible on textured parts): a
decoder that is too good rebuilds defects as well, one that is too poor flags every
fine texture, so the bottleneck size matters.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.registry import register_detector
from inspectkit.errors import ConfigError, DataError
from inspectkit.runtime import progress_bar

log = logging.getLogger(__name__)


def _gauss_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004) of two ``N×C×H×W`` batches in [0, 1], averaged over C.

    Example:
        >>> x = torch.rand(1, 1, 32, 32)
        >>> bool(ssim_map(x, x).min() > 0.999)
        True
    """
    c = x.shape[1]
    w = _gauss_window(window, sigma, c, x.device)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), w, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 4, stride=2, padding=1),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@register_detector
class AutoEncoder(AnomalyModel):
    """Convolutional autoencoder detector.

    Args:
        in_channels: Image channels (1 gray, 3 colour).
        base_channels: Width of the first encoder block (doubles twice).
        latent_channels: Channels of the ``H/16 × W/16`` bottleneck.
        epochs: Training passes over the good images.
        lr: Adam learning rate.
        loss: ``"l2"`` or ``"ssim"`` (L2 + (1 − SSIM)) training loss.
        map: ``"ssim"`` (1 − SSIM) or ``"l2"`` (squared error) anomaly map.
        settings, **shared: The settings every detector has (``seed`` of init and batch
            order, ``sigma``, ``batch_size`` (default 16 here), ``device``,
            ``progress``): see :class:`~inspectkit.anomaly.base.DetectorSettings`.
            ``feature_dtype`` does not apply (no frozen backbone).

    Example:
        >>> import torch
        >>> ae = AutoEncoder(epochs=1, progress=False).fit(torch.rand(4, 1, 32, 32))
        >>> ae.score(torch.rand(2, 1, 32, 32))[0].shape
        torch.Size([2])
    """

    name = "autoencoder"
    uses_pretrained = False  # trains its own features from the good images
    default_settings = DetectorSettings(batch_size=16)

    def __init__(
        self,
        in_channels: int = 1,
        *,
        base_channels: int = 32,
        latent_channels: int = 32,
        epochs: int = 30,
        lr: float = 2e-3,
        loss: str = "l2",
        map: str = "ssim",
        settings: DetectorSettings | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(settings, **shared)
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels}")
        if loss not in ("l2", "ssim") or map not in ("l2", "ssim"):
            raise ConfigError(f"loss and map must be 'l2' or 'ssim', got {loss!r}, {map!r}")
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        self.in_channels = in_channels
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.loss_kind = loss
        self.map_kind = map
        b = base_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = nn.Sequential(
                _block(in_channels, b),
                _block(b, 2 * b),
                _block(2 * b, 4 * b),
                _block(4 * b, 4 * b),
                nn.Conv2d(4 * b, latent_channels, 1),
            )
            self.decoder = nn.Sequential(
                nn.Conv2d(latent_channels, 4 * b, 1),
                nn.ReLU(inplace=True),
                _up(4 * b, 4 * b),
                _up(4 * b, 2 * b),
                _up(2 * b, b),
                nn.ConvTranspose2d(b, in_channels, 4, stride=2, padding=1),
                nn.Sigmoid(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def _check(self, images: torch.Tensor) -> None:
        if images.shape[1] != self.in_channels:
            raise DataError(
                f"AutoEncoder was built for {self.in_channels}-channel images, got {images.shape[1]}"
            )
        if images.shape[-1] % 16 or images.shape[-2] % 16:
            raise DataError(
                f"AutoEncoder needs sides divisible by 16, got {tuple(images.shape[-2:])}; "
                "resize to e.g. 128 or 256"
            )

    def _fit(self, images: torch.Tensor) -> None:
        self._check(images)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
        n = images.shape[0]
        self.train()
        bar = progress_bar(enabled=self.show_progress, total=self.epochs, desc="AutoEncoder fit")
        for _epoch in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(0, n, self.batch_size):
                idx = order[s : s + self.batch_size]
                if idx.numel() < 2 and n >= 2:
                    continue  # BatchNorm needs two samples
                x = next(iter(self.batches(images[idx])))
                if bool(torch.rand(1, generator=gen) < 0.5):
                    x = x.flip(-1)
                rec = self(x)
                loss = F.mse_loss(rec, x)
                if self.loss_kind == "ssim":
                    loss = loss + (1 - ssim_map(rec, x)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=total / n)
        bar.close()
        self.eval()

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        rec = self(x)
        err = 1 - ssim_map(rec, x) if self.map_kind == "ssim" else ((rec - x) ** 2).mean(1)
        maps = self.upsample_smooth(err, tuple(x.shape[-2:]))
        return maps.flatten(1).amax(1), maps


__all__ = ["AutoEncoder", "ssim_map"]
