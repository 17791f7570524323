"""Pascal-VOC box annotations: one XML per image (e.g. the NEU-DET steel strip set).

Each XML names its image in ``<filename>`` and lists ``<object>`` elements with a
``<name>`` and a ``<bndbox>`` (xmin, ymin, xmax, ymax in pixels). The XML is parsed with
the standard library after refusing any document that declares a DTD or entities, so
an "entity expansion" (billion laughs) or external-entity file cannot run.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from inspectkit.errors import DataError
from inspectkit.records import Box, ImageData, ImageSet, LazyImages, SampleMeta
from inspectkit.sources._common import (
    IMAGE_SUFFIXES,
    Collector,
    ImageReader,
    OnError,
    check_channels,
    check_regular_file,
    file_error,
    image_size,
    ragged_or_stacked,
    read_image,
    require_dir,
    unify_dtypes,
)
from inspectkit.sources.layout import Layout, register_layout
from inspectkit.sources.limits import Limits, applies_limits, get_limits, over

log = logging.getLogger(__name__)

LabelFrom = Literal["prefix", "objects", "none"]

_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PREFIX = re.compile(r"^(.+?)_?(\d+)$")


@dataclass
class _Annotation:
    xml: Path
    image: Path
    width: int | None
    height: int | None
    boxes: list[Box]


def _text(el: ET.Element, tag: str, xml: Path) -> str:
    found = el.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise file_error(xml, f"<{tag}> is missing or empty")
    return found.text.strip()


def _number(el: ET.Element, tag: str, xml: Path) -> float:
    raw = _text(el, tag, xml)
    try:
        value = float(raw)
    except ValueError:
        raise file_error(xml, f"<{tag}> is {raw!r}, not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise file_error(xml, f"<{tag}> is {raw!r}, not a finite number")
    return value


@applies_limits
def parse_voc_xml(
    xml: str | os.PathLike[str],
    images_dir: Path | None = None,
    *,
    limits: Limits | Mapping[str, int] | None = None,
) -> _Annotation:
    """Parse one Pascal-VOC annotation, refusing DTD/entity declarations.

    At most ``max_xml_bytes`` (:class:`~inspectkit.sources.limits.Limits`, 1 MiB) are
    read; a larger file, and anything but a regular file (``/dev/zero``, a pipe), is
    refused.

    Raises:
        SizeLimitError: the file holds more than ``max_xml_bytes``.
        DataError: naming the file for malformed XML, a DTD, missing fields, or boxes that
            are empty, inverted or outside the ``<size>`` the file declares.
    """
    path = Path(xml)
    return _parse(path, _read_xml(path), images_dir)


def _read_xml(path: Path) -> bytes:
    """At most ``max_xml_bytes`` (+1, to tell a larger file) of a regular file."""
    limit = get_limits().max_xml_bytes
    check_regular_file(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)  # bounded: a file growing meanwhile is still refused
    except OSError as exc:
        raise file_error(path, f"cannot read annotation ({exc.strerror or exc})") from None
    over(path, "annotation size in bytes (at least)", len(raw), "max_xml_bytes")
    return raw


def _parse(path: Path, raw: bytes, images_dir: Path | None) -> _Annotation:
    if _DTD.search(raw):
        raise file_error(
            path, "XML declares a DTD or entities; refused (possible entity-expansion attack)"
        )
    try:
        root = ET.fromstring(raw)
    except (ET.ParseError, ValueError, RecursionError) as exc:
        raise file_error(path, f"malformed XML ({type(exc).__name__}: {exc})") from None
    if root.tag != "annotation":
        raise file_error(path, f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    filename = (root.findtext("filename") or "").strip()
    width = height = None
    size_el = root.find("size")
    if size_el is not None and size_el.find("width") is not None:
        width = int(_number(size_el, "width", path))
        height = int(_number(size_el, "height", path))
        if width <= 0 or height <= 0:  # some VOC exports write 0: size unknown
            width = height = None
    boxes: list[Box] = []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        bb = obj.find("bndbox")
        if bb is None:
            raise file_error(path, f"object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_number(bb, k, path) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
            raise file_error(
                path, f"box of {name!r} ({x0}, {y0}, {x1}, {y1}) is empty, inverted or negative"
            )
        if width is not None and height is not None and (x1 > width or y1 > height):
            raise file_error(
                path,
                f"box of {name!r} ({x0}, {y0}, {x1}, {y1}) lies outside the {width}x{height} image",
            )
        boxes.append(Box(label=name, xmin=x0, ymin=y0, xmax=x1, ymax=y1))
    base = images_dir if images_dir is not None else path.parent
    image = _find_image(base, filename, path.stem)
    if image is None:
        raise file_error(path, f"its image {filename or path.stem + '.*'} is not in {base}")
    return _Annotation(xml=path, image=image, width=width, height=height, boxes=boxes)


def _find_image(folder: Path, filename: str, stem: str) -> Path | None:
    if filename:
        cand = folder / Path(filename).name
        if cand.is_file():
            return cand
        if not Path(filename).suffix:  # some exports omit the extension
            stem = Path(filename).name
    for suffix in sorted(IMAGE_SUFFIXES):
        for s in (suffix, suffix.upper()):
            cand = folder / f"{stem}{s}"
            if cand.is_file():
                return cand
    return None


def _label(ann: _Annotation, label_from: LabelFrom) -> str | None:
    if label_from == "none":
        return None
    if label_from == "prefix":
        m = _PREFIX.match(ann.image.stem)
        if m:
            return m.group(1)
        # no "<class>_<number>" name: fall back to the objects
    names = {b.label for b in ann.boxes}
    if len(names) != 1:
        raise file_error(
            ann.xml,
            f"cannot tell the image's class: objects name {sorted(names) or 'nothing'}; "
            "use label_from='prefix' with '<class>_<n>' file names or label_from='none'",
        )
    return names.pop()


@applies_limits
def load_voc(
    images_dir: str | os.PathLike[str],
    annotations_dir: str | os.PathLike[str],
    *,
    classes: list[str] | None = None,
    on_error: OnError = "raise",
    lazy: bool = False,
    channels: int | None = None,
    label_from: LabelFrom = "prefix",
    limit: int | None = None,
    limits: Limits | Mapping[str, int] | None = None,
) -> ImageSet:
    """Load images with Pascal-VOC box annotations (one XML per image).

    Every XML in ``annotations_dir`` (sorted by name) gives one sample: its image (from
    ``<filename>``, else the XML's stem) and its boxes as :class:`~inspectkit.records.Box`
    records in pixel coordinates. The image's class label comes from ``label_from``:

    * ``"prefix"`` — the file name before a trailing number (``rolled-in_scale_12.jpg`` →
      ``rolled-in_scale``), the convention of NEU-DET; a name without such a number falls
      back to ``"objects"``;
    * ``"objects"`` — the one name all its boxes share (an error when they disagree);
    * ``"none"`` — unlabelled (detection data only).

    Box labels are checked too: in NEU-DET an image of one class may hold boxes of
    another class (e.g. ``inclusion`` boxes on a ``scratches`` image).

    Args:
        images_dir: Folder of the images.
        annotations_dir: Folder of the XML files.
        classes: The allowed class names; an image or box label outside them is an error
            (``on_error="skip"``: that file is skipped). Default: every name found, sorted.
        on_error: ``"raise"`` stops at the first bad file; ``"skip"`` leaves it out and
            lists ``"<file>: <reason>"`` in ``ImageSet.skipped``.
        lazy: Decode pixels on demand (sizes are still checked from the file headers).
        channels: 1, 3, or ``None`` (keep: NEU-DET's JPEGs are RGB with equal channels).
        label_from: ``"prefix"``, ``"objects"`` or ``"none"`` (see above).
        limit: Read only the first ``limit`` annotations.
        limits: Size limits for this call (:class:`~inspectkit.sources.limits.Limits` or a
            mapping of the ones to change); default: the process-wide limits.

    Example:
        >>> from inspectkit.sources import load_voc
        >>> steel = load_voc("neu_det/IMAGES", "neu_det/ANNOTATIONS", channels=1)  # doctest: +SKIP
        >>> steel.boxes[0][0].label  # doctest: +SKIP
        'crazing'
    """
    check_channels(channels)
    if label_from not in ("prefix", "objects", "none"):
        raise DataError(f"label_from must be 'prefix', 'objects' or 'none', got {label_from!r}")
    collector = Collector(on_error)
    img_dir = require_dir(images_dir, "images folder")
    ann_dir = require_dir(annotations_dir, "annotations folder")
    xmls = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}")
        xmls = xmls[:limit]
    if not xmls:
        raise file_error(ann_dir, "no .xml annotation files found")
    allowed = set(classes) if classes is not None else None

    images: list[torch.Tensor] = []
    keys: list[str] = []
    boxes: list[list[Box]] = []
    samples: list[SampleMeta] = []
    found: set[str] = set()
    for xml in xmls:

        def one(xml: Path = xml) -> tuple[_Annotation, str | None, torch.Tensor | None]:
            ann = parse_voc_xml(xml, img_dir)
            label = _label(ann, label_from)
            if allowed is not None:
                names = {b.label for b in ann.boxes} | ({label} if label is not None else set())
                bad = sorted(names - allowed)
                if bad:
                    raise file_error(xml, f"unknown class name(s) {bad}; expected one of {classes}")
            if lazy:
                h, w = image_size(ann.image)
                img = None
            else:
                img = read_image(ann.image, channels)
                h, w = int(img.shape[-2]), int(img.shape[-1])
            if ann.width is not None and (ann.width, ann.height) != (w, h):
                raise file_error(
                    ann.image,
                    f"image is {w}x{h} (W×H) but {xml.name} declares {ann.width}x{ann.height}",
                )
            outside = [b for b in ann.boxes if b.xmax > w or b.ymax > h]
            if outside:
                b = outside[0]
                raise file_error(
                    xml,
                    f"box of {b.label!r} ({b.xmin}, {b.ymin}, {b.xmax}, {b.ymax}) "
                    f"lies outside the {w}x{h} image",
                )
            return ann, label, img

        got = collector.attempt(one)
        if got is None:
            continue
        ann, label, img = got
        if img is not None:
            images.append(img)
        keys.append(str(ann.image))
        boxes.append(ann.boxes)
        found.update(b.label for b in ann.boxes)
        if label is not None:
            found.add(label)
        samples.append(
            SampleMeta(
                id=ann.image.name,
                source=str(ann.image),
                label=label,
                meta={"annotation": str(ann.xml), "n_boxes": len(ann.boxes)},
            )
        )
    if not samples:
        raise file_error(ann_dir, f"no usable annotated images ({len(collector.skipped)} skipped)")
    class_list = list(classes) if classes is not None else sorted(found)
    data: ImageData = (
        LazyImages(keys, ImageReader(channels)) if lazy else ragged_or_stacked(unify_dtypes(images))
    )
    log.info(
        "loaded %d annotated images from %s (%d skipped)",
        len(samples),
        ann_dir,
        len(collector.skipped),
    )
    return ImageSet.build(
        images=data, boxes=boxes, samples=samples, classes=class_list, skipped=collector.skipped
    )


# ---------------------------------------------------------------------- layout
#: Sub-folder names (lower case) of a VOC tree: NEU-DET's IMAGES/ANNOTATIONS, VOC's
#: JPEGImages/Annotations.
IMAGE_FOLDERS = ("images", "jpegimages")
ANNOTATION_FOLDERS = ("annotations",)


def voc_folders(path: Path) -> tuple[Path, Path] | None:
    """``(images, annotations)`` sub-folders of a VOC tree, or ``None`` if ``path`` is not one."""
    try:
        if not path.is_dir():
            return None
        subdirs = {d.name.lower(): d for d in sorted(path.iterdir()) if d.is_dir()}
        images = next((subdirs[n] for n in IMAGE_FOLDERS if n in subdirs), None)
        notes = next((subdirs[n] for n in ANNOTATION_FOLDERS if n in subdirs), None)
        if images is None or notes is None:
            return None
        if not any(f.suffix.lower() == ".xml" for f in notes.iterdir()):
            return None
        return images, notes
    except OSError:
        return None


def _load_layout(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    found = voc_folders(path)
    if found is None:
        raise file_error(path, "not a Pascal-VOC folder (IMAGES/ and ANNOTATIONS/ with .xml)")
    images, notes = found
    if purpose == "predict":
        from inspectkit.sources.folders import load_image_files

        return load_image_files([images], channels=channels, limit=limit)
    return load_voc(images, notes, channels=channels, limit=limit, on_error=on_error)


VOC = register_layout(
    Layout(
        name="voc",
        detect=lambda p: voc_folders(p) is not None,
        load=_load_layout,
        priority=60,
        description="Pascal-VOC: an images folder and an annotations folder of XML (NEU-DET)",
        on_error=True,
    )
)

__all__ = ["VOC", "load_voc", "parse_voc_xml", "voc_folders"]
