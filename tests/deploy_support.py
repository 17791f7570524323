"""Helpers shared by the deployment tests: small fitted pipelines, parity checks, PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector
from inspectkit.records import ImageSet, SampleMeta

#: Small, fast settings per detector (64 px, few features, one epoch).
DETECTOR_OPTIONS: dict[str, dict[str, Any]] = {
    "patchcore": {"coreset_ratio": 0.5},
    "padim": {"n_features": 24},
    "autoencoder": {"epochs": 1, "base_channels": 8, "latent_channels": 8},
    "selfsupervised": {"steps": 2, "crop_size": 32, "batch_size": 4, "n_features": 24},
    "ensemble": {
        "members": [
            {"method": "patchcore", "coreset_ratio": 0.5},
            {"method": "padim", "n_features": 24},
        ]
    },
}


def parts(n: int, size: int = 64, channels: int = 1, seed: int = 0, bright: int = 0) -> ImageSet:
    """Smooth random uint8 parts (a blurred noise texture) of one size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * 200 + 20 + bright).clamp(0, 255).round().to(torch.uint8)
    return ImageSet.build(images=x, samples=[SampleMeta(id=f"p{seed}-{i}") for i in range(n)])


def detector_pipeline(method: str, *, size: int = 64, n: int = 30, **config: Any) -> Pipeline:
    stage = AnomalyDetector(
        method=method, size=size, progress=False, options=DETECTOR_OPTIONS.get(method, {}), **config
    )
    return Pipeline([stage]).fit(parts(n, size))


def as_arrays(data: ImageSet) -> list[np.ndarray]:
    """Decoded-image layout (``H×W`` or ``H×W×C``) of every image of ``data``."""
    out = []
    for t in (data.images[i] for i in range(len(data))):
        a = t.numpy()
        out.append(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    return out


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def assert_parity(reference: Any, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The issue's parity targets: identical verdicts / top classes, scores and
    probabilities within 1e-4 relative, maps within 1e-3 (of the map scale)."""
    from inspectkit.export import compare

    report = compare(reference, outputs)
    assert report["ok"], report
    assert report.get("verdict_mismatches", 0) == 0 and report.get("class_mismatches", 0) == 0
    return report
