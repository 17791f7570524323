"""Test support for the anomaly tests: small sets of flat gray parts, some with a defect."""

from __future__ import annotations

import torch

from inspectkit.records import ImageSet, SampleMeta


def flat_parts(
    n: int, seed: int, defect: bool = False, *, size: int = 32, noise: float = 0.02
) -> ImageSet:
    """``n`` flat gray parts (0.5 plus Gaussian ``noise``), labelled "good"; with
    ``defect``, labelled "bad" and each carrying a dark square of ``size // 3 + 1`` px."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + noise * torch.randn(n, 1, size, size, generator=g)
    side = size // 3 + 1
    if defect:
        for i in range(n):
            y0, x0 = torch.randint(size // 8, size - side - size // 8, (2,), generator=g).tolist()
            x[i, :, y0 : y0 + side, x0 : x0 + side] = 0.1
    label = "bad" if defect else "good"
    samples = [SampleMeta(id=f"{label}{seed}-{i}", label=label) for i in range(n)]
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images=images, samples=samples, classes=["good", "bad"])
