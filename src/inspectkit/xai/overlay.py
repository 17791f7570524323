"""Heatmap-on-image PNGs, with a jet colour map built in numpy (no matplotlib).

Example:
    >>> import numpy as np
    >>> jet(np.array([0.0, 1.0])).tolist()
    [[0, 0, 128], [128, 0, 0]]
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from inspectkit.atomic import atomic_write
from inspectkit.errors import DataError
from inspectkit.ops import to_float
from inspectkit.records import Explained
from inspectkit.xai._layers import upsample

log = logging.getLogger(__name__)

SIDECAR = "overlays.json"


def jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colour map: values in [0, 1] → ``...×3`` uint8 RGB (blue → red).

    Piecewise linear: ``r = clip(1.5 − |4v − 3|)``, ``g = clip(1.5 − |4v − 2|)``,
    ``b = clip(1.5 − |4v − 1|)``.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centers = np.array([3.0, 2.0, 1.0])
    rgb = np.clip(1.5 - np.abs(4.0 * v - centers), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def overlay(
    image: torch.Tensor, heatmap: torch.Tensor, *, alpha: float = 0.5, kind: str = "image"
) -> Image.Image:
    """Blend a jet-coloured heatmap over an image.

    Args:
        image: ``C×H×W`` (1 or 3 channels; uint8, wafer codes or float in [0, 1]).
        heatmap: ``H×W`` in [0, 1]; resized bilinearly when its size differs from the image.
        alpha: Weight of the heatmap colour (0 = image only, 1 = heatmap only).
        kind: ``"wafer"`` when ``image`` holds 0/1/2 wafer codes.

    Returns:
        An RGB :class:`PIL.Image.Image`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha}")
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise DataError(f"image must be C×H×W with 1, 3 or 4 channels, got {tuple(image.shape)}")
    img = to_float(image.detach().cpu(), kind=kind).clamp(0, 1)[:3]
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    h, w = int(img.shape[1]), int(img.shape[2])
    hm = heatmap.detach().float().cpu()
    if hm.ndim != 2:
        raise DataError(f"heatmap must be H×W, got {tuple(hm.shape)}")
    if tuple(hm.shape) != (h, w):
        hm = upsample(hm[None, None], (h, w))[0, 0]
    colour = jet(hm.clamp(0, 1).numpy()).astype(np.float64) / 255.0
    base = img.permute(1, 2, 0).numpy().astype(np.float64)
    blend = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.round(blend * 255).astype(np.uint8), mode="RGB")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def write_overlays(
    explained: Explained, out_dir: str | os.PathLike[str], *, alpha: float = 0.5
) -> list[Path]:
    """Write one heatmap-on-image PNG per sample plus a sidecar JSON index.

    File names are ``<index>_<id>_<predicted>_<probability>.png`` (e.g.
    ``00003_scratches_12_scratches_0.97.png``); ``overlays.json`` lists for each file the
    sample id, true label, predicted class, its probability, the explained class and the
    method. Files are written atomically (temporary file + rename).

    Args:
        explained: Output of :class:`~inspectkit.xai.Explain` (or GradCAM/SISE stages).
        out_dir: Folder to write to (created if missing).
        alpha: Heatmap weight in the blend.

    Returns:
        The PNG paths, in sample order.

    Example:
        >>> write_overlays(result, "overlays/")  # doctest: +SKIP
    """
    if not isinstance(explained, Explained):
        raise DataError(f"write_overlays needs an Explained record, got {type(explained).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    entries: list[dict[str, Any]] = []
    pred_idx = explained.predicted_indices()
    index = 0
    for batch in explained.iter_batches(64):
        for j in range(len(batch)):
            sample = batch.samples[j]
            k = int(pred_idx[index])
            predicted = batch.predicted[j]
            prob = float(batch.probs[j, k]) if k >= 0 else float(batch.probs[j].max())
            shown = predicted if predicted is not None else "review"
            name = f"{index:05d}_{_safe(sample.id)}_{_safe(shown)}_{prob:.2f}.png"
            img = overlay(batch.images[j], batch.heatmaps[j], alpha=alpha, kind=batch.kind)
            path = out / name
            atomic_write(path, lambda fh, img=img: img.save(fh, format="PNG"))
            paths.append(path)
            t = batch.target_classes[j]
            entries.append(
                {
                    "file": name,
                    "id": sample.id,
                    "label": sample.label,
                    "predicted": predicted,
                    "probability": prob,
                    "explained_class": batch.classes[t],
                    "explained_probability": float(batch.probs[j, t]),
                    "method": batch.method,
                }
            )
            index += 1
    atomic_write(
        out / SIDECAR, json.dumps({"method": explained.method, "overlays": entries}, indent=2)
    )
    log.info("wrote %d overlays to %s", len(paths), out)
    return paths


__all__ = ["jet", "overlay", "write_overlays"]
