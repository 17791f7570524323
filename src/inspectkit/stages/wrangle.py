"""``Wrangle``: bring a raw image set to one size, channel count and scale; tidy it up.

What it does, in order:

1. **De-duplication** (``dedupe``): exact pixel duplicates (same shape, dtype and bytes,
   found by a BLAKE2 content hash) are dropped, the first copy kept. By default this
   happens only in ``fit_run`` (training data), like imbalanced-learn's samplers, so a
   production run still gets one output per input; ``dedupe="always"`` drops them in
   ``run`` too.
2. **Split** (``split=(0.7, 0.15, 0.15)``): sets ``SampleMeta.split`` to
   ``"train"``/``"val"``/``"test"``, stratified by label, reproducible with ``seed``.
   ``group_by="group"`` (or a ``meta`` key) keeps every group — a lot, a wafer, a
   batch — inside one split, so no lot straddles train and test. Get a split back with
   :func:`split_of` (``split_of(data, "train")``) or
   ``data.select(lambda s: s.split == "train")``.
3. **Resize** (``size``): nearest neighbour for wafer maps so their 0/1/2 codes survive,
   antialiased bilinear for photos; masks always nearest, boxes rescaled.
   ``keep_aspect=True`` scales the longer side to fit and pads the rest (wafer maps pad
   with 0 = outside the wafer; photos with ``pad_value``).
4. **Channels** (``channels``): 1 (gray) or 3 (RGB). Wafer maps keep their one channel.
5. **Normalisation** (``normalize``): ``"none"`` keeps the dtype (uint8 0–255 photos,
   uint8 0/1/2 wafer codes — the default, and what the wafer-map stages expect);
   ``"unit"`` gives float32 in [0, 1] (photos /255, wafer codes /2); ``"standard"``
   also subtracts a per-channel mean and divides by a per-channel std learned in
   ``fit`` (from the ``train`` split when a split was made). Floats cannot carry the
   wafer coding, so a normalised wafer set comes out as ``kind="image"``.

Lazy sets (:class:`~inspectkit.records.LazyImages`) are decoded and resized batch by
batch (``batch_size``), so only the resized result is held in memory.

After ``run``/``fit_run`` the stage's ``report_`` is a :class:`~inspectkit.records.Report`
(class counts, size histogram of the input, duplicates removed, files the loader
skipped, split counts); :func:`summarize` builds the same report for any set.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from typing_extensions import Self

from inspectkit.errors import ConfigError, DataError
from inspectkit.ops import group_by_size, letterbox, resize_images, to_channels, to_float
from inspectkit.records import Box, ImageSet, LazyImages, Report, SampleMeta
from inspectkit.runtime import torch_threads
from inspectkit.stage import ImageSize, Seed, Stage, StageConfig

log = logging.getLogger(__name__)

SplitName = Literal["train", "val", "test"]
_SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
#: At most this many duplicate pairs are listed in a report's details (all are counted).
MAX_LISTED = 1000


# ---------------------------------------------------------------------- helpers
def _sizes(images: Sequence[torch.Tensor] | torch.Tensor) -> list[tuple[int, int]]:
    if isinstance(images, torch.Tensor):
        return [(int(images.shape[2]), int(images.shape[3]))] * int(images.shape[0])
    return [(int(t.shape[-2]), int(t.shape[-1])) for t in images]


def _digest(t: torch.Tensor) -> tuple[tuple[int, ...], str, bytes]:
    arr = t.detach().contiguous().numpy()
    return tuple(arr.shape), str(arr.dtype), hashlib.blake2b(arr.tobytes(), digest_size=16).digest()


def content_hashes(data: ImageSet, batch_size: int = 1024) -> list[tuple[Any, ...]]:
    """One key per image: (shape, dtype, BLAKE2 digest of the pixels); equal keys = same pixels.

    Lazy sets are decoded ``batch_size`` images at a time.
    """
    images = data.images
    if isinstance(images, torch.Tensor):
        return [_digest(t) for t in images]
    if isinstance(images, LazyImages):
        keys: list[tuple[Any, ...]] = []
        for start in range(0, len(images), batch_size):
            keys += [_digest(t) for t in images[start : start + batch_size]]
        return keys
    return [_digest(t) for t in images]


def find_duplicates(data: ImageSet, batch_size: int = 1024) -> list[tuple[int, int]]:
    """``(duplicate, first)`` index pairs of exact pixel duplicates, in order.

    Example:
        >>> import torch
        >>> from inspectkit.records import ImageSet, SampleMeta
        >>> imgs = torch.zeros(3, 1, 4, 4, dtype=torch.uint8); imgs[1] += 1
        >>> s = ImageSet(images=imgs, samples=[SampleMeta(id=str(i)) for i in range(3)])
        >>> find_duplicates(s)
        [(2, 0)]
    """
    first: dict[tuple[Any, ...], int] = {}
    pairs: list[tuple[int, int]] = []
    for i, key in enumerate(content_hashes(data, batch_size)):
        j = first.setdefault(key, i)
        if j != i:
            pairs.append((i, j))
    return pairs


def assign_splits(
    samples: Sequence[SampleMeta],
    fractions: tuple[float, float, float],
    *,
    seed: int = 0,
    group_by: str | None = None,
) -> list[SplitName]:
    """Stratified, seeded train/val/test assignment, optionally keeping groups together.

    Samples are stratified by label (unlabelled samples form their own stratum). With
    ``group_by`` the unit of assignment is a group (``"group"`` = ``SampleMeta.group``,
    any other name = that ``meta`` key; samples without a group are their own unit), and
    a group is stratified by its most common label. Within a stratum the units are
    shuffled with ``seed`` and cut where the running sample count crosses the split
    fractions, so every split gets its share of each class up to one unit.

    Example:
        >>> from inspectkit.records import SampleMeta
        >>> s = [SampleMeta(id=str(i), label="ab"[i % 2]) for i in range(10)]
        >>> sorted(Counter(assign_splits(s, (0.6, 0.2, 0.2), seed=1)).items())
        [('test', 2), ('train', 6), ('val', 2)]
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    units: dict[Any, list[int]] = {}
    for i, s in enumerate(samples):
        key: Any = None
        if group_by == "group":
            key = s.group
        elif group_by is not None:
            key = s.meta.get(group_by)
        units.setdefault(("sample", i) if key is None else ("group", key), []).append(i)
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        labels = Counter(
            "" if samples[i].label is None else f"={samples[i].label}" for i in members
        )
        top = max(labels.values())
        strata[min(k for k, v in labels.items() if v == top)].append(members)
    rng = np.random.default_rng(seed)
    cut1, cut2 = fractions[0], fractions[0] + fractions[1]
    out: list[SplitName] = ["train"] * len(samples)
    for label in sorted(strata):
        group_list = strata[label]
        total = sum(len(m) for m in group_list)
        seen = 0
        for u in rng.permutation(len(group_list)):
            members = group_list[int(u)]
            mid = (seen + len(members) / 2) / total
            seen += len(members)
            name: SplitName = "train" if mid < cut1 else "val" if mid < cut2 else "test"
            for i in members:
                out[i] = name
    return out


