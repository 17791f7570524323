"""Wafer-map loaders: the ragged ``.npz`` layout of WM-811K splits.

Wafer maps use the LSWMD coding 0 = outside the wafer, 1 = passing die, 2 = failing die,
and vary in size (22–212 × 15–204 in WM-811K). They are returned as a ragged list of
``1×H×W`` uint8 tensors that share memory with the file's flat array; ``Wrangle``
resizes them with nearest neighbour so the codes survive.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npformat

from inspectkit.atomic import atomic_write
from inspectkit.errors import DataError
from inspectkit.records import ImageSet, SampleMeta, printable
from inspectkit.sources._common import (
    WM811K_CLASSES,
    OnError,
    Unlabelled,
    check_regular_file,
    wafer_label,
)
from inspectkit.sources.layout import Layout, register_layout
from inspectkit.sources.limits import Limits, applies_limits, get_limits, over

log = logging.getLogger(__name__)

_NPZ_KEYS = ("flat", "shapes", "offsets", "failure_type")


def _fail(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def _member_header(fh: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from the ``.npy`` header at the start of ``fh`` (nothing else read)."""
    version = npformat.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = npformat.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = npformat.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return tuple(int(d) for d in shape), dtype


def _member_header_checked(
    zf: zipfile.ZipFile, path: Path, key: str, names: dict[str, str]
) -> tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype[Any]]:
    """The ``.npy`` header of one member, checked against the limits and the member's size
    before any of its data is read: (zip entry, shape, dtype)."""
    info = zf.getinfo(names[key])
    limits = get_limits()
    where = f"{path}[{key}]"
    over(where, "bytes the member inflates to", info.file_size, "max_file_bytes", limits)
    with zf.open(info) as fh:
        shape, dtype = _member_header(fh)
        header_len = fh.tell()
    if dtype.hasobject:
        raise _fail(path, f"'{key}' holds Python objects (a pickle); refused")
    count = math.prod(shape)
    claim = f"its .npy header claims shape {shape} of {dtype}"
    over(where, f"{claim}, in bytes", count * dtype.itemsize, "max_file_bytes", limits)
    # flat: every pixel of every map; the others: one entry per map (+1), each map a pixel
    over(where, f"{claim}, in elements", count, "max_archive_pixels", limits)
    if header_len + count * dtype.itemsize != info.file_size:
        raise _fail(
            path,
            f"'{key}' header claims {count:,} elements of {dtype.itemsize} bytes but the "
            f"member holds {info.file_size - header_len:,} bytes of data (a lying header)",
        )
    return info, shape, dtype


def _read_member(zf: zipfile.ZipFile, path: Path, key: str, names: dict[str, str]) -> np.ndarray:
    """One array of the archive, its size checked from its header against the limits."""
    info, _, _ = _member_header_checked(zf, path, key, names)
    with zf.open(info) as fh:
        return npformat.read_array(fh, allow_pickle=False)


def _member_names(zf: zipfile.ZipFile, path: Path) -> dict[str, str]:
    """Key → member name of a wafer-map archive; a ``DataError`` when a key is missing."""
    names = {n.removesuffix(".npy"): n for n in zf.namelist()}
    missing = [k for k in _NPZ_KEYS if k not in names]
    if missing:
        raise _fail(
            path, f"not a wafer-map archive: keys {missing} missing (need {list(_NPZ_KEYS)})"
        )
    return names


def _read_npz(path: Path, *, flat: bool = True) -> dict[str, np.ndarray]:
    """The archive's arrays, each checked from its header before it is read. With
    ``flat=False`` the pixels are not read: ``flat`` is a read-only stand-in of the shape
    and dtype its header gives (for an index of the maps, as archive runs keep)."""
    check_regular_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = _member_names(zf, path)
            arrs = {}
            for key in ("shapes", "offsets", "failure_type"):
                arrs[key] = _read_member(zf, path, key, names)
                if key == "shapes":
                    _check_map_sizes(path, arrs[key])
            if flat:  # the big one, last
                arrs["flat"] = _read_member(zf, path, "flat", names)
            else:
                _, shape, dtype = _member_header_checked(zf, path, "flat", names)
                arrs["flat"] = np.broadcast_to(np.zeros((), dtype=dtype), shape)
            return arrs
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # zipfile/zlib/numpy parsing untrusted bytes
        raise _fail(
            path, f"corrupt or truncated npz archive ({type(exc).__name__}: {exc})"
        ) from None


def _check_map_sizes(path: Path, shapes: np.ndarray) -> None:
    """Refuse a map over ``max_image_pixels`` before the pixels are read."""
    if shapes.ndim != 2 or shapes.shape[1:] != (2,) or not np.issubdtype(shapes.dtype, np.integer):
        return  # _check_layout names the problem
    areas = shapes[:, 0].astype(np.float64) * shapes[:, 1].astype(np.float64)  # cannot overflow
    big = np.flatnonzero(areas > get_limits().max_image_pixels)
    if big.size:
        h, w = (int(v) for v in shapes[big[0]])
        over(path, f"map {int(big[0])} is {h}×{w} pixels", h * w, "max_image_pixels")


