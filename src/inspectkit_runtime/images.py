"""Reading inputs the way the inspectkit library reads them, with PIL and NumPy only.

* :func:`decode_image` is the library's decoder (``inspectkit.sources``): 8-bit files
  become uint8 (``channels=None`` keeps gray as one channel and turns every colour mode
  into RGB), 16- and 32-bit integer files float32 in [0, 1], float TIFFs stay float32.
* :func:`read_wafer_npz` reads the ragged wafer-map ``.npz`` layout (``flat``,
  ``shapes``, ``offsets``; ``failure_type`` optional here) into ``H×W`` uint8 code maps.
* :func:`collect_inputs` turns paths (image files, folders of images, wafer ``.npz``)
  into ``(id, array)`` pairs, read one at a time.

Arrays are ``H×W`` (one channel) or ``H×W×C``.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image

from inspectkit_runtime.errors import InputError

Source = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

#: File suffixes treated as images when a folder is listed.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA", "P;L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_FLOAT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
WAFER_KEYS = ("flat", "shapes", "offsets")


def _name(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, str | os.PathLike):
        return str(source)
    return "<upload>"


def _open(source: Source, where: str) -> Image.Image:
    if isinstance(source, str | os.PathLike) and not Path(source).is_file():
        raise InputError(f"{where}: file not found")
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(handle)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{where}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


def _palette_is_gray(im: Image.Image) -> bool:
    pal = im.getpalette()
    if not pal:
        return True
    rgb = np.asarray(pal, dtype=np.int32).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def decode_image(
    source: Source, channels: int | None = None, *, name: str | None = None
) -> np.ndarray:
    """Decode one image (a path, bytes or a binary file object) to ``H×W`` or ``H×W×3``.

    Raises:
        InputError: naming the input, for a missing, corrupt, truncated, oversized or
            non-finite image.

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("L", (4, 3), 7).save(buf, "PNG")
        >>> decode_image(buf.getvalue()).shape
        (3, 4)
    """
    if channels not in (None, 1, 3):
        raise InputError(f"channels must be None, 1 or 3, got {channels!r}")
    where = _name(source, name)
    with _open(source, where) as im:
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(
                f"{where}: corrupt or truncated image ({type(exc).__name__}: {exc})"
            ) from None
        mode = im.mode
        if mode in _FLOAT_MODES:
            arr = np.array(im, dtype=np.float32)
            if mode != "F":
                arr = arr / (65535.0 if mode.startswith("I;16") else float(max(1, arr.max())))
            elif not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                raise InputError(f"{where}: float image holds {bad} NaN/inf pixels")
            if channels == 3:
                arr = np.repeat(arr[..., None], 3, axis=2)
            return arr
        gray = mode in _GRAY_MODES or (mode == "P" and _palette_is_gray(im))
        want = channels if channels is not None else (1 if gray else 3)
        target = "L" if want == 1 else "RGB"
        try:
            converted = im.convert(target) if mode != target else im
            return np.array(converted, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise InputError(f"{where}: cannot convert {mode} image to {target} ({exc})") from None


def read_wafer_npz(source: Source, *, name: str | None = None) -> list[np.ndarray]:
    """Every map of a ragged wafer ``.npz`` (``flat``, ``shapes``, ``offsets``) as an
    ``H×W`` uint8 array of codes 0 (outside), 1 (pass), 2 (fail).

    Raises:
        InputError: naming the file, for a missing key, an inconsistent layout or a code
            outside 0/1/2.
    """
    where = _name(source, name)
    if isinstance(source, str | os.PathLike) and not Path(source).is_file():
        raise InputError(f"{where}: file not found")
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with np.load(handle, allow_pickle=False) as npz:  # type: ignore[arg-type]
            missing = [k for k in WAFER_KEYS if k not in npz.files]
            if missing:
                raise InputError(f"{where}: not a wafer-map archive: keys {missing} missing")
            flat, shapes, offsets = (npz[k] for k in WAFER_KEYS)
    except InputError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"{where}: corrupt or truncated npz archive ({type(exc).__name__}: {exc})"
        ) from None
    if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
        raise InputError(f"{where}: 'flat' must be a 1-D array of integer wafer codes")
    if shapes.ndim != 2 or shapes.shape[1] != 2 or not np.issubdtype(shapes.dtype, np.integer):
        raise InputError(f"{where}: 'shapes' must be an N×2 integer array")
    n = shapes.shape[0]
    if offsets.shape != (n + 1,) or not np.issubdtype(offsets.dtype, np.integer):
        raise InputError(f"{where}: 'offsets' must hold N+1={n + 1} integers")
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1].astype(np.int64)
    if (shapes <= 0).any() or offsets[0] != 0 or offsets[-1] != flat.shape[0]:
        raise InputError(f"{where}: 'shapes'/'offsets' do not partition 'flat'")
    if (np.diff(offsets) != sizes).any():
        raise InputError(f"{where}: offsets disagree with the map shapes")
    if flat.size and (flat.max() > 2 or flat.min() < 0):
        raise InputError(f"{where}: wafer codes must be 0 (outside), 1 (pass) or 2 (fail)")
    flat = flat.astype(np.uint8, copy=False)
    return [
        flat[offsets[i] : offsets[i + 1]].reshape(int(shapes[i, 0]), int(shapes[i, 1]))
        for i in range(n)
    ]


def is_wafer_file(path: str | os.PathLike[str]) -> bool:
    """A ``.npz`` file (the wafer-map layout)."""
    return Path(path).suffix.lower() == ".npz"


def _listed(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.suffix.lower() in IMAGE_SUFFIXES
    )


def collect_inputs(
    paths: Sequence[str | os.PathLike[str]], *, kind: str = "image", channels: int | None = None
) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(id, source, array)`` for every input under ``paths``, decoded one at a time:
    image files, folders (their images, recursively, sorted), wafer ``.npz`` files (one
    id per map, ``STEM:INDEX``, as the library names them). ``kind`` is the model's kind
    of input; a path of the other kind is an :class:`InputError`."""
    if not paths:
        raise InputError("no inputs given")
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = _listed(p)
            if not files:
                raise InputError(f"{p}: holds no images")
            if kind == "wafer":
                raise InputError(f"{p}: this model reads wafer maps (.npz), not images")
            for f in files:
                yield str(f), str(f), decode_image(f, channels)
        elif is_wafer_file(p):
            if kind != "wafer":
                raise InputError(f"{p}: this model reads images, not wafer maps")
            for i, m in enumerate(read_wafer_npz(p)):
                yield f"{p.stem}:{i}", str(p), m
        else:
            if kind == "wafer":
                raise InputError(f"{p}: this model reads wafer maps (.npz), not images")
            yield str(p), str(p), decode_image(p, channels)


__all__ = [
    "IMAGE_SUFFIXES",
    "collect_inputs",
    "decode_image",
    "is_wafer_file",
    "read_wafer_npz",
]