def split_of(data: ImageSet, split: SplitName) -> ImageSet:
    """The samples of one split (``"train"``, ``"val"`` or ``"test"``), any record type.

    Example:
        >>> from inspectkit.stages.wrangle import Wrangle, split_of
        >>> train = split_of(Wrangle(split=(0.8, 0.1, 0.1)).run(data), "train")  # doctest: +SKIP
    """
    if split not in _SPLITS:
        raise DataError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if all(s.split is None for s in data.samples):
        raise DataError("no sample has a split yet; run Wrangle(split=(0.7, 0.15, 0.15)) first")
    return data.select(lambda s: s.split == split)


def _channels(
    images: torch.Tensor | list[torch.Tensor], channels: int
) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return to_channels(images, channels)
    out: list[torch.Tensor] = list(images)
    for idx in group_by_size(images).values():
        converted = to_channels(torch.stack([images[i] for i in idx]), channels)
        for k, i in enumerate(idx):
            out[i] = converted[k]
    return out


def _as_float(
    images: torch.Tensor | list[torch.Tensor], kind: str
) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        return to_float(images, kind=kind)
    return [to_float(t, kind=kind) for t in images]


def _channel_moments(
    images: torch.Tensor | list[torch.Tensor], kind: str, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every pixel of every image (float64 accumulation)."""
    total = sq = None
    count = 0
    chunks: list[torch.Tensor] = (
        [images[i : i + batch] for i in range(0, len(images), batch)]
        if isinstance(images, torch.Tensor)
        else [t[None] for t in images]
    )
    for chunk in chunks:
        x = to_float(chunk, kind=kind).double()
        s, s2 = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        sq = s2 if sq is None else sq + s2
        count += x.shape[0] * x.shape[2] * x.shape[3]
    assert total is not None and sq is not None
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


# ---------------------------------------------------------------------- summary
def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"min": int(arr.min()), "max": int(arr.max()), "mean": round(float(arr.mean()), 2)}


def _summary(
    data: ImageSet,
    *,
    title: str,
    sizes: list[tuple[int, int]] | None,
    duplicates: list[tuple[str, str, bool]] | None,
    removed: bool,
) -> Report:
    if sizes is None:
        images = data.images
        sizes = (
            _sizes(images)
            if not isinstance(images, LazyImages)
            else [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
        )
    hist = Counter(f"{h}x{w}" for h, w in sizes)
    per_class: dict[str, dict[str, float]] = {c: {"count": 0.0} for c in data.classes}
    split_counts = Counter(s.split or "unassigned" for s in data.samples)
    for s in data.samples:
        if s.label is None:
            continue
        row = per_class[s.label]
        row["count"] += 1
        if s.split is not None:
            row[s.split] = row.get(s.split, 0.0) + 1
    counts = {
        "samples": len(data),
        "labelled": sum(s.label is not None for s in data.samples),
        "unlabelled": sum(s.label is None for s in data.samples),
        "synthetic": sum(s.synthetic for s in data.samples),
        "classes": len(data.classes),
        "skipped": len(data.skipped),
    }
    notes: list[str] = []
    if data.skipped:
        notes.append(f"{len(data.skipped)} input(s) skipped by the loader; see details.skipped")
    empty = [c for c, row in per_class.items() if row["count"] == 0]
    if empty:
        notes.append(f"classes without samples: {empty}")
    filled = [row["count"] for row in per_class.values() if row["count"] > 0]
    if len(filled) > 1 and max(filled) / min(filled) >= 10:
        notes.append(f"class imbalance: largest/smallest class = {max(filled) / min(filled):.0f}")
    details: dict[str, Any] = {
        "kind": data.kind,
        "channels": data.channels,
        "lazy": data.is_lazy,
        "sizes": dict(hist.most_common(100)),
        "distinct_sizes": len(hist),
        "height": _stats([h for h, _ in sizes]),
        "width": _stats([w for _, w in sizes]),
        "splits": {k: split_counts.get(k, 0) for k in (*_SPLITS, "unassigned")},
        "skipped": list(data.skipped),
    }
    if duplicates is not None:
        key = "duplicates_removed" if removed else "duplicates"
        counts[key] = len(duplicates)
        conflicts = sum(c for _, _, c in duplicates)
        details[key] = [
            {"id": a, "duplicate_of": b, "label_differs": c} for a, b, c in duplicates[:MAX_LISTED]
        ]
        if duplicates:
            verb = "removed" if removed else "found"
            notes.append(f"{len(duplicates)} exact duplicate image(s) {verb}")
        if conflicts:
            notes.append(f"{conflicts} duplicate(s) carry a different label than their first copy")
    return Report(
        title=title,
        classes=list(data.classes),
        per_class=per_class,
        counts=counts,
        notes=notes,
        details=details,
    )


def summarize(data: ImageSet, *, duplicates: bool = False, title: str = "data summary") -> Report:
    """A :class:`Report` describing a set: class counts, sizes, splits, skipped inputs.

    Args:
        data: Any image set (lazy sets are decoded once, streaming, to read sizes).
        duplicates: Also hash the pixels and list exact duplicates (``counts["duplicates"]``).
        title: The report's title.

    Example:
        >>> from inspectkit.stages.wrangle import summarize
        >>> summarize(maps).counts["samples"]  # doctest: +SKIP
        12450
    """
    dups = None
    if duplicates:
        ids, labels = data.ids, data.labels
        dups = [(ids[i], ids[j], labels[i] != labels[j]) for i, j in find_duplicates(data)]
    return _summary(data, title=title, sizes=None, duplicates=dups, removed=False)


# ---------------------------------------------------------------------- the stage
class Wrangle(Stage[ImageSet, ImageSet]):
    """Resize, convert channels, normalise, de-duplicate and split an :class:`ImageSet`.

    Args:
        size: Output size, ``64`` for 64×64 or ``(H, W)``; ``None`` keeps sizes (they must
            then agree already for most downstream stages).
        channels: 1 (gray) or 3 (RGB); ``None`` keeps the input's channel count.
        resize: ``"auto"`` (nearest for wafer maps, antialiased otherwise),
            ``"nearest"`` or ``"antialias"``.
        keep_aspect: Scale to fit inside ``size`` and pad instead of stretching.
        pad_value: Fill value of the padding for photos (wafer maps pad with 0).
        normalize: ``"none"`` (keep dtype and codes), ``"unit"`` (float in [0, 1]) or
            ``"standard"`` (per-channel mean/std learned in ``fit``).
        dedupe: ``False``/``"off"``; ``True``/``"fit"`` drops exact duplicates in
            ``fit_run`` only; ``"always"`` also in ``run``.
        split: ``(train, val, test)`` fractions; sets ``SampleMeta.split``.
        group_by: ``"group"`` or a ``meta`` key whose samples must share a split.
        seed: Seed of the split.
        batch_size: Images decoded and resized at a time for lazy sets.
        threads: torch intra-op threads while resizing. ``"auto"`` uses one thread for
            ragged sets (resized as many small per-size groups, where a thread team's
            start-up costs more than it saves — 40× slower on a busy 2-core machine) and
            torch's setting for uniform batches; ``None`` always keeps torch's setting.

    Example:
        >>> from inspectkit.stages import Wrangle
        >>> Wrangle(size=64).config.size
        (64, 64)
        >>> Wrangle(size=64, split=(0.7, 0.15, 0.15), group_by="group", dedupe=True).config.dedupe
        'fit'
    """

    name = "wrangle"
    preserves_type = True

    class Config(StageConfig):
        size: ImageSize | None = None
        channels: Literal[1, 3] | None = None
        resize: Literal["auto", "nearest", "antialias"] = "auto"
        keep_aspect: bool = False
        pad_value: int = Field(0, ge=0, le=255)
        normalize: Literal["none", "unit", "standard"] = "none"
        dedupe: Literal["off", "fit", "always"] = "off"
        split: tuple[float, float, float] | None = None
        group_by: str | None = None
        seed: Seed = 0
        batch_size: int = Field(1024, ge=1)
        threads: int | Literal["auto"] | None = "auto"

        @field_validator("threads")
        @classmethod
        def _threads(cls, v: int | str | None) -> int | str | None:
            if isinstance(v, int) and v < 1:
                raise ValueError(f"threads must be at least 1, 'auto' or None, got {v}")
            return v

        @field_validator("dedupe", mode="before")
        @classmethod
        def _dedupe_bool(cls, v: Any) -> Any:
            if v is True:
                return "fit"
            if v is False or v is None:
                return "off"
            return v

        @field_validator("split")
        @classmethod
        def _fractions(
            cls, v: tuple[float, float, float] | None
        ) -> tuple[float, float, float] | None:
            if v is not None and (any(f < 0 for f in v) or abs(sum(v) - 1) > 1e-6):
                raise ValueError(f"split fractions must be non-negative and sum to 1, got {v}")
            return v

    config: Config

    def __init__(self, config: StageConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.fitted = self.config.normalize != "standard"
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.report_: Report | None = None

    # ------------------------------------------------------------------ lifecycle
    def fit(self, data: ImageSet) -> Self:
        """Learn the per-channel mean/std when ``normalize="standard"`` (else nothing)."""
        self.check_input(data)
        if self.config.normalize == "standard":
            prepared, _ = self._prepare(data, training=True)
            self._learn(prepared)
        self.fitted = True
        return self

    def run(self, data: ImageSet) -> ImageSet:
        """Inference transform (de-duplicates only with ``dedupe="always"``)."""
        self.check_input(data)
        self.check_fitted()
        prepared, info = self._prepare(data, training=False)
        out = self._normalize(prepared)
        self.report_ = self._report(out, info)
        return out

    def fit_run(self, data: ImageSet) -> ImageSet:
        """Training transform: de-duplicate (``dedupe`` on), split, resize, learn, normalise."""
        self.check_input(data)
        prepared, info = self._prepare(data, training=True)
        if self.config.normalize == "standard":
            self._learn(prepared)
        self.fitted = True
        out = self._normalize(prepared)
        self.report_ = self._report(out, info)
        return out

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        if self.mean is None or self.std is None:
            return {}
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def set_state(self, state: dict[str, Any]) -> None:
        if self.config.normalize == "standard":
            mean, std = state.get("mean"), state.get("std")
            if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
                raise DataError(
                    "Wrangle state needs 'mean' and 'std' tensors for normalize='standard'"
                )
            if mean.shape != std.shape or mean.ndim != 1 or bool((std <= 0).any()):
                raise DataError("Wrangle state: mean/std must be 1-D of equal length with std > 0")
            self.mean, self.std = mean.float(), std.float()
        self.fitted = True

    # ------------------------------------------------------------------ internals
    def _mode(self, data: ImageSet) -> Literal["nearest", "antialias"]:
        if self.config.resize != "auto":
            return self.config.resize
        return "nearest" if data.kind == "wafer" else "antialias"

    def _prepare(self, data: ImageSet, *, training: bool) -> tuple[ImageSet, dict[str, Any]]:
        cfg = self.config
        info: dict[str, Any] = {"n_in": len(data), "duplicates": None}
        if cfg.dedupe == "always" or (cfg.dedupe == "fit" and training):
            ids, labels = data.ids, data.labels
            pairs = find_duplicates(data, cfg.batch_size)
            info["duplicates"] = [(ids[i], ids[j], labels[i] != labels[j]) for i, j in pairs]
            if pairs:
                drop = {i for i, _ in pairs}
                data = data.subset([i for i in range(len(data)) if i not in drop])
                log.info("removed %d exact duplicate images", len(pairs))
        changes: dict[str, Any] = {}
        if cfg.split is not None:
            names = assign_splits(data.samples, cfg.split, seed=cfg.seed, group_by=cfg.group_by)
            changes["samples"] = [
                s.model_copy(update={"split": name}) for s, name in zip(data.samples, names)
            ]
        if cfg.channels is not None and data.kind == "wafer" and data.channels != cfg.channels:
            raise DataError("wafer maps have one channel of 0/1/2 codes; leave channels=None")
        pixel_work = cfg.size is not None or (
            cfg.channels is not None and data.channels != cfg.channels
        )
        if data.is_lazy or isinstance(data.masks, LazyImages):
            sizes: list[tuple[int, int]] = []
            parts: dict[str, list[Any]] = {"images": [], "masks": [], "boxes": []}
            for start in range(0, len(data), cfg.batch_size):
                batch = data.subset(
                    range(start, min(start + cfg.batch_size, len(data)))
                ).materialize()
                sizes += _sizes(batch.images)
                imgs, masks, boxes = self._pixels(batch)
                parts["images"].append(imgs)
                parts["masks"].append(masks)
                parts["boxes"].append(boxes)
            changes["images"] = _join(parts["images"])
            changes["masks"] = None if data.masks is None else _join(parts["masks"])
            if data.boxes is not None:
                changes["boxes"] = [b for part in parts["boxes"] for b in part]
        else:
            sizes = _sizes(data.images)
            if pixel_work:
                changes["images"], changes["masks"], changes["boxes"] = self._pixels(data)
        info["sizes"] = sizes
        return (data.replace(**changes) if changes else data), info

    def _pixels(self, data: ImageSet) -> tuple[Any, Any, Any]:
        """Resize and convert channels of an in-memory set; returns images, masks, boxes."""
        threads = self.config.threads
        if threads == "auto":
            threads = 1 if isinstance(data.images, list) and len(data.images) > 1 else None
        with torch_threads(threads):  # type: ignore[arg-type]
            return self._pixels_inner(data)

    def _pixels_inner(self, data: ImageSet) -> tuple[Any, Any, Any]:
        cfg = self.config
        images: Any = data.images
        masks: Any = data.masks
        boxes = data.boxes
        size = cfg.size
        if size is not None:
            old = _sizes(images)
            if cfg.keep_aspect:
                fill = 0 if data.kind == "wafer" else cfg.pad_value
                if images[0].dtype.is_floating_point:
                    fill = fill / 255.0 if data.kind != "wafer" else 0.0
                images, geo = letterbox(images, size, self._mode(data), fill)
                if masks is not None:
                    masks, _ = letterbox(masks, size, "nearest", 0)
                if boxes is not None:
                    boxes = [
                        [_shift(b, sx, sy, left, top) for b in bl]
                        for bl, (sx, sy, left, top) in zip(boxes, geo)
                    ]
            else:
                images = resize_images(images, size, self._mode(data))
                if masks is not None:
                    masks = resize_images(masks, size, "nearest")
                if boxes is not None:
                    boxes = [
                        [b.scaled(size[1] / ow, size[0] / oh) for b in bl]
                        for bl, (oh, ow) in zip(boxes, old)
                    ]
        if cfg.channels is not None and len(images) and int(images[0].shape[0]) != cfg.channels:
            images = _channels(images, cfg.channels)
        return images, masks, boxes

    def _learn(self, data: ImageSet) -> None:
        pick = data.samples
        use = [i for i, s in enumerate(pick) if not s.synthetic and s.split in (None, "train")]
        if not use:
            raise DataError("no real training samples to learn the normalisation from")
        images: Any = data.images
        if len(use) != len(data):
            images = (
                images[torch.as_tensor(use)]
                if isinstance(images, torch.Tensor)
                else [images[i] for i in use]
            )
        self.mean, self.std = _channel_moments(images, data.kind, self.config.batch_size)
        log.info("learned per-channel mean %s, std %s", self.mean.tolist(), self.std.tolist())

    def _normalize(self, data: ImageSet) -> ImageSet:
        mode = self.config.normalize
        if mode == "none":
            return data
        images = _as_float(data.images, data.kind)  # type: ignore[arg-type]
        if mode == "standard":
            assert self.mean is not None and self.std is not None
            c = data.channels
            if c != self.mean.numel():
                raise DataError(
                    f"Wrangle learned the normalisation on {self.mean.numel()}-channel images "
                    f"but got {c} channels; set channels= so they agree"
                )
            mean, std = self.mean.view(-1, 1, 1), self.std.view(-1, 1, 1)
            images = (
                (images - mean) / std
                if isinstance(images, torch.Tensor)
                else [(t - mean) / std for t in images]
            )
        return data.replace(images=images, kind="image")

    def _report(self, out: ImageSet, info: dict[str, Any]) -> Report:
        report = _summary(
            out,
            title="wrangle",
            sizes=info["sizes"],
            duplicates=info["duplicates"],
            removed=True,
        )
        report.counts["input_samples"] = info["n_in"]
        report.details["output_size"] = list(out.size) if out.size is not None else None
        report.details["normalize"] = self.config.normalize
        return report


def _shift(b: Box, sx: float, sy: float, left: int, top: int) -> Box:
    return Box(
        label=b.label,
        xmin=b.xmin * sx + left,
        ymin=b.ymin * sy + top,
        xmax=b.xmax * sx + left,
        ymax=b.ymax * sy + top,
    )


def _join(parts: list[Any]) -> Any:
    if (
        all(isinstance(p, torch.Tensor) for p in parts)
        and len({tuple(p.shape[1:]) for p in parts}) == 1
    ):
        return torch.cat(parts)
    return [t for p in parts for t in p]


__all__ = [
    "Wrangle",
    "assign_splits",
    "content_hashes",
    "find_duplicates",
    "letterbox",
    "split_of",
    "summarize",
]
