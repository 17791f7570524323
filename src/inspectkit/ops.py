"""Tensor operations shared by sources and stages: resizing and channel conversion.

Images of one size are processed as one batch; a ragged list is grouped by size so that
each distinct size costs one vectorised call, not one call per image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from inspectkit.errors import DataError

ResizeMode = Literal["nearest", "antialias"]

#: Smallest and largest side (pixels) any stage resizes images to: one range for all.
SIZE_RANGE = (1, 8192)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Refuse a working size outside :data:`SIZE_RANGE` (``ValueError`` for validators).

    Example:
        >>> check_size((64, 48))
        (64, 48)
    """
    lo, hi = SIZE_RANGE
    if len(size) != 2 or not all(lo <= int(v) <= hi for v in size):
        raise ValueError(f"size must be between {lo} and {hi} pixels per side, got {tuple(size)}")
    return (int(size[0]), int(size[1]))


def _tf():  # type: ignore[no-untyped-def]
    """torchvision's functional transforms, imported on first use (the import costs ~160 MB RSS)."""
    from torchvision.transforms.v2 import functional

    return functional


def group_by_size(images: Sequence[torch.Tensor]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, t in enumerate(images):
        groups[tuple(t.shape)].append(i)
    return groups


def resize_batch(batch: torch.Tensor, size: tuple[int, int], mode: ResizeMode) -> torch.Tensor:
    """Resize an ``N×C×H×W`` batch; ``nearest`` keeps discrete codes, ``antialias`` smooths."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    if mode == "nearest":
        if batch.dtype == torch.uint8 or batch.dtype == torch.bool:
            out = F.interpolate(batch.to(torch.uint8), size=size, mode="nearest-exact")
            return out.to(batch.dtype)
        return F.interpolate(batch, size=size, mode="nearest-exact")
    if mode == "antialias":
        tf = _tf()
        return tf.resize(
            batch, list(size), interpolation=tf.InterpolationMode.BILINEAR, antialias=True
        )
    raise DataError(f"unknown resize mode {mode!r}; use 'nearest' or 'antialias'")


def resize_images(
    images: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int], mode: ResizeMode
) -> torch.Tensor:
    """Resize a batch or a ragged list of ``C×H×W`` images to one ``N×C×h×w`` tensor.

    Example:
        >>> import torch
        >>> maps = [torch.ones(1, 30, 20, dtype=torch.uint8), torch.full((1, 50, 40), 2, dtype=torch.uint8)]
        >>> resize_images(maps, (16, 16), "nearest").shape
        torch.Size([2, 1, 16, 16])
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise DataError(f"expected N×C×H×W images, got shape {tuple(images.shape)}")
        return resize_batch(images, size, mode)
    images = list(images)
    if not images:
        raise DataError("no images to resize")
    first = images[0]
    channels = {int(t.shape[0]) for t in images}
    if len(channels) != 1:
        raise DataError(f"images have different channel counts {sorted(channels)}")
    out = torch.empty((len(images), first.shape[0], *size), dtype=first.dtype)
    for shape, idx in group_by_size(images).items():
        del shape
        batch = torch.stack([images[i] for i in idx])
        out[torch.as_tensor(idx)] = resize_batch(batch, size, mode)
    return out


def letterbox(
    images: torch.Tensor | Sequence[torch.Tensor],
    size: tuple[int, int],
    mode: Literal["nearest", "antialias"],
    fill: float = 0,
) -> tuple[torch.Tensor, list[tuple[float, float, int, int]]]:
    """Aspect-preserving resize into ``size`` with padding, grouped by input size.

    Returns the ``N×C×H×W`` batch and, per image, ``(sx, sy, left, top)``: the scale
    factors and the offset of the resized image inside the padded canvas.

    Example:
        >>> import torch
        >>> out, geo = letterbox([torch.ones(1, 10, 20, dtype=torch.uint8)], (8, 8), "nearest")
        >>> out[0, 0, :, 0].tolist(), geo[0]
        ([0, 0, 1, 1, 1, 1, 0, 0], (0.4, 0.4, 0, 2))
    """
    seq = list(images) if not isinstance(images, torch.Tensor) else images
    n = len(seq)
    if n == 0:
        raise DataError("no images to resize")
    first = seq[0]
    height, width = size
    out = torch.full((n, int(first.shape[0]), height, width), fill, dtype=first.dtype)
    geometry: list[tuple[float, float, int, int]] = [(1.0, 1.0, 0, 0)] * n
    groups = (
        {tuple(seq.shape[1:]): list(range(n))}
        if isinstance(seq, torch.Tensor)
        else group_by_size(seq)
    )
    for (_, h, w), idx in groups.items():
        scale = min(height / h, width / w)
        nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
        index = torch.as_tensor(idx)
        batch = seq[index] if isinstance(seq, torch.Tensor) else torch.stack([seq[i] for i in idx])
        top, left = (height - nh) // 2, (width - nw) // 2
        out[index, :, top : top + nh, left : left + nw] = resize_batch(batch, (nh, nw), mode)
        for i in idx:
            geometry[i] = (nw / w, nh / h, left, top)
    return out, geometry


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``N×C×H×W`` images to 1 (luminance) or 3 (replicated gray) channels."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        return _tf().rgb_to_grayscale(images, num_output_channels=1)
    if channels == 1 and c == 4:
        return _tf().rgb_to_grayscale(images[:, :3], num_output_channels=1)
    if channels == 3 and c == 4:
        return images[:, :3].contiguous()
    raise DataError(f"cannot convert {c}-channel images to {channels} channels")


def to_float(images: torch.Tensor, *, kind: str = "image") -> torch.Tensor:
    """Scale images to float in [0, 1]: uint8 photos by /255, wafer codes 0/1/2 by /2."""
    if images.dtype.is_floating_point:
        return images.float()
    scale = 2.0 if kind == "wafer" else 255.0
    return images.float() / scale


__all__ = [
    "SIZE_RANGE",
    "check_size",
    "group_by_size",
    "letterbox",
    "resize_batch",
    "resize_images",
    "to_channels",
    "to_float",
]
