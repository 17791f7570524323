"""The autoencoder's scoring as an exportable graph: reconstruction, ``1 − SSIM`` (or
squared error) with the Gaussian window as a constant, smoothing, map maximum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.anomaly.autoencoder import _gauss_window
from inspectkit.export.base import register_detector_exporter

#: ``ssim_map``'s defaults: window side and Gaussian sigma.
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


class AutoEncoderGraph(nn.Module):
    """``x`` → ``(scores, maps)`` of a fitted :class:`~inspectkit.anomaly.AutoEncoder`;
    :func:`~inspectkit.anomaly.autoencoder.ssim_map` with its window built once."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        c = int(detector.in_channels)
        self.register_buffer(
            "window", _gauss_window(SSIM_WINDOW, SSIM_SIGMA, c, torch.device("cpu"))
        )
        self.channels = c

    def ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pad = SSIM_WINDOW // 2

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), self.window, groups=self.channels)

        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        return s.mean(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        det = self.detector
        rec = det(x)
        err = 1 - self.ssim(rec, x) if det.map_kind == "ssim" else ((rec - x) ** 2).mean(1)
        maps = det.upsample_smooth(err, tuple(x.shape[-2:]))
        return maps.flatten(1).amax(1), maps


@register_detector_exporter("autoencoder")
def export_autoencoder(detector: nn.Module) -> nn.Module:
    return AutoEncoderGraph(detector)


__all__ = ["AutoEncoderGraph", "export_autoencoder"]
