"""Heatmap-on-image PNGs, with a jet colour map built in numpy (no matplotlib).

Explanation heatmaps are already in [0, 1]; anomaly maps are in a detector's own units
and go through :func:`anomaly_scale`, the one colour scale that the overlays written
here and the thumbnails of :mod:`inspectkit.report` share, so a map looks the same in
both. A flagged part's defect region (:func:`inspectkit.metrics.anomaly.defect_regions`)
is outlined in :data:`REGION_COLOUR` (:func:`draw_outline`), a colour the jet map never
takes.

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
from scipy import ndimage

from inspectkit.atomic import atomic_write
from inspectkit.errors import DataError
from inspectkit.ops import to_float
from inspectkit.records import AnomalyScores, Explained
from inspectkit.xai._layers import upsample

log = logging.getLogger(__name__)

SIDECAR = "overlays.json"
#: Weight of the heatmap colour in every overlay (files and report thumbnails).
DEFAULT_ALPHA = 0.5
#: Upper end of the anomaly colour scale: this quantile of the map values, so that a
#: few extreme pixels do not turn every other map blue.
SCALE_QUANTILE = 0.995
#: Values the quantile is estimated from (``torch.quantile`` has an input size limit).
SCALE_SAMPLE = 1_000_000
#: Outline colour of a defect region (magenta: not on the jet scale).
REGION_COLOUR = (255, 0, 255)


def jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colour map: values in [0, 1] → ``...×3`` uint8 RGB (blue → red).

    Piecewise linear: ``r = clip(1.5 − |4v − 3|)``, ``g = clip(1.5 − |4v − 2|)``,
    ``b = clip(1.5 − |4v − 1|)``.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centers = np.array([3.0, 2.0, 1.0])
    rgb = np.clip(1.5 - np.abs(4.0 * v - centers), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def anomaly_scale(maps: torch.Tensor, threshold: float | None = None) -> tuple[float, float]:
    """One colour scale ``(lo, hi)`` for a set of anomaly maps.

    ``lo`` is the smallest value, ``hi`` the :data:`SCALE_QUANTILE` quantile (from at most
    :data:`SCALE_SAMPLE` evenly strided values), raised when needed so that the
    threshold sits at most half-way up the scale: good parts stay in the cool half.

    Example:
        >>> anomaly_scale(torch.tensor([[[0.0, 1.0], [2.0, 4.0]]]), threshold=3.0)
        (0.0, 6.0)
    """
    flat = maps.detach().float().flatten()
    if flat.numel() == 0:
        raise DataError("no anomaly map values to scale")
    lo = float(flat.min())
    sample = flat[:: max(1, flat.numel() // SCALE_SAMPLE)]
    hi = float(torch.quantile(sample, SCALE_QUANTILE))
    if threshold is not None:
        hi = max(hi, 2 * float(threshold) - lo)
    return lo, hi


def scale_map(m: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``m`` mapped to [0, 1] on the scale ``(lo, hi)`` (all 0 when the scale is empty)."""
    m = m.detach().double()  # float64: a scale narrower than float32's range stays finite
    out = ((m - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(m)
    return out.float()


def draw_outline(
    img: Image.Image,
    mask: torch.Tensor | np.ndarray,
    colour: tuple[int, int, int],
    width: int | None = None,
) -> Image.Image:
    """``img`` with the edge of ``mask`` (``H×W``, resized with nearest to the image)
    drawn ``width`` pixels wide inside it (default: about 1/200 of the longer side, at
    least 1), in ``colour``.

    Example:
        >>> m = np.zeros((8, 8), bool); m[2:6, 2:6] = True
        >>> im = draw_outline(Image.new("RGB", (8, 8)), m, (255, 0, 255), width=1)
        >>> int((np.asarray(im)[..., 0] == 255).sum())  # the 4×4 square's 12 edge pixels
        12
    """
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    m = m.detach().cpu().bool()
    if m.ndim != 2:
        raise DataError(f"an outline mask must be H×W, got {tuple(m.shape)}")
    if not bool(m.any()):
        return img
    w, h = img.size
    if tuple(m.shape) != (h, w):
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")
        m = m[0, 0].bool()
    width = width or max(1, round(max(w, h) / 200))
    inside = m.numpy()
    edge = inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)
    arr = np.asarray(img.convert("RGB")).copy()
    arr[edge] = colour
    return Image.fromarray(arr, "RGB")


def overlay(
    image: torch.Tensor,
    heatmap: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    kind: str = "image",
    region: torch.Tensor | None = None,
) -> Image.Image:
    """Blend a jet-coloured heatmap over an image.

    Args:
        image: ``C×H×W`` (1 or 3 channels; uint8, wafer codes or float in [0, 1]).
        heatmap: ``H×W`` in [0, 1]; resized bilinearly when its size differs from the image.
        alpha: Weight of the heatmap colour (0 = image only, 1 = heatmap only).
        kind: ``"wafer"`` when ``image`` holds 0/1/2 wafer codes.
        region: ``H×W`` bool defect region, outlined in :data:`REGION_COLOUR`
            (:func:`draw_outline`), or ``None``.

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
    img = Image.fromarray(np.round(blend * 255).astype(np.uint8), mode="RGB")
    return img if region is None else draw_outline(img, region, REGION_COLOUR)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _out_dir(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_png(path: Path, img: Image.Image) -> None:
    atomic_write(path, lambda fh: img.save(fh, format="PNG"))


def write_overlays(
    explained: Explained, out_dir: str | os.PathLike[str], *, alpha: float = DEFAULT_ALPHA
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
    out = _out_dir(out_dir)
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
            _save_png(path, img)
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


def write_anomaly_overlays(
    scores: AnomalyScores, out_dir: str | os.PathLike[str], *, alpha: float = DEFAULT_ALPHA
) -> list[Path]:
    """Write one anomaly-map-on-image PNG per sample plus a sidecar JSON index.

    Every map is coloured on one scale (:func:`anomaly_scale` over the whole set, the
    scale of the report's thumbnails too); a flagged part's defect region is outlined
    (:data:`REGION_COLOUR`). File names are
    ``<index>_<id>_<anomalous|good|scored>_<score>.png``; ``overlays.json`` holds the
    method (``"anomaly_map"``), the threshold, the colour scale and, per file, the sample
    id, score, verdict and the region's boxes (``[xmin, ymin, xmax, ymax]`` in the image's
    pixels, as ``predict`` rows give them).
    Files are written atomically.

    Raises:
        DataError: ``scores`` is not an ``AnomalyScores`` record or carries no maps.

    Example:
        >>> write_anomaly_overlays(detector_pipeline.run(parts), "maps/")  # doctest: +SKIP
    """
    if not isinstance(scores, AnomalyScores):
        raise DataError(
            f"write_anomaly_overlays needs an AnomalyScores record, got {type(scores).__name__}"
        )
    if scores.maps is None:
        raise DataError("this anomaly model produces no anomaly maps to draw")
    from inspectkit.metrics.anomaly import defect_regions, region_boxes

    out = _out_dir(out_dir)
    lo, hi = anomaly_scale(scores.maps, scores.threshold)
    regions = None if scores.threshold is None else defect_regions(scores)
    paths: list[Path] = []
    entries: list[dict[str, Any]] = []
    for i, s in enumerate(scores.samples):
        heat = scale_map(scores.maps[i], lo, hi)
        region = None if regions is None else regions[i]
        img = overlay(scores.images[i], heat, alpha=alpha, kind=scores.kind, region=region)
        verdict = None if scores.is_anomalous is None else bool(scores.is_anomalous[i])
        tag = {True: "anomalous", False: "good", None: "scored"}[verdict]
        score = float(scores.scores[i])
        name = f"{i:05d}_{_safe(s.id)[-60:]}_{tag}_{score:.3g}.png"
        _save_png(out / name, img)
        paths.append(out / name)
        boxes = None if region is None else region_boxes(region, scores.images[i].shape[-2:])
        entries.append(
            {"file": name, "id": s.id, "score": score, "anomalous": verdict, "regions": boxes}
        )
    index = {
        "method": "anomaly_map",
        "threshold": scores.threshold,
        "scale": [lo, hi],
        "overlays": entries,
    }
    atomic_write(out / SIDECAR, json.dumps(index, indent=2))
    log.info("wrote %d anomaly overlays to %s", len(paths), out)
    return paths


__all__ = [
    "DEFAULT_ALPHA",
    "REGION_COLOUR",
    "anomaly_scale",
    "draw_outline",
    "jet",
    "overlay",
    "scale_map",
    "write_anomaly_overlays",
    "write_overlays",
]
