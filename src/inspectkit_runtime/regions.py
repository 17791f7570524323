"""Defect regions of flagged parts, as boxes: the same in the library and the runtime.

A flagged (or review) part's region is its anomaly map above the calibrated region
threshold (the library's rule: ``inspectkit.anomaly.threshold.region_masks``; here in
NumPy for the runtime). Its connected parts (8-connected, ``scipy.ndimage.label``) become
boxes ``[xmin, ymin, xmax, ymax]`` (inclusive) in the input image's pixels, largest
first, at most :data:`MAX_REGIONS` per part: what ``predict --json`` rows carry as
``regions``.

Example:
    >>> import numpy as np
    >>> r = np.zeros((4, 6), bool); r[0, 0] = r[1, 1] = True; r[2:4, 3:6] = True
    >>> region_boxes(r)
    [[3, 2, 5, 3], [0, 0, 1, 1]]
    >>> region_boxes(r, image_size=(8, 12))  # the map at half the image's size
    [[6, 4, 11, 7], [0, 0, 3, 3]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Boxes a row carries at most (the largest regions): a noisy map cannot flood a row.
MAX_REGIONS = 20


def region_masks(
    maps: np.ndarray, lines: np.ndarray, shown: np.ndarray, *, peak: bool = True
) -> np.ndarray:
    """Per part, map pixels above its ``lines`` value, for the parts ``shown``; with
    ``peak``, a shown part with no pixel above its line gets its highest pixel(s)."""
    m = np.asarray(maps)
    line = np.asarray(lines, dtype=np.float64)[:, None, None]
    region = m.astype(np.float64) > line
    if peak:
        top = m.reshape(len(m), -1).max(axis=1)[:, None, None]
        region |= (m >= top) & ~region.reshape(len(m), -1).any(axis=1)[:, None, None]
    return region & np.asarray(shown, dtype=bool)[:, None, None]


def region_boxes(
    region: np.ndarray, image_size: Sequence[int] | None = None, limit: int = MAX_REGIONS
) -> list[list[int]]:
    """Boxes of the connected parts of one ``H×W`` region, largest first (at most
    ``limit``), scaled to ``image_size`` ``(H, W)`` when the map has another size."""
    from scipy import ndimage

    mask = np.asarray(region, dtype=bool)
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    slices = ndimage.find_objects(labelled)
    order = sorted(range(n), key=lambda i: (-int(sizes[i]), slices[i][0].start, slices[i][1].start))
    h, w = mask.shape
    sy, sx = (1.0, 1.0) if image_size is None else (image_size[0] / h, image_size[1] / w)
    boxes = []
    for i in order[:limit]:
        ys, xs = slices[i]
        boxes.append(
            [
                math.floor(xs.start * sx),
                math.floor(ys.start * sy),
                math.ceil(xs.stop * sx) - 1,
                math.ceil(ys.stop * sy) - 1,
            ]
        )
    return boxes


def rows_regions(
    maps: np.ndarray,
    lines: np.ndarray,
    shown: np.ndarray,
    image_sizes: Sequence[Sequence[int]] | None = None,
) -> list[list[list[int]]]:
    """Per part, the boxes of its region (empty for parts not shown)."""
    masks = region_masks(maps, lines, shown)
    out: list[list[list[int]]] = []
    for i, mask in enumerate(masks):
        size: Any = None if image_sizes is None else image_sizes[i]
        out.append(region_boxes(mask, size) if shown[i] else [])
    return out


__all__ = ["MAX_REGIONS", "region_boxes", "region_masks", "rows_regions"]
