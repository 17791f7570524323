"""Folder layouts of photos: one sub-folder per class, MVTec AD, magnetic tile, and plain
image files.

All of them read images through PIL (:func:`inspectkit.sources._common.read_image`) and
return an :class:`~inspectkit.records.ImageSet` of kind ``"image"``: one ``N×C×H×W``
tensor when every image has the same size, else a ragged list of ``C×H×W`` tensors.
With ``lazy=True`` only file headers are read while loading and the pixels are decoded
on demand (:class:`~inspectkit.records.LazyImages`); a file that turns out corrupt then
raises :class:`~inspectkit.errors.DataError` naming it when it is first decoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from inspectkit.errors import DataError
from inspectkit.records import ImageData, ImageSet, LazyImages, SampleMeta
from inspectkit.sources._common import (
    IMAGE_SUFFIXES,
    Collector,
    ImageReader,
    OnError,
    check_channels,
    file_error,
    image_size,
    list_images,
    ragged_or_stacked,
    read_image,
    read_mask,
    require_dir,
    unify_dtypes,
)
from inspectkit.sources.layout import Layout, register_layout
from inspectkit.sources.limits import Limits, applies_limits, get_limits

log = logging.getLogger(__name__)


@dataclass
class _Item:
    image: Path
    label: str | None
    id: str
    mask: Path | None = None
    empty_mask: bool = False
    split: Literal["train", "val", "test"] | None = None
    meta: dict[str, str | int | float | bool | None] | None = None


class MaskReader:
    """Picklable loader of lazy masks: key ``("mask", path)`` reads a mask file,
    ``("empty", image path)`` gives an all-good mask of that image's size; under the size
    limits in effect when the set was loaded."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else get_limits()

    def __call__(self, key: tuple[str, str]) -> torch.Tensor:
        kind, path = key
        if kind == "empty":
            h, w = image_size(path, self.limits)
            return torch.zeros((1, h, w), dtype=torch.uint8)
        return read_mask(path, self.limits)


def _materialize_items(
    items: list[_Item],
    *,
    channels: int | None,
    collector: Collector,
    lazy: bool,
    with_masks: bool,
) -> tuple[ImageData, ImageData | None, list[_Item]]:
    """Decode (or, lazily, check headers of) every item; drop failures per ``collector``."""
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    kept: list[_Item] = []
    for item in items:

        def one(item: _Item = item) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            if lazy:
                size = image_size(item.image)
                img = None
            else:
                img = read_image(item.image, channels)
                size = (int(img.shape[-2]), int(img.shape[-1]))
            mask = None
            if with_masks:
                if item.empty_mask:
                    mask = None if lazy else torch.zeros((1, *size), dtype=torch.uint8)
                else:
                    assert item.mask is not None
                    if lazy:
                        msize = image_size(item.mask)
                    else:
                        mask = read_mask(item.mask)
                        msize = (int(mask.shape[-2]), int(mask.shape[-1]))
                    if msize != size:
                        raise file_error(
                            item.mask,
                            f"mask is {msize[0]}x{msize[1]} (H×W) but its image "
                            f"{item.image.name} is {size[0]}x{size[1]}",
                        )
            return img, mask

        got = collector.attempt(one)
        if got is None:
            continue
        img, mask = got
        kept.append(item)
        if not lazy:
            assert img is not None
            images.append(img)
            if with_masks:
                assert mask is not None
                masks.append(mask)
    if lazy:
        image_data: ImageData = LazyImages([str(i.image) for i in kept], ImageReader(channels))
        mask_data: ImageData | None = None
        if with_masks:
            keys = [
                ("empty", str(i.image)) if i.empty_mask else ("mask", str(i.mask)) for i in kept
            ]
            mask_data = LazyImages(keys, MaskReader())
        return image_data, mask_data, kept
    images = unify_dtypes(images)
    return ragged_or_stacked(images), (ragged_or_stacked(masks) if with_masks else None), kept


def _build(
    items: list[_Item],
    classes: list[str],
    *,
    channels: int | None,
    collector: Collector,
    lazy: bool,
    with_masks: bool,
    where: Path,
) -> ImageSet:
    images, masks, kept = _materialize_items(
        items, channels=channels, collector=collector, lazy=lazy, with_masks=with_masks
    )
    if not kept:
        detail = f" ({len(collector.skipped)} skipped as unreadable)" if collector.skipped else ""
        raise file_error(where, f"no readable images found{detail}")
    samples = [
        SampleMeta(
            id=i.id,
            source=str(i.image),
            label=i.label,
            split=i.split,
            meta=dict(i.meta or {}),
        )
        for i in kept
    ]
    log.info("loaded %d images from %s (%d skipped)", len(kept), where, len(collector.skipped))
    return ImageSet.build(
        images=images, masks=masks, samples=samples, classes=classes, skipped=collector.skipped
    )


