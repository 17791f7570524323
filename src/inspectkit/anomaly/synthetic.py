"""Synthetic defects made from good images, for choosing a detector without real defects.

``method="auto"`` validates its candidate detectors on held-out goods and on copies of
them carrying one synthetic defect each, in turn: a CutPaste patch (a rectangle cut
elsewhere in the image, its brightness jittered), a scar (a thin rotated strip), and a
noise blob (an elliptical spot of Gaussian noise). Where a line has labelled defects,
those are used instead; the report says which.

Example:
    >>> import torch
    >>> good = (torch.rand(3, 1, 64, 64) * 255).to(torch.uint8)
    >>> bad = synthetic_defects(good, seed=0)
    >>> bad.dtype, bool((bad != good).any((1, 2, 3)).all())
    (torch.uint8, True)
"""

from __future__ import annotations

import math

import torch

from inspectkit.anomaly.selfsupervised import cutpaste

#: The kinds of synthetic defect, used in turn.
KINDS = ("cutpaste", "scar", "noise")


def noise_blob(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A copy of the float ``C×H×W`` image with an elliptical blob of Gaussian noise
    (3–12 % of the shorter side across, amplitude 0.2–0.5)."""
    _, h, w = x.shape
    side = min(h, w)
    ry = max(2.0, side * (0.03 + 0.09 * float(torch.rand(1, generator=gen))))
    rx = max(2.0, ry * math.exp(float(torch.empty(1).uniform_(-0.7, 0.7, generator=gen))))
    cy = float(torch.rand(1, generator=gen)) * (h - 1)
    cx = float(torch.rand(1, generator=gen)) * (w - 1)
    yy = torch.arange(h, dtype=x.dtype).view(-1, 1)
    xx = torch.arange(w, dtype=x.dtype).view(1, -1)
    inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1
    amp = 0.2 + 0.3 * float(torch.rand(1, generator=gen))
    noise = amp * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return torch.where(inside, (x + noise).clamp(0, 1), x)


def synthetic_defects(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One synthetic defect per image (``N×C×H×W``, uint8 or float in [0, 1]; same dtype
    back), the kinds of :data:`KINDS` in turn, seeded."""
    gen = torch.Generator().manual_seed(seed)
    is_uint8 = images.dtype == torch.uint8
    out = []
    for i, img in enumerate(images):
        x = img.float() / 255.0 if is_uint8 else img.float()
        kind = KINDS[i % len(KINDS)]
        y = noise_blob(x, gen) if kind == "noise" else cutpaste(x, gen, scar=kind == "scar")
        out.append((y * 255).round().clamp(0, 255).to(torch.uint8) if is_uint8 else y)
    return torch.stack(out).to(images.dtype)


__all__ = ["KINDS", "noise_blob", "synthetic_defects"]
