"""The preprocessing an exported model's sidecar lists, in NumPy, matching the library.

The library prepares images with torch (``inspectkit.ops``, ``Wrangle``, the
classifier's ``InputSpec``, the detector stage); an exported model lists the same steps
in its sidecar (``"preprocess"``) and :func:`apply_steps` runs them here, so a program
without torch feeds the ONNX graph what ``Pipeline.run`` feeds the network. Each step
reproduces its torch counterpart's arithmetic:

* ``resize`` ``antialias`` on uint8: the separable antialiased bilinear filter of
  ``torch.nn.functional.interpolate(antialias=True)`` / Pillow with torch's 16-bit
  integer weights (horizontal pass, rounded to uint8, then vertical): bit-identical;
  on float images the same filter in float (differences of float32 rounding; torch's
  float kernel mishandles images one pixel wide, which no working size is);
* ``resize`` ``nearest``: ``nearest-exact`` source indices computed in float32 as torch;
* ``letterbox``, ``channels`` (luminance in torchvision's float32 arithmetic, truncated),
  ``to_float`` (``uint8 / scale`` in float32), ``standardize`` (per-channel mean/std),
  ``intensity`` (each image's mean and standard deviation mapped to the training ones,
  rounded back to uint8 like the detector stage).

Images are ``C×H×W`` arrays inside; :func:`as_chw` takes ``H×W`` or ``H×W×C``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inspectkit_runtime.errors import InputError, RuntimeModelError

#: The step names :func:`apply_steps` knows.
STEPS = ("resize", "require_size", "letterbox", "channels", "to_float", "standardize", "intensity")


def as_chw(image: np.ndarray) -> np.ndarray:
    """``H×W`` → ``1×H×W``; ``H×W×C`` → ``C×H×W`` (a decoded image's layout)."""
    a = np.asarray(image)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return np.ascontiguousarray(a.transpose(2, 0, 1))
    raise InputError(f"an image is H×W or H×W×C, got shape {a.shape}")


# ---------------------------------------------------------------------- resizing
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First source index and normalised weights per output (antialiased bilinear)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(int(xsize.max()))
    x = (taps[None, :] + xmin[:, None] - center[:, None] + 0.5) * invscale
    w = np.where((np.abs(x) < 1.0) & (taps[None, :] < xsize[:, None]), 1.0 - np.abs(x), 0.0)
    total = w.sum(1, keepdims=True)
    return xmin, np.divide(w, total, out=w.copy(), where=total != 0)


def _int16_weights(w: np.ndarray) -> tuple[np.ndarray, int]:
    """torch's uint8 path: weights scaled to int16 with the most bits that fit."""
    wmax = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + wmax * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    return np.where(v < 0, v - 0.5, v + 0.5).astype(np.int16).astype(np.int64), precision


def _aa_pass(a: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    in_size = a.shape[axis]
    xmin, w = _aa_weights(in_size, out_size)
    idx = np.minimum(xmin[:, None] + np.arange(w.shape[1])[None, :], in_size - 1)
    moved = np.moveaxis(a, axis, -1)
    if a.dtype == np.uint8:
        wi, precision = _int16_weights(w)
        src = moved.astype(np.int64)
        acc = np.full((*src.shape[:-1], out_size), 1 << (precision - 1), dtype=np.int64)
        for j in range(w.shape[1]):
            acc += src[..., idx[:, j]] * wi[:, j]
        out = np.clip(acc >> precision, 0, 255).astype(np.uint8)
    else:
        src = moved.astype(np.float32)
        wf = w.astype(np.float32)
        acc = np.zeros((*src.shape[:-1], out_size), dtype=np.float32)
        for j in range(w.shape[1]):
            acc += src[..., idx[:, j]] * wf[:, j]
        out = acc
    return np.moveaxis(out, -1, axis)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
    return np.minimum(np.floor(pos).astype(np.int64), in_size - 1)


def resize(image: np.ndarray, size: Sequence[int], mode: str) -> np.ndarray:
    """A ``C×H×W`` image at ``size`` = ``(H, W)``: ``"antialias"`` (photos) or
    ``"nearest"`` (wafer codes, masks), as ``inspectkit.ops.resize_batch``.

    Example:
        >>> resize(np.arange(4, dtype=np.uint8).reshape(1, 1, 4), (1, 2), "nearest").tolist()
        [[[1, 3]]]
    """
    h, w = int(size[0]), int(size[1])
    if image.shape[-2:] == (h, w):
        return image
    if mode == "nearest":
        rows = _nearest_index(image.shape[-2], h)
        cols = _nearest_index(image.shape[-1], w)
        return image[:, rows][:, :, cols]
    if mode == "antialias":
        out = image
        if out.shape[-1] != w:
            out = _aa_pass(out, 2, w)
        if out.shape[-2] != h:
            out = _aa_pass(out, 1, h)
        return out
    raise RuntimeModelError(f"unknown resize mode {mode!r}; use 'nearest' or 'antialias'")


def letterbox(image: np.ndarray, size: Sequence[int], mode: str, fill: float) -> np.ndarray:
    """Aspect-preserving resize into ``size`` with padding (``inspectkit.ops.letterbox``)."""
    height, width = int(size[0]), int(size[1])
    _, h, w = image.shape
    scale = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    out = np.full((image.shape[0], height, width), fill, dtype=image.dtype)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, top : top + nh, left : left + nw] = resize(image, (nh, nw), mode)
    return out


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """1 → 3 (replicated) or 3 → 1 (luminance, torchvision's float32 arithmetic)."""
    c = image.shape[0]
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    if channels == 1 and c in (3, 4):
        r, g, b = (image[i].astype(np.float32) for i in range(3))
        # r*0.2989, then two fused multiply-adds (one rounding each), as torch computes it
        lum = (r * np.float32(0.2989)).astype(np.float32)
        lum = (g.astype(np.float64) * np.float32(0.587) + lum).astype(np.float32)
        lum = (b.astype(np.float64) * np.float32(0.114) + lum).astype(np.float32)
        return lum[None].astype(image.dtype)
    if channels == 3 and c == 4:
        return image[:3]
    raise InputError(f"cannot convert {c}-channel images to {channels} channels")


def to_float(image: np.ndarray, scale: float) -> np.ndarray:
    """Integer images divided by ``scale`` in float32 (255 for photos, 2 for wafer codes
    as ``"unit"``, 1 to keep codes); float images unchanged."""
    if image.dtype.kind == "f":
        return image.astype(np.float32, copy=False)
    return image.astype(np.float32) / np.float32(scale)


def standardize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel, float32."""
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if m.shape[0] != image.shape[0]:
        raise InputError(
            f"the model normalises {m.shape[0]}-channel images, got {image.shape[0]} channels"
        )
    return (image.astype(np.float32, copy=False) - m) / s


def intensity(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Map the image's mean and standard deviation (all pixels and channels) to ``mean``
    and ``std`` (the training images' averages); uint8 stays uint8 (rounded, clipped)."""
    is_uint8 = image.dtype == np.uint8
    top = np.float32(255.0 if is_uint8 else 1.0)
    x = image.astype(np.float32)
    x64 = x.astype(np.float64)
    m = np.float32(x64.mean())
    sd = np.float32(x64.std(ddof=1) if x.size > 1 else np.nan)
    sd = max(sd, np.float32(1e-3) * top)
    y = np.clip((x - m) / sd * np.float32(std) + np.float32(mean), 0, top)
    return np.round(y).astype(np.uint8) if is_uint8 else y.astype(image.dtype)


def resize_maps(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``N×h×w`` float maps at ``size`` by bilinear interpolation (half-pixel centres, no
    antialiasing), as ``torch.nn.functional.interpolate(mode="bilinear")`` brings the
    library's maps back to the source images' size."""
    out_h, out_w = int(size[0]), int(size[1])
    _, in_h, in_w = maps.shape

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(
            scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0
        )
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, ly = taps(in_h, out_h)
    x0, x1, lx = taps(in_w, out_w)
    m = maps.astype(np.float32)
    ly, lx = ly[:, None], lx[None, :]
    top = (1 - lx) * m[:, y0][:, :, x0] + lx * m[:, y0][:, :, x1]
    bottom = (1 - lx) * m[:, y1][:, :, x0] + lx * m[:, y1][:, :, x1]
    return ((1 - ly) * top + ly * bottom).astype(np.float32)


def apply_step(image: np.ndarray, step: dict[str, Any]) -> np.ndarray:
    """One sidecar step on one ``C×H×W`` image."""
    op = step.get("op")
    if op == "resize":
        return resize(image, step["size"], step["mode"])
    if op == "letterbox":
        fill = float(step.get("fill", 0))
        if image.dtype.kind == "f" and step.get("fill_scale"):
            fill = fill / float(step["fill_scale"])
        return letterbox(image, step["size"], step["mode"], fill)
    if op == "require_size":
        h, w = (int(v) for v in step["size"])
        if image.shape[-2:] != (h, w):
            raise InputError(
                f"images are {image.shape[-2]}×{image.shape[-1]} but the model was trained on "
                f"{h}×{w} and takes no other size"
            )
        return image
    if op == "channels":
        return to_channels(image, int(step["channels"]))
    if op == "to_float":
        return to_float(image, float(step["scale"]))
    if op == "standardize":
        return standardize(image, step["mean"], step["std"])
    if op == "intensity":
        return intensity(image, float(step["mean"]), float(step["std"]))
    raise RuntimeModelError(f"unknown preprocessing step {op!r}; known: {', '.join(STEPS)}")


def apply_steps(images: Sequence[np.ndarray], steps: Sequence[dict[str, Any]]) -> np.ndarray:
    """Decoded images (``H×W`` or ``H×W×C``, as :func:`~inspectkit_runtime.images.decode_image`
    gives them) → one float32 ``N×C×H×W`` batch for the graph."""
    out = []
    for image in images:
        x = as_chw(image)
        for step in steps:
            x = apply_step(x, step)
        out.append(x)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise InputError(
            f"the preprocessing left images of several shapes {sorted(shapes)}; "
            "the sidecar must end with a resize"
        )
    return np.stack(out).astype(np.float32, copy=False)


__all__ = [
    "STEPS",
    "apply_step",
    "apply_steps",
    "as_chw",
    "intensity",
    "letterbox",
    "resize",
    "resize_maps",
    "standardize",
    "to_channels",
    "to_float",
]
