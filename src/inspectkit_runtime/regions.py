"""Defect regions of flagged parts, as boxes: the same in the library and the runtime.

A flagged (or review) part's region is its anomaly map above the calibrated region
threshold (the library's rule, ``inspectkit.anomaly.threshold.region_masks``, calls this
module's). Its connected parts (8-connected, :func:`label`) become boxes ``[xmin, ymin,
xmax, ymax]`` (inclusive) in the input image's pixels, largest first, at most
:data:`MAX_REGIONS` per part: what ``predict --json`` rows carry as ``regions``.

The labelling is NumPy's, not SciPy's ``ndimage.label``: SciPy would add about 140 MB to
the runtime's 190 MB install for this one function. The tests check it against
``scipy.ndimage.label`` on random masks.

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
    show = np.flatnonzero(np.asarray(shown, dtype=bool))
    out = np.zeros(m.shape, dtype=bool)
    if show.size == 0:
        return out
    sub = m[show]  # only the parts shown: most parts of a line are good
    # a float32 map against a float64 line: compared exactly, without a float64 copy
    region = sub > np.asarray(lines, dtype=np.float64)[show, None, None]
    if peak:
        empty = ~region.reshape(len(sub), -1).any(axis=1)
        if empty.any():
            top = sub[empty].reshape(int(empty.sum()), -1).max(axis=1)[:, None, None]
            region[empty] = sub[empty] >= top
    out[show] = region
    return out


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected parts of a 2-D bool ``mask``: ``(labels, n)`` with labels ``1..n`` in
    the order of each part's first pixel (row-major) and 0 outside, as
    ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))`` gives them.

    Every pixel takes the smallest pixel index among its neighbours and itself, then the
    label of the pixel its label names (pointer jumping), until nothing changes.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"label needs a 2-D mask, got shape {m.shape}")
    out = np.zeros(m.shape, dtype=np.int64)
    if not m.any():
        return out, 0
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = m[y0:y1, x0:x1]  # the mask's bounding box: most regions are small
    h, w = sub.shape
    none = h * w
    lab = np.where(sub, np.arange(none).reshape(h, w), none)
    while True:
        padded = np.pad(lab, 1, constant_values=none)
        low = lab.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(low, padded[dy : dy + h, dx : dx + w], out=low)
        low[~sub] = none
        flat = low.ravel()
        fg = flat < none
        flat[fg] = flat[flat[fg]]  # a label is a pixel of the same part: jump to its label
        if np.array_equal(low, lab):
            break
        lab = low
    roots, inverse = np.unique(lab[sub], return_inverse=True)  # roots ascend: row-major order
    block = np.zeros(sub.shape, dtype=np.int64)
    block[sub] = inverse + 1
    out[y0:y1, x0:x1] = block
    return out, len(roots)


def region_boxes(
    region: np.ndarray, image_size: Sequence[int] | None = None, limit: int = MAX_REGIONS
) -> list[list[int]]:
    """Boxes of the connected parts of one ``H×W`` region, largest first (ties: the part
    met first, row-major), at most ``limit``, scaled to ``image_size`` ``(H, W)`` when the
    map has another size."""
    mask = np.asarray(region, dtype=bool)
    labelled, n = label(mask)
    if n == 0:
        return []
    ys, xs = np.nonzero(labelled)
    parts = labelled[ys, xs] - 1
    sizes = np.bincount(parts, minlength=n)
    top = np.full(n, mask.shape[0])
    np.minimum.at(top, parts, ys)
    bottom = np.zeros(n, dtype=np.int64)
    np.maximum.at(bottom, parts, ys)
    left = np.full(n, mask.shape[1])
    np.minimum.at(left, parts, xs)
    right = np.zeros(n, dtype=np.int64)
    np.maximum.at(right, parts, xs)
    order = sorted(range(n), key=lambda i: (-int(sizes[i]), i))
    h, w = mask.shape
    sy, sx = (1.0, 1.0) if image_size is None else (image_size[0] / h, image_size[1] / w)
    return [
        [
            math.floor(int(left[i]) * sx),
            math.floor(int(top[i]) * sy),
            math.ceil((int(right[i]) + 1) * sx) - 1,
            math.ceil((int(bottom[i]) + 1) * sy) - 1,
        ]
        for i in order[:limit]
    ]


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


__all__ = ["MAX_REGIONS", "label", "region_boxes", "region_masks", "rows_regions"]
