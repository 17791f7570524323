"""Pieces shared by the image loaders: decoding through PIL, error policy, file listing.

Every problem with one input file becomes a :class:`~inspectkit.errors.DataError` whose
message starts with the file's path. A loader called with ``on_error="skip"`` catches
those errors per file and records ``"<file>: <reason>"`` in ``ImageSet.skipped``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from inspectkit.errors import DataError
from inspectkit.sources.layout import OnError, check_on_error
from inspectkit.sources.limits import Limits, as_limits, get_limits, over

log = logging.getLogger(__name__)

Unlabelled = Literal["keep", "skip"]

#: The nine WM-811K failure types, ``none`` meaning a map without a pattern.
WM811K_CLASSES = [
    "Center",
    "Donut",
    "Edge-Loc",
    "Edge-Ring",
    "Loc",
    "Near-full",
    "Random",
    "Scratch",
    "none",
]
_CANONICAL = {c.lower(): c for c in WM811K_CLASSES}

#: File suffixes the folder loaders treat as images.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
)

_GRAY_MODES = frozenset({"1", "L", "LA", "P;L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_FLOAT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

T = TypeVar("T")


def check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be None (keep), 1 (gray) or 3 (RGB), got {channels!r}")


def file_error(path: str | os.PathLike[str], problem: str) -> DataError:
    """A :class:`DataError` whose message names the file first."""
    return DataError(f"{path}: {problem}")


class Collector:
    """Applies the ``on_error`` policy: re-raise, or remember ``"<file>: <reason>"``."""

    def __init__(self, on_error: OnError) -> None:
        check_on_error(on_error)
        self.on_error = on_error
        self.skipped: list[str] = []

    def attempt(self, func: Callable[[], T]) -> T | None:
        """Call ``func``; on :class:`DataError` raise or record it and return ``None``."""
        try:
            return func()
        except DataError as exc:
            if self.on_error == "raise":
                raise
            self.skipped.append(str(exc))
            log.warning("skipped %s", exc)
            return None

    def skip(self, path: str | os.PathLike[str], reason: str) -> None:
        """Raise (``on_error="raise"``) or record a problem found without an exception."""
        if self.on_error == "raise":
            raise file_error(path, reason)
        self.skipped.append(f"{path}: {reason}")
        log.warning("skipped %s: %s", path, reason)


def check_regular_file(path: Path) -> None:
    """A :class:`DataError` unless ``path`` is a regular file (not missing, not a folder,
    a device such as ``/dev/zero`` or a pipe, which could be read without end)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except OSError as exc:
        raise file_error(path, f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise file_error(path, f"{what}; expected a file")


def _open(path: Path, limits: Limits | Mapping[str, int] | None = None) -> Image.Image:
    """Open an image (header only) and check its size against ``max_image_pixels``."""
    limits = as_limits(limits)
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            # our own limit decides below; Pillow's warning threshold is not configurable
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice PIL.Image.MAX_IMAGE_PIXELS
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found:
            over(path, "image has pixels", int(found.group(1)), "max_image_pixels", limits)
        raise file_error(
            path,
            f"image too large for Pillow ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS as well as "
            "the inspectkit limit max_image_pixels to read it",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow parsing untrusted bytes: any failure = unreadable
        raise file_error(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = im.size
    try:
        over(path, f"image is {w}×{h} (W×H) pixels", w * h, "max_image_pixels", limits)
    except DataError:
        im.close()
        raise
    return im


def image_size(
    path: str | os.PathLike[str], limits: Limits | Mapping[str, int] | None = None
) -> tuple[int, int]:
    """``(H, W)`` read from the file's header only (no pixel decoding)."""
    p = Path(path)
    with _open(p, limits) as im:
        w, h = im.size
    if h < 1 or w < 1:
        raise file_error(p, f"image has an empty size {w}x{h}")
    return h, w


def decode_array(
    path: str | os.PathLike[str],
    channels: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> np.ndarray:
    """Decode one image file to an ``H×W`` or ``H×W×3`` NumPy array (see :func:`read_image`)."""
    p = Path(path)
    with _open(p, limits) as im:
        w, h = im.size
        if h < 1 or w < 1:
            raise file_error(p, f"image has an empty size {w}x{h}")
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as exc:
            raise file_error(
                p, f"corrupt or truncated image ({type(exc).__name__}: {exc})"
            ) from None
        mode = im.mode
        if mode in _FLOAT_MODES:
            arr = np.array(im, dtype=np.float32)
            if mode != "F":
                arr = arr / (65535.0 if mode.startswith("I;16") else float(max(1, arr.max())))
            elif not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                raise file_error(p, f"float image holds {bad} NaN/inf pixels")
            if channels == 3:
                arr = np.repeat(arr[..., None], 3, axis=2)
            return arr
        gray = mode in _GRAY_MODES or (mode == "P" and _palette_is_gray(im))
        want = channels if channels is not None else (1 if gray else 3)
        target = "L" if want == 1 else "RGB"
        try:
            converted = im.convert(target) if mode != target else im
            arr = np.array(converted, dtype=np.uint8)
        except MemoryError:
            raise
        except Exception as exc:
            raise file_error(p, f"cannot convert {mode} image to {target} ({exc})") from None
        if arr.shape[:2] != (h, w):  # a decoder that disagrees with its own header
            raise file_error(p, f"decoded to {arr.shape[:2]}, but the header says {h}x{w}")
        return arr


def read_image(
    path: str | os.PathLike[str],
    channels: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> torch.Tensor:
    """Decode one image file to a ``C×H×W`` tensor.

    8-bit files become uint8 (``channels=None`` keeps gray as 1 channel and turns every
    colour mode into RGB). 16-bit and 32-bit integer files become float32 scaled to
    [0, 1]; floating-point TIFFs stay float32 and must be finite.

    Raises:
        DataError: naming the file, for a missing, corrupt, truncated or non-finite image;
            :class:`~inspectkit.sources.limits.SizeLimitError` for one whose header claims
            more than ``max_image_pixels`` (checked before decoding).

    Example:
        >>> from inspectkit.sources._common import read_image
        >>> read_image("part.png", channels=1).shape  # doctest: +SKIP
        torch.Size([1, 240, 320])
    """
    arr = decode_array(path, channels, limits)
    if arr.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(arr[None]))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def wafer_label(text: str) -> str:
    """A WM-811K class name in its canonical spelling (the published files write ``None``
    or ``none``, ``Edge-ring`` or ``Edge-Ring``); other names are returned stripped."""
    text = text.strip()
    return _CANONICAL.get(text.lower(), text)


class ImageReader:
    """Picklable loader for :class:`~inspectkit.records.LazyImages`: decodes one file with
    :func:`read_image`, under the size limits in effect when the reader was made (the
    set was loaded). Two readers with the same ``channels`` and limits are equal, so lazy
    sets that share one can be joined without decoding."""

    def __init__(
        self, channels: int | None = None, limits: Limits | Mapping[str, int] | None = None
    ) -> None:
        self.channels = channels
        self.limits = as_limits(limits) or get_limits()

    def __call__(self, key: str) -> torch.Tensor:
        return read_image(key, self.channels, self.limits)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageReader)
            and other.channels == self.channels
            and other.limits == self.limits
        )

    def __hash__(self) -> int:
        return hash(("ImageReader", self.channels, self.limits))

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "limits" not in state:  # pickled before readers carried limits
            self.limits = get_limits()


def _palette_is_gray(im: Image.Image) -> bool:
    pal = im.getpalette()
    if not pal:
        return True
    rgb = np.asarray(pal, dtype=np.int32).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def read_mask(
    path: str | os.PathLike[str], limits: Limits | Mapping[str, int] | None = None
) -> torch.Tensor:
    """Decode a mask image to a ``1×H×W`` uint8 tensor of 0 (good) / 1 (defect).

    Pixels of 128 or more (in the gray conversion) count as defect: masks saved as
    0/255 PNGs and masks with soft, anti-aliased borders both binarise sensibly.
    """
    arr = decode_array(path, channels=1, limits=limits)
    limit = 0.5 if arr.dtype.kind == "f" else 128
    return torch.from_numpy((arr >= limit).astype(np.uint8)[None])


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name, hidden files ignored."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def require_dir(path: str | os.PathLike[str], what: str = "folder") -> Path:
    p = Path(path)
    if not p.exists():
        raise file_error(p, f"{what} not found")
    if not p.is_dir():
        raise file_error(p, f"{what} expected, but this is a file")
    return p


def ragged_or_stacked(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One ``N×C×H×W`` tensor when every tensor has the same shape and dtype, else the list."""
    if tensors and len({(tuple(t.shape), t.dtype) for t in tensors}) == 1:
        return torch.stack(tensors)
    return tensors


def unify_dtypes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mixed 8-bit and float images: scale the uint8 ones to float in [0, 1] too."""
    if len({t.dtype for t in tensors}) <= 1:
        return tensors
    return [t if t.dtype.is_floating_point else t.float() / 255.0 for t in tensors]


__all__ = [
    "IMAGE_SUFFIXES",
    "WM811K_CLASSES",
    "Collector",
    "ImageReader",
    "OnError",
    "Unlabelled",
    "check_channels",
    "check_on_error",
    "check_regular_file",
    "decode_array",
    "file_error",
    "image_size",
    "list_images",
    "ragged_or_stacked",
    "read_image",
    "read_mask",
    "require_dir",
    "unify_dtypes",
    "wafer_label",
]