def _check_layout(path: Path, arrs: dict[str, np.ndarray]) -> None:
    flat, shapes, offsets, labels = (arrs[k] for k in _NPZ_KEYS)
    if flat.ndim != 1:
        raise _fail(path, f"'flat' must be 1-D, got shape {flat.shape}")
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        bad = int((~np.isfinite(flat)).sum())
        raise _fail(path, f"'flat' holds {bad} NaN/inf values; wafer codes must be 0, 1 or 2")
    if not np.issubdtype(flat.dtype, np.integer):
        raise _fail(path, f"'flat' must hold integer wafer codes, got {flat.dtype}")
    if shapes.ndim != 2 or shapes.shape[1] != 2 or not np.issubdtype(shapes.dtype, np.integer):
        raise _fail(
            path, f"'shapes' must be an N×2 integer array, got {shapes.shape} {shapes.dtype}"
        )
    n = shapes.shape[0]
    if offsets.shape != (n + 1,) or not np.issubdtype(offsets.dtype, np.integer):
        raise _fail(path, f"'offsets' must hold N+1={n + 1} integers, got {offsets.shape}")
    if labels.shape != (n,) or labels.dtype.kind not in "US":
        raise _fail(
            path, f"'failure_type' must hold N={n} strings, got {labels.shape} {labels.dtype}"
        )
    if (shapes <= 0).any():
        raise _fail(path, "'shapes' holds a non-positive height or width")
    if offsets[0] != 0 or offsets[-1] != flat.shape[0] or (np.diff(offsets) < 0).any():
        raise _fail(path, "'offsets' do not partition 'flat' (truncated or inconsistent archive)")
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1].astype(np.int64)
    bad = np.flatnonzero(np.diff(offsets) != sizes)
    if bad.size:
        raise _fail(
            path, f"map {int(bad[0])}: offsets disagree with its shape {tuple(shapes[bad[0]])}"
        )