def _check_limit(limit_per_class: int | None) -> None:
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be at least 1, got {limit_per_class}")


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@applies_limits
def load_image_folder(
    root: str | os.PathLike[str],
    *,
    classes: list[str] | None = None,
    on_error: OnError = "raise",
    lazy: bool = False,
    channels: int | None = None,
    limit_per_class: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load ``root/<class>/<image>`` files: one sub-folder per class.

    Args:
        root: Folder holding one sub-folder per class.
        classes: The expected class names (their order is kept). A sub-folder whose name
            is not among them is an error (``on_error="skip"``: it is left out and listed
            in ``skipped``). Default: every sub-folder, sorted.
        on_error: ``"raise"`` stops at the first unreadable image; ``"skip"`` leaves it
            out and records ``"<file>: <reason>"`` in ``ImageSet.skipped``.
        lazy: Decode pixels on demand instead of now.
        channels: 1 (gray) or 3 (RGB); ``None`` keeps gray files gray and makes every
            colour file RGB.
        limit_per_class: Read only the first ``n`` images (by file name) of each class.
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or a
            mapping of the ones to change); default: the process-wide limits.

    Returns:
        An ``ImageSet`` labelled by folder name; sample ids are ``"<class>/<file name>"``.

    Raises:
        DataError: missing or empty folder, unknown class folder, unreadable image.

    Example:
        >>> from inspectkit.sources import load_image_folder
        >>> parts = load_image_folder("pcb/train", classes=["ok", "short"])  # doctest: +SKIP
    """
    check_channels(channels)
    _check_limit(limit_per_class)
    collector = Collector(on_error)
    base = require_dir(root, "image folder")
    folders = _subfolders(base)
    if classes is not None:
        if len(set(classes)) != len(classes) or not classes:
            raise DataError(f"classes must be distinct and non-empty, got {classes}")
        class_list = list(classes)
        for f in folders:
            if f.name not in class_list:
                collector.skip(f, f"unknown class name {f.name!r}; expected one of {class_list}")
        folders = [f for f in folders if f.name in class_list]
    else:
        class_list = [f.name for f in folders]
    items: list[_Item] = []
    for f in folders:
        files = list_images(f)[:limit_per_class]
        if not files:
            log.warning("class folder %s holds no images", f)
        items += [_Item(image=p, label=f.name, id=f"{f.name}/{p.name}") for p in files]
    if not items:
        raise file_error(
            base, "no images found: expected one sub-folder per class holding image files"
        )
    return _build(
        items,
        class_list,
        channels=channels,
        collector=collector,
        lazy=lazy,
        with_masks=False,
        where=base,
    )


@applies_limits
def load_mvtec(
    root: str | os.PathLike[str],
    category: str | None = None,
    split: Literal["train", "test"] = "train",
    *,
    on_error: OnError = "raise",
    lazy: bool = False,
    channels: int | None = None,
    limit_per_class: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load one category of the MVTec AD layout.

    Layout: ``train/good/*.png``, ``test/<defect>/*.png`` (``good`` among them) and
    ``ground_truth/<defect>/<name>_mask.png``. Labels are ``"good"`` or the defect type;
    every sample has a mask (empty for good images), binarised to 0/1, and
    ``meta["anomalous"]``; ``SampleMeta.split`` is ``"train"`` or ``"test"``.

    Args:
        root: The data set root (with ``category``) or the category folder itself.
        category: Category sub-folder name (``"bottle"``, ``"grid"``, ...).
        split: ``"train"`` (good images only) or ``"test"``.
        on_error: ``"raise"`` or ``"skip"`` (see :func:`load_image_folder`).
        lazy: Decode pixels on demand.
        channels: 1, 3 or ``None`` (keep).
        limit_per_class: Read only the first ``n`` images (by file name) of each folder.
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or a
            mapping of the ones to change); default: the process-wide limits.

    Example:
        >>> from inspectkit.sources import load_mvtec
        >>> test = load_mvtec("mvtec_ad", "bottle", split="test")  # doctest: +SKIP
    """
    check_channels(channels)
    _check_limit(limit_per_class)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    collector = Collector(on_error)
    base = require_dir(Path(root) / category if category else root, "MVTec category folder")
    split_dir = require_dir(base / split, f"MVTec {split} folder")
    folders = _subfolders(split_dir)
    if split == "train":
        folders = [f for f in folders if f.name == "good"]
        if not folders:
            raise file_error(
                split_dir, "no 'good' folder: MVTec training images live in train/good"
            )
    defects = sorted(f.name for f in folders if f.name != "good")
    class_list = ["good", *defects]
    items: list[_Item] = []
    for f in folders:
        good = f.name == "good"
        for p in list_images(f)[:limit_per_class]:
            mask = None if good else base / "ground_truth" / f.name / f"{p.stem}_mask.png"
            items.append(
                _Item(
                    image=p,
                    label=f.name,
                    id=f"{split}/{f.name}/{p.name}",
                    mask=mask,
                    empty_mask=good,
                    split=split,
                    meta={"anomalous": not good, "category": base.name},
                )
            )
    if not items:
        raise file_error(split_dir, "no images found")
    checked: list[_Item] = []
    for item in items:
        if item.mask is not None and not item.mask.is_file():
            collector.skip(item.image, f"its mask {item.mask} is missing")
            continue
        checked.append(item)
    return _build(
        checked,
        class_list,
        channels=channels,
        collector=collector,
        lazy=lazy,
        with_masks=True,
        where=split_dir,
    )


