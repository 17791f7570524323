"""DeepPCB: bare printed circuit boards, a defect-free template and a tested image per pair.

Layout (Tang et al., arXiv:1902.06197)::

    PCBData/groupNNNNN/NNNNN/XXXXXXXX_temp.jpg    the defect-free template
    PCBData/groupNNNNN/NNNNN/XXXXXXXX_test.jpg    the tested image (3-12 defects)
    PCBData/groupNNNNN/NNNNN_not/XXXXXXXX.txt     its defects: x1 y1 x2 y2 type

Each group is a board design (a product of the line). Templates are good samples
(label ``"good"``), tested images defective ones (label ``"defect"``) with one
:class:`~inspectkit.records.Box` per defect (labels :data:`DEFECT_TYPES`). Every sample
carries its design as ``SampleMeta.group`` and ``meta["design"]``, and ``meta["pair"]``
(the pair's stem) and ``meta["role"]`` (``"template"`` / ``"tested"``), so splits can keep
both images of a pair together. Images are 640×640 binarised gray (1 channel, uint8),
decoded lazily.

Example:
    >>> from inspectkit.sources.deeppcb import load_deeppcb
    >>> boards = load_deeppcb("data/deeppcb", designs=["00041"])  # doctest: +SKIP
    >>> boards.samples[0].group, boards.samples[0].meta["role"]  # doctest: +SKIP
    ('00041', 'template')
"""

from __future__ import annotations

import os
from pathlib import Path

from inspectkit.errors import DataError
from inspectkit.records import Box, ImageSet, LazyImages, SampleMeta
from inspectkit.sources._common import Collector, ImageReader, OnError, file_error, require_dir
from inspectkit.sources.layout import Layout, register_layout

#: Defect type names by the number in the annotation files.
DEFECT_TYPES = {
    1: "open",
    2: "short",
    3: "mousebite",
    4: "spur",
    5: "spurious_copper",
    6: "pin_hole",
}
CLASSES = ["good", "defect"]


def _data_dir(path: Path) -> Path | None:
    """The ``PCBData`` folder at or under ``path`` (or ``path`` when it holds groups)."""
    for cand in (path / "PCBData", path):
        if cand.is_dir() and any(d.is_dir() and d.name.startswith("group") for d in cand.iterdir()):
            return cand
    return None


def is_deeppcb(path: Path) -> bool:
    """Cheap: a ``PCBData`` folder of ``group*`` folders (names only)."""
    try:
        return path.is_dir() and _data_dir(path) is not None
    except OSError:
        return False


def _boxes(txt: Path) -> list[Box]:
    boxes = []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            x1, y1, x2, y2, kind = (int(float(v)) for v in parts[:5])
        except ValueError:
            raise file_error(txt, f"line {n}: expected 'x1 y1 x2 y2 type', got {line!r}") from None
        if kind not in DEFECT_TYPES:
            raise file_error(txt, f"line {n}: unknown defect type {kind} (1-6)")
        boxes.append(Box(label=DEFECT_TYPES[kind], xmin=x1, ymin=y1, xmax=x2, ymax=y2))
    return boxes


def load_deeppcb(
    root: str | os.PathLike[str],
    *,
    designs: list[str] | None = None,
    roles: tuple[str, ...] = ("template", "tested"),
    limit: int | None = None,
    on_error: OnError = "raise",
) -> ImageSet:
    """Load DeepPCB pairs: templates as good samples, tested images as defects with boxes.

    Args:
        root: The ``deeppcb`` folder (or its ``PCBData``).
        designs: Only these board designs (``"00041"`` …); default all, sorted.
        roles: ``"template"`` and/or ``"tested"``.
        limit: At most this many pairs per design (first by name).
        on_error: ``"raise"`` or ``"skip"`` a pair whose image or annotation is missing.

    Raises:
        DataError: not a DeepPCB folder, an unknown design, a malformed annotation.
    """
    base = require_dir(root, "DeepPCB folder")
    data_dir = _data_dir(base)
    if data_dir is None:
        raise file_error(base, "no PCBData/groupNNNNN folders found")
    bad_roles = [r for r in roles if r not in ("template", "tested")]
    if bad_roles or not roles:
        raise DataError(f"roles are 'template' and/or 'tested', got {list(roles)}")
    found = {
        d.name.removeprefix("group"): d
        for d in sorted(data_dir.iterdir())
        if d.is_dir() and d.name.startswith("group")
    }
    if designs is not None:
        unknown = [d for d in designs if d not in found]
        if unknown:
            raise file_error(data_dir, f"unknown design(s) {unknown}; designs: {sorted(found)}")
    collector = Collector(on_error)
    keys: list[str] = []
    samples: list[SampleMeta] = []
    boxes: list[list[Box]] = []
    for design in designs or sorted(found):
        folder = found[design] / design
        notes = found[design] / f"{design}_not"
        temps = sorted(folder.glob("*_temp.jpg"))[:limit]
        if not temps:
            collector.skip(folder, "no *_temp.jpg templates")
        for temp in temps:
            stem = temp.name.removesuffix("_temp.jpg")
            tested, txt = folder / f"{stem}_test.jpg", notes / f"{stem}.txt"
            missing = [p.name for p in (tested, txt) if not p.is_file()]
            if missing:
                collector.skip(temp, f"its pair is incomplete (missing {', '.join(missing)})")
                continue
            meta = {"design": design, "pair": stem}
            if "template" in roles:
                keys.append(str(temp))
                samples.append(SampleMeta(id=f"{design}/{stem}/template", source=str(temp),
                                          label="good", group=design,
                                          meta={**meta, "role": "template", "anomalous": False}))  # fmt: skip
                boxes.append([])
            if "tested" in roles:
                keys.append(str(tested))
                samples.append(SampleMeta(id=f"{design}/{stem}/tested", source=str(tested),
                                          label="defect", group=design,
                                          meta={**meta, "role": "tested", "anomalous": True}))  # fmt: skip
                boxes.append(_boxes(txt))
    if not keys:
        raise file_error(data_dir, "no complete template/tested pairs found")
    return ImageSet.build(
        images=LazyImages(keys, ImageReader(channels=1)),
        boxes=boxes,
        samples=samples,
        classes=list(CLASSES),
        skipped=collector.skipped,
    )


def _load(
    path: Path,
    *,
    purpose: str,
    task: str,
    channels: int | None,
    limit: int | None,
    on_error: OnError = "raise",
) -> ImageSet:
    if purpose == "predict":
        from inspectkit.sources.folders import load_image_files

        data_dir = _data_dir(path)
        assert data_dir is not None
        files = sorted(data_dir.glob("group*/*/*.jpg"))
        return load_image_files(files, channels=1, limit=limit)
    return load_deeppcb(path, limit=limit, on_error=on_error)


DEEPPCB = register_layout(
    Layout(
        name="deeppcb",
        detect=is_deeppcb,
        load=_load,
        priority=75,
        description="DeepPCB: PCBData/groupN/N/*_temp.jpg + *_test.jpg, N_not/*.txt boxes",
        on_error=True,
    )
)

__all__ = ["CLASSES", "DEEPPCB", "DEFECT_TYPES", "is_deeppcb", "load_deeppcb"]