@applies_limits
def load_wafer_npz(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    unlabelled: Unlabelled = "keep",
    limit: int | None = None,
    classes: list[str] | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load wafer maps from the ragged ``.npz`` layout (keys flat/shapes/offsets/failure_type).

    Args:
        path: The ``.npz`` file.
        on_error: ``"raise"`` stops at a map with codes outside {0, 1, 2};
            ``"skip"`` leaves such maps out and lists them in ``ImageSet.skipped``.
        unlabelled: Keep maps with an empty label (label ``None``) or skip them.
        limit: Read only the first ``limit`` maps (quick looks, tests).
        classes: Class list to use (default: the nine WM-811K types, plus any other
            label found in the file).
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits`,
            or a mapping of the ones to change); default: the process-wide limits.

    Returns:
        An ``ImageSet`` of kind ``"wafer"`` with ragged ``1×H×W`` uint8 maps.

    Raises:
        SizeLimitError: a member's ``.npy`` header, a map or the archive is over the
            limits (checked before the arrays are read).
        DataError: unreadable or inconsistent archive; bad codes (``on_error="raise"``).

    Example:
        >>> from inspectkit.sources import load_wafer_maps
        >>> maps = load_wafer_maps("WM811K_test_data.npz")  # doctest: +SKIP
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if unlabelled not in ("keep", "skip"):
        raise DataError(f"unlabelled must be 'keep' or 'skip', got {unlabelled!r}")
    path = Path(path)
    arrs = _read_npz(path)
    _check_layout(path, arrs)
    flat, shapes, offsets, labels = (arrs[k] for k in _NPZ_KEYS)
    n = shapes.shape[0] if limit is None else min(limit, shapes.shape[0])
    skipped: list[str] = []

    # codes outside {0, 1, 2}: find the maps that hold them without a per-map loop
    head = flat[: offsets[n]]
    bad_pixels = (
        np.flatnonzero((head > 2) | (head < 0))
        if head.dtype.kind == "i"
        else np.flatnonzero(head > 2)
    )
    bad_maps = np.unique(np.searchsorted(offsets, bad_pixels, side="right") - 1)
    if bad_maps.size:
        first = int(bad_maps[0])
        chunk = flat[offsets[first] : offsets[first + 1]]
        value = int(chunk.max()) if chunk.max() > 2 else int(chunk.min())
        if on_error == "raise":
            raise _fail(
                path,
                f"map {first} holds wafer code {value}; codes must be 0 (outside), 1 (pass), "
                f"2 (fail) — pass on_error='skip' to leave such maps out",
            )
        skipped += [f"{path.name}[{int(i)}]: wafer codes outside 0/1/2" for i in bad_maps]
    bad_set = set(bad_maps.tolist())

    # the published splits spell the no-pattern class "None" or "none": one class, "none"
    labels_list = [printable(wafer_label(str(x))) for x in labels[:n].tolist()]
    found = sorted({lab for lab in labels_list if lab})
    class_list = list(classes) if classes is not None else list(WM811K_CLASSES)
    extra = [c for c in found if c not in class_list]
    if extra:
        if classes is not None:
            raise _fail(path, f"labels {extra} are not among the given classes {class_list}")
        class_list += extra

    flat_t = torch.from_numpy(np.ascontiguousarray(flat).astype(np.uint8, copy=False))
    images: list[torch.Tensor] = []
    samples: list[SampleMeta] = []
    stem = printable(path.stem)  # the per-map copies below are not validated
    src = str(path)
    # one validated template, copied with the per-map fields (validated above as a
    # whole): 3-5x faster than constructing 50k models one by one
    template = SampleMeta(id=stem or "map", source=src)
    for i in range(n):
        if i in bad_set:
            continue
        label = labels_list[i] or None
        if label is None and unlabelled == "skip":
            continue
        h, w = int(shapes[i, 0]), int(shapes[i, 1])
        images.append(flat_t[offsets[i] : offsets[i + 1]].view(1, h, w))
        # fields were validated above as a whole; skip per-object validation for speed
        samples.append(
            template.model_copy(
                update={
                    "id": f"{stem}:{i}",
                    "label": label,
                    "meta": {"index": i, "height": h, "width": w},
                }
            )
        )
    if not samples:
        raise _fail(path, "no wafer maps left to load")
    log.info("loaded %d wafer maps from %s (%d skipped)", len(samples), path, len(skipped))
    return ImageSet.build(
        images=images, samples=samples, classes=class_list, kind="wafer", skipped=skipped
    )


def load_wafer_maps(path: str | os.PathLike[str], **kwargs: Any) -> ImageSet:
    """Load wafer maps from a ragged ``.npz`` split or an original ``LSWMD.pkl``.

    The format is chosen by the file's suffix; keyword arguments go to
    :func:`load_wafer_npz` or :func:`inspectkit.sources.lswmd.load_lswmd`.

    Example:
        >>> from inspectkit.sources import load_wafer_maps
        >>> train = load_wafer_maps("WM811K_train_29_split.npz")  # doctest: +SKIP
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_wafer_npz(p, **kwargs)
    if suffix in (".pkl", ".pickle"):
        from inspectkit.sources.lswmd import load_lswmd

        return load_lswmd(p, **kwargs)
    raise DataError(f"{p}: unknown wafer-map format {suffix!r}; expected .npz or .pkl (LSWMD)")


def save_wafer_npz(
    path: str | os.PathLike[str], maps: Sequence[Any], labels: Sequence[str | None]
) -> Path:
    """Write wafer maps in the ragged ``.npz`` layout that :func:`load_wafer_npz` reads.

    Args:
        path: File to write (atomically: a reader never sees half a file).
        maps: ``H×W`` or ``1×H×W`` arrays or tensors of codes 0 (outside), 1 (pass),
            2 (fail); sizes may differ.
        labels: One failure type per map (``None`` or ``""``: unlabelled).

    Returns:
        The path written.

    Raises:
        DataError: different numbers of maps and labels, no maps, a map that is not 2-D,
            or codes outside 0/1/2.

    Example:
        >>> import numpy as np
        >>> from inspectkit.sources import save_wafer_npz
        >>> save_wafer_npz("center.npz", [np.ones((3, 4), np.uint8)], ["Center"])  # doctest: +SKIP
    """
    p = Path(path)
    if len(maps) != len(labels):
        raise DataError(f"{p}: {len(maps)} maps but {len(labels)} labels")
    if not maps:
        raise DataError(f"{p}: no wafer maps to write")
    arrays = []
    for i, m in enumerate(maps):
        a = np.asarray(m)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2 or 0 in a.shape:
            raise DataError(f"{p}: map {i} must be a non-empty H×W array, got shape {a.shape}")
        if a.size and (a.min() < 0 or a.max() > 2 or (a != np.round(a)).any()):
            raise DataError(f"{p}: map {i} holds codes outside 0 (outside), 1 (pass), 2 (fail)")
        arrays.append(a.astype(np.uint8))
    shapes = np.array([a.shape for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
    flat = np.concatenate([a.ravel() for a in arrays])
    names = np.array(["" if lab is None else str(lab) for lab in labels], dtype=str)
    atomic_write(
        p,
        lambda fh: np.savez_compressed(
            fh, flat=flat, shapes=shapes, offsets=offsets, failure_type=names
        ),
    )
    return p


def _load_layout(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    unlabelled = "keep" if purpose == "predict" else "skip"
    return load_wafer_npz(path, unlabelled=unlabelled, limit=limit, on_error=on_error)


WAFER_NPZ = register_layout(
    Layout(
        name="wafer-npz",
        detect=lambda p: p.is_file() and p.suffix.lower() == ".npz",
        load=_load_layout,
        priority=90,
        description="WM-811K ragged .npz (flat, shapes, offsets, failure_type)",
        on_error=True,
    )
)

__all__ = ["WAFER_NPZ", "WM811K_CLASSES", "load_wafer_maps", "load_wafer_npz", "save_wafer_npz"]