@applies_limits
def load_magnetic_tile(
    root: str | os.PathLike[str],
    *,
    classes: list[str] | None = None,
    on_error: OnError = "raise",
    lazy: bool = False,
    limit_per_class: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load the magnetic-tile defect layout: ``MT_<Class>/Imgs/NAME.jpg`` + ``NAME.png`` mask.

    Images are grayscale (1 channel, uint8) and vary in size, so ``images`` is a ragged
    list unless every loaded image has one size; masks are ``1×H×W`` uint8 0/1 (a mask
    pixel of 128 or more is defect). Labels are the folder names without ``MT_``
    (``"Free"``, ``"Blowhole"``, ``"Break"``, ``"Crack"``, ``"Fray"``, ``"Uneven"``);
    ``meta["anomalous"]`` is False for ``Free``.

    Args:
        root: Folder holding the ``MT_*`` folders.
        classes: Load only these classes (e.g. ``["Free", "Blowhole"]``); a name with no
            ``MT_<name>`` folder is an error. Default: every ``MT_*`` folder, sorted.
        on_error: ``"raise"`` or ``"skip"`` (see :func:`load_image_folder`); a missing
            mask or one whose size differs from its image counts as an error.
        lazy: Decode pixels on demand.
        limit_per_class: Read only the first ``n`` images (by file name) of each class.
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or a
            mapping of the ones to change); default: the process-wide limits.

    Example:
        >>> from inspectkit.sources import load_magnetic_tile
        >>> tiles = load_magnetic_tile("data/magnetic_tile", classes=["Free", "Crack"])  # doctest: +SKIP
    """
    collector = Collector(on_error)
    base = require_dir(root, "magnetic-tile folder")
    found = {f.name[3:]: f for f in _subfolders(base) if f.name.startswith("MT_")}
    if not found:
        raise file_error(base, "no MT_<class> folders found (expected e.g. MT_Free/Imgs/*.jpg)")
    if classes is not None:
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise file_error(
                base, f"unknown class name(s) {unknown}; this folder has {sorted(found)}"
            )
        if len(set(classes)) != len(classes):
            raise DataError(f"classes must be distinct, got {classes}")
        class_list = list(classes)
    else:
        class_list = sorted(found)
    _check_limit(limit_per_class)
    items: list[_Item] = []
    for name in class_list:
        folder = found[name] / "Imgs"
        if not folder.is_dir():
            folder = found[name]
        files = [p for p in list_images(folder) if p.suffix.lower() != ".png"]
        if limit_per_class is not None:
            files = files[:limit_per_class]
        if not files:
            collector.skip(folder, "no images (.jpg) found in this class folder")
        for p in files:
            mask = p.with_suffix(".png")
            if not mask.is_file():
                collector.skip(p, f"its mask {mask.name} is missing")
                continue
            items.append(
                _Item(
                    image=p,
                    label=name,
                    id=f"{name}/{p.stem}",
                    mask=mask,
                    meta={"anomalous": name != "Free"},
                )
            )
    return _build(
        items, class_list, channels=1, collector=collector, lazy=lazy, with_masks=True, where=base
    )


@applies_limits
def load_image_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    channels: int | None = None,
    limit: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Unlabelled images from files and folders (searched recursively), decoded lazily.

    The inputs of ``predict``/``explain``: only file names are read here, pixels when a
    batch is needed (under the size limits in effect now, or ``limits=``), so a folder
    of 100,000 parts is fine. Sample ids and sources are the
    file paths (a repeated path gets ``'`` appended to its id); hidden files and folders
    are ignored.

    Raises:
        DataError: a folder holds no image files (a corrupt file is named when decoded).

    Example:
        >>> from inspectkit.sources import load_image_files
        >>> parts = load_image_files(["line3/", "extra.png"], channels=1)  # doctest: +SKIP
    """
    check_channels(channels)
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            files.append(p)
            continue
        found = sorted(
            q
            for q in p.rglob("*")
            if q.is_file()
            and q.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in q.relative_to(p).parts)
        )
        if not found:
            raise file_error(p, "the folder holds no image files")
        files += found
    files = files[:limit]
    taken: set[str] = set()
    samples = []
    for f in files:
        sid = str(f)
        while sid in taken:
            sid += "'"
        taken.add(sid)
        samples.append(SampleMeta(id=sid, source=str(f)))
    return ImageSet.build(
        images=LazyImages([str(f) for f in files], ImageReader(channels)),
        samples=samples,
        classes=[],
    )


