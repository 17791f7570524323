"""Small generative models for synthetic inspection samples: a convolutional VAE per class.

Why a VAE (and not a GAN or a diffusion model): rare classes hold tens of samples
(WM-811K Near-full: 15 in a 10 % split), and the budget is a minute of two CPU cores per
class. A VAE trains stably on tiny sets with a plain likelihood loss (no adversarial
balance to tune, no mode collapse to watch), samples in one decoder pass, and its
likelihood matches wafer maps naturally: each die is a Bernoulli fail/pass variable. A
diffusion model would need hundreds of denoising passes per sample and far more data.

Wafer maps are modelled as two binary masks: the wafer outline is given (taken from a
real map of the class, so every generated map has a valid outline by construction) and
the decoder predicts, for each position inside it, the probability that the die fails.
The decoder sees the outline as an extra input channel, so edge patterns (Edge-Ring,
Edge-Loc) follow the actual wafer edge. Fail dies are then drawn per die (Bernoulli),
which keeps the speckle of real maps instead of the blur of a mean image. Photos (gray or
RGB) are modelled with a Bernoulli likelihood on intensities in [0, 1] and decoded to the
mean image.

Example:
    >>> import torch
    >>> from inspectkit.models.generators import ConvVAE
    >>> vae = ConvVAE(in_channels=3, out_channels=1, size=32, condition_channels=1)
    >>> logits, mu, logvar = vae(torch.zeros(2, 3, 32, 32), torch.ones(2, 1, 32, 32))
    >>> tuple(logits.shape), tuple(mu.shape)
    ((2, 1, 32, 32), (2, 16))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.errors import ConfigError, DataError
from inspectkit.runtime import progress_bar

log = logging.getLogger(__name__)


class ConvVAE(nn.Module):
    """A convolutional VAE for ``size×size`` inputs (``size`` a multiple of 8).

    Encoder: three stride-2 convolutions and two linear heads (mean, log-variance).
    Decoder: a linear layer to ``size/8`` resolution, three transposed convolutions back
    to ``size``, then — after concatenating ``condition_channels`` spatial conditions
    such as the wafer outline — two 3×3 convolutions to ``out_channels`` logits.

    Args:
        in_channels: Channels the encoder reads (3 for one-hot wafer codes).
        out_channels: Logit channels the decoder writes.
        size: Side of the square working resolution.
        latent: Latent dimension.
        width: Channels of the first convolution (doubling twice).
        condition_channels: Spatial conditions given to the decoder head.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        latent: int = 16,
        width: int = 32,
        condition_channels: int = 0,
    ) -> None:
        super().__init__()
        if size % 8 or size < 8:
            raise ConfigError(f"generator size must be a multiple of 8 (≥ 8), got {size}")
        self.size = size
        self.latent = latent
        self.condition_channels = condition_channels
        w = width
        self._base = size // 8
        flat = 4 * w * self._base * self._base
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Conv2d(w + condition_channels, w, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(w, out_channels, 3, 1, 1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x)``."""
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10, 10)

    def decode(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for latent codes ``z`` (and spatial ``condition`` when configured)."""
        h = self.expand(z).view(z.shape[0], -1, self._base, self._base)
        h = self.decoder(h)
        if self.condition_channels:
            if condition is None:
                raise DataError("this generator needs its spatial condition (the wafer outline)")
            h = torch.cat([h, condition], 1)
        return self.head(h)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction logits, mean and log-variance (reparameterised with ``noise``)."""
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if noise is None else noise
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, condition), mu, logvar


@dataclass(frozen=True)
class VAESettings:
    """Training settings of one class's VAE (see ``Generate``'s config for meanings)."""

    size: int = 32
    latent: int = 16
    width: int = 16
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    beta: float = 1.0
    warmup: float = 0.3


def wafer_input(maps: torch.Tensor) -> torch.Tensor:
    """One-hot encoding ``N×3×H×W`` (outside, pass, fail) of ``N×1×H×W`` wafer codes."""
    return F.one_hot(maps[:, 0].long(), 3).permute(0, 3, 1, 2).to(torch.float32)


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()


def train_vae(
    data: torch.Tensor,
    *,
    wafer: bool,
    settings: VAESettings,
    seed: int,
    device: torch.device,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "vae",
) -> ConvVAE:
    """Train a VAE on one class's samples at the working resolution.

    Args:
        data: ``N×C×s×s`` samples: uint8 wafer codes (``wafer=True``), or photos as
            uint8 0–255 or float in [0, 1].
        wafer: Model wafer maps (outline given, Bernoulli fail dies) or photos.
        settings: Architecture and optimisation settings.
        seed: Seeds initialisation, batches, augmentation and noise.
        device: Where to train.
        augment: Optional ``(batch, generator) -> batch`` applied to every batch in its
            stored format (e.g. wafer-aware rotations), so tiny classes see variety.
        progress: Show a progress bar.
        desc: Progress-bar label.

    Returns:
        The trained model in eval mode, on the CPU.
    """
    n = int(data.shape[0])
    if n == 0:
        raise DataError("cannot train a generator on zero samples")
    s = settings.size
    channels = 3 if wafer else int(data.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvVAE(
            in_channels=channels,
            out_channels=1 if wafer else channels,
            size=s,
            latent=settings.latent,
            width=settings.width,
            condition_channels=1 if wafer else 0,
        )
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.steps))
    gen = torch.Generator().manual_seed(seed)
    bs = settings.batch_size
    warm = max(1, int(settings.warmup * settings.steps))
    bar = progress_bar(enabled=progress, total=settings.steps, desc=desc)
    try:
        for step in range(settings.steps):
            idx = torch.randint(0, n, (bs,), generator=gen)
            batch = data[idx]
            if augment is not None:
                batch = augment(batch, gen)
            noise = torch.randn(bs, settings.latent, generator=gen).to(device)
            if wafer:
                x = wafer_input(batch).to(device)
                outline = x[:, 1:].sum(1, keepdim=True)
                target = x[:, 2:3]
                logits, mu, logvar = model(x, outline, noise)
                rec = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                rec = (rec * outline).sum((1, 2, 3)).mean()
            else:
                x = _photo_float(batch).to(device)
                logits, mu, logvar = model(x, None, noise)
                rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
                rec = rec.sum((1, 2, 3)).mean()
            beta = settings.beta * min(1.0, (step + 1) / warm)
            loss = rec + beta * _kl(mu, logvar)
            if not math.isfinite(float(loss.detach())):
                raise DataError(
                    f"generator training diverged at step {step} (loss {float(loss.detach())})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.1f}")
    finally:
        bar.close()
    return model.cpu().eval()


def _photo_float(batch: torch.Tensor) -> torch.Tensor:
    if batch.dtype == torch.uint8:
        return batch.to(torch.float32) / 255.0
    return batch.to(torch.float32).clamp(0, 1)


@torch.no_grad()
def sample_wafers(
    model: ConvVAE,
    outlines: torch.Tensor,
    *,
    generator: torch.Generator,
    temperature: float = 1.0,
    sharpness: float = 1.0,
) -> torch.Tensor:
    """Generate one wafer map per given outline.

    Args:
        model: A wafer VAE from :func:`train_vae`.
        outlines: ``N×1×H×W`` bool/uint8 outlines (non-zero = on the wafer) at the
            output size; the model works at its own size and fail dies are upsampled
            with nearest neighbour.
        generator: Source of latent codes and die draws.
        temperature: Scale of the latent prior's standard deviation.
        sharpness: Factor on the fail logits before each die is drawn: 1 draws from
            the decoder's probabilities as they are (speckled), large values approach
            a 0.5 threshold (clean shapes, no speckle).

    Returns:
        ``N×1×H×W`` uint8 codes: 0 outside each outline, 1 pass, 2 fail.
    """
    n = int(outlines.shape[0])
    h, w = int(outlines.shape[2]), int(outlines.shape[3])
    s = model.size
    inside = outlines > 0
    small = F.interpolate(inside.to(torch.float32), size=(s, s), mode="nearest-exact")
    z = torch.randn(n, model.latent, generator=generator) * temperature
    p = torch.sigmoid(model.decode(z, small) * sharpness)
    fail = torch.rand(p.shape, generator=generator) < p
    fail = F.interpolate(fail.to(torch.uint8), size=(h, w), mode="nearest-exact").bool()
    out = inside.to(torch.uint8)
    return out + (out * fail.to(torch.uint8))


@torch.no_grad()
def sample_images(
    model: ConvVAE,
    n: int,
    size: tuple[int, int],
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.uint8,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Generate ``n`` photos at ``size`` (decoder mean, resized with antialiasing)."""
    z = torch.randn(n, model.latent, generator=generator) * temperature
    x = torch.sigmoid(model.decode(z))
    if tuple(size) != (model.size, model.size):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


__all__ = ["ConvVAE", "VAESettings", "sample_images", "sample_wafers", "train_vae", "wafer_input"]