# ---------------------------------------------------------------------- layouts
def _has_images(folder: Path) -> bool:
    try:
        return any(
            p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            for p in folder.iterdir()
        )
    except OSError:
        return False


def _subdirs(path: Path) -> list[Path]:
    try:
        return _subfolders(path) if path.is_dir() else []
    except OSError:
        return []


def _predict(path: Path, channels: int | None, limit: int | None) -> ImageSet:
    return load_image_files([path], channels=channels, limit=limit)


def _load_mvtec(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    if purpose == "predict":  # the parts, not the ground-truth masks
        parts = [path / d for d in ("train", "test") if (path / d).is_dir()]
        return load_image_files(parts, channels=channels, limit=limit)
    split = "train" if (task == "anomaly" and purpose == "train") else "test"
    return load_mvtec(
        path, split=split, channels=channels, limit_per_class=limit, on_error=on_error
    )


def _load_tiles(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    if purpose == "predict":  # the .jpg parts, not their .png masks
        parts = [
            f
            for d in _subfolders(path)
            if d.name.startswith("MT_")
            for f in list_images(d / "Imgs" if (d / "Imgs").is_dir() else d)
            if f.suffix.lower() != ".png"
        ]
        if not parts:
            raise file_error(path, "no images (.jpg) found in the MT_<class> folders")
        return load_image_files(parts, channels=1, limit=limit)
    return load_magnetic_tile(path, limit_per_class=limit, on_error=on_error)


def _load_classes(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    if purpose == "predict":
        return _predict(path, channels, limit)
    return load_image_folder(path, channels=channels, limit_per_class=limit, on_error=on_error)


def _load_plain(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    if purpose == "predict" or (purpose == "train" and task == "anomaly"):
        return _predict(path, channels, limit)  # unlabelled parts count as good
    raise file_error(
        path,
        "a flat folder of images has no labels; put each class in its own "
        "sub-folder (data/<class>/*.png)",
    )


MVTEC = register_layout(
    Layout(
        name="mvtec",
        detect=lambda p: p.is_dir() and (p / "train" / "good").is_dir(),
        load=_load_mvtec,
        priority=80,
        description="MVTec AD category: train/good, test/<defect>, ground_truth/<defect>",
        on_error=True,
    )
)
MAGNETIC_TILE = register_layout(
    Layout(
        name="magnetic-tile",
        detect=lambda p: any(d.name.startswith("MT_") for d in _subdirs(p)),
        load=_load_tiles,
        priority=70,
        description="magnetic tile: MT_<class>/Imgs/NAME.jpg + NAME.png masks",
        on_error=True,
    )
)
CLASS_FOLDERS = register_layout(
    Layout(
        name="class-folders",
        detect=lambda p: any(_has_images(d) for d in _subdirs(p)),
        load=_load_classes,
        priority=20,
        description="one sub-folder of images per class: root/<class>/*.png",
        on_error=True,
    )
)
IMAGES = register_layout(
    Layout(
        name="images",
        detect=lambda p: (
            p.suffix.lower() in IMAGE_SUFFIXES if p.is_file() else p.is_dir() and _has_images(p)
        ),
        load=_load_plain,
        priority=10,
        description="image files or a flat folder of them (unlabelled)",
        on_error=True,
    )
)

__all__ = [
    "CLASS_FOLDERS",
    "IMAGES",
    "MAGNETIC_TILE",
    "MVTEC",
    "load_image_files",
    "load_image_folder",
    "load_magnetic_tile",
    "load_mvtec",
]
