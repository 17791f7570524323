"""Typed records that flow between pipeline stages.

Records are pydantic v2 models. Tensors are validated once per set (lengths, shapes,
dtypes, value domains), never per pixel in Python. Records extend each other, so a stage
that accepts :class:`ImageSet` also accepts :class:`Predictions` or :class:`Explained`.

Example:
    >>> import torch
    >>> from inspectkit.records import ImageSet, SampleMeta
    >>> s = ImageSet(
    ...     images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
    ...     samples=[SampleMeta(id="a", label="ok"), SampleMeta(id="b", label="bad")],
    ...     classes=["bad", "ok"],
    ... )
    >>> s.class_counts()
    {'bad': 1, 'ok': 1}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from inspectkit._text import printable
from inspectkit.errors import DataError

MetaValue = str | int | float | bool | None

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.bool)


def _printable_or_none(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


PrintableStr = Annotated[str, BeforeValidator(_printable_or_none)]


class SampleMeta(BaseModel):
    """What is known about one sample besides its pixels.

    Attributes:
        id: Unique id within a set (file stem, wafer index, ...). Ids, sources, labels and
            groups are made printable on the way in (:func:`printable`).
        source: Where it came from (file path, archive name).
        label: Class name, or ``None`` when unlabelled / sent to human review.
        split: ``"train"``, ``"val"`` or ``"test"`` once a split was made.
        synthetic: True for generated or augmented samples; never used in metrics.
        group: Group key (lot, wafer, batch) that a group-aware split keeps together.
        meta: Process-line metadata (tool, recipe, die size, ...), plain values only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PrintableStr = Field(min_length=1)
    source: PrintableStr = ""
    label: PrintableStr | None = None
    split: Literal["train", "val", "test"] | None = None
    synthetic: bool = False
    group: PrintableStr | None = None
    meta: dict[str, MetaValue] = Field(default_factory=dict)

    @field_validator("meta")
    @classmethod
    def _finite_meta(cls, value: dict[str, MetaValue]) -> dict[str, MetaValue]:
        for key, v in value.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"metadata {key!r} is {v}; only finite numbers are allowed")
        return value


class Box(BaseModel):
    """An axis-aligned box in pixel coordinates of the image it belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: PrintableStr
    xmin: float = Field(ge=0)
    ymin: float = Field(ge=0)
    xmax: float
    ymax: float

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if not (self.xmax > self.xmin and self.ymax > self.ymin):
            raise ValueError(
                f"box {self.label!r} is empty or inverted: "
                f"({self.xmin}, {self.ymin}, {self.xmax}, {self.ymax}); need xmin<xmax, ymin<ymax"
            )
        return self

    def scaled(self, sx: float, sy: float) -> Box:
        """The same box in an image resized by ``sx`` horizontally and ``sy`` vertically."""
        return Box(
            label=self.label,
            xmin=self.xmin * sx,
            ymin=self.ymin * sy,
            xmax=self.xmax * sx,
            ymax=self.ymax * sy,
        )


class LazyImages(Sequence[torch.Tensor]):
    """A sequence of images decoded on demand, for archives larger than memory.

    Each item is produced by ``loader(key)`` as a ``C×H×W`` tensor. Subsets share the
    loader and keep only their keys, so slicing a lazy set costs nothing.

    Args:
        keys: One key per image (usually a file path).
        loader: Function turning a key into a ``C×H×W`` tensor; it raises ``DataError``
            for unreadable input.
    """

    def __init__(self, keys: Sequence[Any], loader: Callable[[Any], torch.Tensor]) -> None:
        self.keys = list(keys)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return LazyImages(self.keys[index], self.loader)
        return self.loader(self.keys[index])

    def take(self, indices: Sequence[int]) -> LazyImages:
        """A lazy subset with the given positions."""
        return LazyImages([self.keys[i] for i in indices], self.loader)

    def __repr__(self) -> str:
        return f"LazyImages(n={len(self)})"


def _image_data(value: Any) -> Any:
    """Accept a tensor, LazyImages (untouched: never decoded here) or a list of tensors."""
    if isinstance(value, torch.Tensor | LazyImages):
        return value
    if isinstance(value, list | tuple):
        for i, t in enumerate(value):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"item {i} is a {type(t).__name__}, not a tensor")
        return list(value)
    raise ValueError(
        f"expected a N×C×H×W tensor, a list of C×H×W tensors or LazyImages, got {type(value).__name__}"
    )


ImageData = Annotated[torch.Tensor | list[torch.Tensor] | LazyImages, PlainValidator(_image_data)]


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype in _FLOAT_DTYPES and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contain {bad} NaN/inf values; clean or drop those samples")


def _check_dtype(t: torch.Tensor, what: str) -> None:
    if t.dtype not in _FLOAT_DTYPES + _INT_DTYPES:
        raise ValueError(f"{what} have dtype {t.dtype}; use uint8 (0-255) or a float dtype")


class Record(BaseModel):
    """Base of every record: pydantic model that may hold tensors."""

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=False
    )

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (records are treated as values)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        return type(self).build(**data)

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """Construct and validate, turning pydantic's errors into :class:`DataError`."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise DataError(f"invalid {cls.__name__}: {_format_validation(exc)}") from None


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "record"
        msg = err.get("msg", "")
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class ImageSet(Record):
    """A set of images with labels and metadata; the record most stages accept.

    ``images`` is one of:

    * a ``N×C×H×W`` tensor (uint8 0-255, uint8 wafer codes, or float) — the usual case;
    * a list of ``C×H×W`` tensors of varying size (e.g. raw wafer maps before ``Wrangle``);
    * :class:`LazyImages`, decoded on demand, for sets larger than memory.

    Attributes:
        images: The pixels, see above.
        masks: Optional defect masks (uint8/bool, ``N×1×H×W`` or a list of ``1×H×W``)
            matching the images' sizes; 0 = good, non-zero = defect.
        boxes: Optional list (one entry per image) of defect boxes.
        samples: One :class:`SampleMeta` per image.
        classes: The class names a model may predict; labels must be among them (made
            printable like labels, :func:`printable`).
        kind: ``"wafer"`` for wafer maps coded 0 (outside), 1 (pass), 2 (fail) — they
            are resized with nearest neighbour so codes survive — or ``"image"``.
        skipped: Inputs a source skipped with ``on_error="skip"``, each as
            ``"<file or item>: <reason>"``; ``Wrangle``'s report lists them.
    """

    per_sample_fields: ClassVar[tuple[str, ...]] = ("images", "masks", "boxes", "samples")

    images: ImageData
    masks: ImageData | None = None
    boxes: list[list[Box]] | None = None
    samples: list[SampleMeta]
    classes: list[PrintableStr] = Field(default_factory=list)
    kind: Literal["image", "wafer"] = "image"
    skipped: list[PrintableStr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _validate_set(self) -> Self:
        n = len(self.samples)
        imgs = self.images
        if len(imgs) != n:
            raise ValueError(f"{len(imgs)} images but {n} samples; they must match one to one")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes contain duplicates: {self.classes}")
        if isinstance(imgs, torch.Tensor):
            if imgs.ndim != 4:
                raise ValueError(f"images tensor must be N×C×H×W, got shape {tuple(imgs.shape)}")
            _check_dtype(imgs, "images")
            _check_float(imgs, "images")
            if self.kind == "wafer":
                _check_wafer(imgs)
        elif isinstance(imgs, list):
            channels = {t.shape[0] for t in imgs if isinstance(t, torch.Tensor) and t.ndim == 3}
            if any((not isinstance(t, torch.Tensor)) or t.ndim != 3 for t in imgs):
                raise ValueError("every image in a list must be a C×H×W tensor")
            if len(channels) > 1:
                raise ValueError(f"images have different channel counts {sorted(channels)}")
            for t in imgs:
                _check_dtype(t, "images")
            if imgs and imgs[0].dtype in _FLOAT_DTYPES:
                for i, t in enumerate(imgs):
                    _check_float(t, f"image {i} ({self.samples[i].id})")
            if self.kind == "wafer" and imgs:
                for t in imgs:
                    _check_wafer(t)
        if self.masks is not None:
            self._validate_masks(n)
        if self.boxes is not None and len(self.boxes) != n:
            raise ValueError(f"{len(self.boxes)} box lists but {n} samples")
        known = set(self.classes)
        unknown = sorted({s.label for s in self.samples if s.label is not None} - known)
        if unknown:
            raise ValueError(f"labels {unknown} are not in classes {self.classes}")
        ids = [s.id for s in self.samples]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ValueError(f"sample id {dup!r} occurs more than once; ids must be unique")
        return self

    def _validate_masks(self, n: int) -> None:
        masks = self.masks
        assert masks is not None
        if len(masks) != n:
            raise ValueError(f"{len(masks)} masks but {n} images")
        if isinstance(masks, LazyImages) or isinstance(self.images, LazyImages):
            return
        if isinstance(masks, torch.Tensor) and (masks.ndim != 4 or masks.shape[1] != 1):
            raise ValueError(f"masks tensor must be N×1×H×W, got {tuple(masks.shape)}")
        if not isinstance(masks, torch.Tensor):
            for i in range(n):
                if masks[i].ndim != 3 or masks[i].shape[0] != 1:
                    raise ValueError(f"mask {i} must be 1×H×W, got {tuple(masks[i].shape)}")
        if isinstance(masks, torch.Tensor) and isinstance(self.images, torch.Tensor):
            if masks.shape[-2:] != self.images.shape[-2:]:
                raise ValueError(
                    f"masks are {tuple(masks.shape[-2:])} but images {tuple(self.images.shape[-2:])}"
                )
            return
        for i in range(n):
            if masks[i].shape[-2:] != self.images[i].shape[-2:]:
                raise ValueError(
                    f"mask of {self.samples[i].id!r} is {tuple(masks[i].shape[-2:])} "
                    f"but its image is {tuple(self.images[i].shape[-2:])}"
                )

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def is_uniform(self) -> bool:
        """True when ``images`` is one ``N×C×H×W`` tensor."""
        return isinstance(self.images, torch.Tensor)

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.images, LazyImages)

    @property
    def channels(self) -> int | None:
        if isinstance(self.images, torch.Tensor):
            return int(self.images.shape[1])
        if len(self.images) == 0:
            return None
        return int(self.images[0].shape[0])

    @property
    def size(self) -> tuple[int, int] | None:
        """``(H, W)`` when all images share one size, else ``None``."""
        if isinstance(self.images, torch.Tensor):
            return int(self.images.shape[2]), int(self.images.shape[3])
        return None

    @property
    def labels(self) -> list[str | None]:
        return [s.label for s in self.samples]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def is_labelled(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def targets(self) -> torch.Tensor:
        """Class indices as a LongTensor; ``-1`` where the label is ``None``."""
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor(
            [index[s.label] if s.label is not None else -1 for s in self.samples], dtype=torch.long
        )

    def class_counts(self, *, include_synthetic: bool = True) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            if s.label is not None and (include_synthetic or not s.synthetic):
                counts[s.label] += 1
        return counts

    def image_tensor(self) -> torch.Tensor:
        """The images as one ``N×C×H×W`` tensor; refuses sets of mixed sizes."""
        if isinstance(self.images, torch.Tensor):
            return self.images
        imgs = list(self.images)
        if not imgs:
            raise DataError("the image set is empty")
        sizes = {tuple(t.shape) for t in imgs}
        if len(sizes) != 1:
            raise DataError(
                f"images have {len(sizes)} different sizes; put Wrangle(size=...) before this stage"
            )
        return torch.stack(imgs)

    # ------------------------------------------------------------------ set algebra
    def _slice_field(self, name: str, value: Any, idx: list[int]) -> Any:
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            return value[torch.as_tensor(idx, dtype=torch.long)] if idx else value[:0]
        if isinstance(value, LazyImages):
            return value.take(idx)
        return [value[i] for i in idx]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Self:
        """The samples at ``indices`` (positions), every per-sample field sliced alike."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        n = len(self)
        for i in idx:
            if not -n <= i < n:
                raise DataError(f"index {i} out of range for a set of {n}")
        changes = {
            name: self._slice_field(name, getattr(self, name), idx)
            for name in type(self).per_sample_fields
        }
        return self.replace(**changes)

    def select(self, predicate: Callable[[SampleMeta], bool]) -> Self:
        """The samples whose metadata satisfies ``predicate``."""
        return self.subset([i for i, s in enumerate(self.samples) if predicate(s)])

    def real(self) -> Self:
        """Only real samples: synthetic ones never enter an evaluation."""
        return self.select(lambda s: not s.synthetic)

    def materialize(self) -> Self:
        """Decode a lazy set into memory (a tensor if sizes agree, else a list)."""
        if not isinstance(self.images, LazyImages) and not isinstance(self.masks, LazyImages):
            return self
        imgs = list(self.images)
        sizes = {tuple(t.shape) for t in imgs}
        images: ImageData = torch.stack(imgs) if len(sizes) == 1 else imgs
        masks = self.masks
        if isinstance(masks, LazyImages):
            ms = list(masks)
            masks = torch.stack(ms) if len({tuple(m.shape) for m in ms}) == 1 else ms
        return self.replace(images=images, masks=masks)

    def iter_batches(self, batch_size: int) -> Iterator[Self]:
        """Yield consecutive in-memory batches of at most ``batch_size`` samples."""
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.subset(range(start, min(start + batch_size, len(self)))).materialize()

    @classmethod
    def concat(cls, sets: Sequence[ImageSet]) -> Self:
        """Join sets of the same kind; classes are merged in first-seen order."""
        if not sets:
            raise DataError("nothing to concatenate")
        classes: list[str] = []
        for s in sets:
            classes += [c for c in s.classes if c not in classes]
        kinds = {s.kind for s in sets}
        if len(kinds) > 1:
            raise DataError(f"cannot join sets of kinds {sorted(kinds)}")
        fields: dict[str, Any] = {
            "classes": classes,
            "kind": sets[0].kind,
            "skipped": [x for s in sets for x in s.skipped],
        }
        for name in ("images", "masks", "boxes", "samples"):
            values = [getattr(s, name) for s in sets]
            if name in ("masks", "boxes") and any(v is None for v in values):
                if not all(v is None for v in values):
                    raise DataError(f"some sets have {name} and some do not")
                fields[name] = None
                continue
            if all(isinstance(v, torch.Tensor) for v in values) and (
                len({tuple(v.shape[1:]) for v in values}) == 1
            ):
                fields[name] = torch.cat(values)
            else:
                merged: list[Any] = []
                for v in values:
                    merged += list(v)
                fields[name] = merged
        return cls.build(**fields) if cls is ImageSet else ImageSet.build(**fields)  # type: ignore[return-value]

    def base_fields(self) -> dict[str, Any]:
        """The :class:`ImageSet` fields of this record, to build a derived record from."""
        return {name: getattr(self, name) for name in ImageSet.model_fields}

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: counts, sizes, kinds (no pixels)."""
        sizes: dict[str, int] = {}
        if not isinstance(self.images, LazyImages):
            for t in self.images:
                key = f"{int(t.shape[-2])}x{int(t.shape[-1])}"
                sizes[key] = sizes.get(key, 0) + 1
        return {
            "n": len(self),
            "kind": self.kind,
            "classes": list(self.classes),
            "class_counts": self.class_counts(),
            "synthetic": sum(s.synthetic for s in self.samples),
            "unlabelled": sum(s.label is None for s in self.samples),
            "channels": self.channels,
            "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:20]),
            "lazy": self.is_lazy,
            "skipped": len(self.skipped),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything but the tensors, as plain JSON types."""
        return {
            "type": type(self).__name__,
            "summary": self.summary(),
            "skipped": list(self.skipped),
            "samples": [s.model_dump() for s in self.samples],
            "boxes": None
            if self.boxes is None
            else [[b.model_dump() for b in bl] for bl in self.boxes],
        }


def _check_wafer(t: torch.Tensor) -> None:
    if t.dtype != torch.uint8:
        raise ValueError(f"wafer maps must be uint8 codes 0/1/2, got dtype {t.dtype}")
    if t.numel() and int(t.max()) > 2:
        raise ValueError(
            f"wafer map codes must be 0 (outside), 1 (pass) or 2 (fail); found {int(t.max())}"
        )
    if t.shape[-3] != 1:
        raise ValueError(f"wafer maps have one channel, got {t.shape[-3]}")


class Predictions(ImageSet):
    """An :class:`ImageSet` with class probabilities from a classifier.

    Attributes:
        probs: ``N×K`` float tensor, rows sum to 1, columns follow ``classes``.
        predicted: Predicted class per sample, ``None`` where the model was unsure
            (below the classifier's ``reject_below``) and a person should look.
    """

    per_sample_fields: ClassVar[tuple[str, ...]] = (
        *ImageSet.per_sample_fields,
        "probs",
        "predicted",
    )

    probs: torch.Tensor
    predicted: list[str | None]

    @model_validator(mode="after")
    def _validate_predictions(self) -> Self:
        n, k = len(self.samples), len(self.classes)
        if self.probs.ndim != 2 or tuple(self.probs.shape) != (n, k):
            raise ValueError(
                f"probs must be {n}×{k} (samples × classes), got {tuple(self.probs.shape)}"
            )
        if self.probs.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"probs must be float, got {self.probs.dtype}")
        _check_float(self.probs, "probs")
        if n and not torch.allclose(
            self.probs.double().sum(1), torch.ones(n, dtype=torch.float64), atol=1e-3
        ):
            raise ValueError("probability rows must sum to 1")
        if len(self.predicted) != n:
            raise ValueError(f"{len(self.predicted)} predicted labels but {n} samples")
        unknown = {p for p in self.predicted if p is not None} - set(self.classes)
        if unknown:
            raise ValueError(f"predicted labels {sorted(unknown)} are not in classes")
        return self

    def predicted_indices(self) -> torch.Tensor:
        """Predicted class indices, ``-1`` where rejected."""
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor(
            [index[p] if p is not None else -1 for p in self.predicted], dtype=torch.long
        )


class AnomalyScores(ImageSet):
    """An :class:`ImageSet` scored by a good-only anomaly detector.

    Attributes:
        scores: Raw image score per sample (higher = more anomalous).
        maps: ``N×H×W`` anomaly maps at the image resolution, or ``None``.
        normalized: Scores mapped to [0, 1] with 0.5 at the threshold, or ``None``.
        threshold: Raw-score threshold, ``None`` when not calibrated.
        is_anomalous: Bool verdict per sample, ``None`` without a threshold.
        review: Bool per sample: in the detector's review band (or not scored), for a
            person to decide; ``None`` when the detector has no review band.
        region_threshold: Per sample, the map value above which its pixels form the
            defect region (its product's calibrated region threshold; NaN for a part not
            scored); ``None`` when not calibrated. Regions:
            :func:`inspectkit.metrics.anomaly.defect_regions`.
    """

    per_sample_fields: ClassVar[tuple[str, ...]] = (
        *ImageSet.per_sample_fields,
        "scores",
        "maps",
        "normalized",
        "is_anomalous",
        "review",
        "region_threshold",
    )

    scores: torch.Tensor
    maps: torch.Tensor | None = None
    normalized: torch.Tensor | None = None
    threshold: float | None = None
    is_anomalous: torch.Tensor | None = None
    review: torch.Tensor | None = None
    region_threshold: torch.Tensor | None = None

    @model_validator(mode="after")
    def _validate_scores(self) -> Self:
        n = len(self.samples)
        if self.scores.ndim != 1 or self.scores.shape[0] != n:
            raise ValueError(f"scores must have shape ({n},), got {tuple(self.scores.shape)}")
        _check_float(self.scores, "scores")
        if self.maps is not None:
            if self.maps.ndim != 3 or self.maps.shape[0] != n:
                raise ValueError(f"maps must be N×H×W with N={n}, got {tuple(self.maps.shape)}")
            _check_float(self.maps, "anomaly maps")
        if self.normalized is not None:
            if tuple(self.normalized.shape) != (n,):
                raise ValueError("normalized scores must have one value per sample")
            if n and (float(self.normalized.min()) < 0 or float(self.normalized.max()) > 1):
                raise ValueError("normalized scores must lie in [0, 1]")
        if self.is_anomalous is not None and (
            self.is_anomalous.dtype != torch.bool or tuple(self.is_anomalous.shape) != (n,)
        ):
            raise ValueError("is_anomalous must be a bool tensor with one value per sample")
        if self.review is not None and (
            self.review.dtype != torch.bool or tuple(self.review.shape) != (n,)
        ):
            raise ValueError("review must be a bool tensor with one value per sample")
        if self.region_threshold is not None:
            r = self.region_threshold
            if tuple(r.shape) != (n,) or not r.is_floating_point():
                raise ValueError("region_threshold must hold one float per sample")
            if bool(torch.isinf(r).any()):
                raise ValueError("region_threshold must be finite (NaN: a part not scored)")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")
        return self


class Explained(Predictions):
    """:class:`Predictions` with a heatmap per sample explaining the target class.

    Attributes:
        heatmaps: ``N×H×W`` float maps at the input resolution, each min-max normalised to [0, 1].
        method: Name of the explanation method (``"gradcam"``, ``"sise"``, ...).
        target_classes: The class index each heatmap explains.
    """

    per_sample_fields: ClassVar[tuple[str, ...]] = (
        *Predictions.per_sample_fields,
        "heatmaps",
        "target_classes",
    )

    heatmaps: torch.Tensor
    method: str
    target_classes: list[int]

    @model_validator(mode="after")
    def _validate_heatmaps(self) -> Self:
        n = len(self.samples)
        if self.heatmaps.ndim != 3 or self.heatmaps.shape[0] != n:
            raise ValueError(f"heatmaps must be N×H×W with N={n}, got {tuple(self.heatmaps.shape)}")
        _check_float(self.heatmaps, "heatmaps")
        if len(self.target_classes) != n:
            raise ValueError(f"{len(self.target_classes)} target classes but {n} samples")
        k = len(self.classes)
        bad = [t for t in self.target_classes if not 0 <= t < k]
        if bad:
            raise ValueError(f"target classes {bad[:5]} out of range 0..{k - 1}")
        return self


class Report(BaseModel):
    """Metrics and figures a stage or evaluation produced; JSON-serialisable.

    Attributes:
        title: What was measured.
        metrics: Scalar figures (accuracy, macro_f1, image_auroc, ...).
        classes: Class order of ``confusion`` and ``per_class``.
        confusion: Confusion matrix, rows = true class, columns = predicted.
        per_class: Per-class figures, e.g. ``{"Scratch": {"precision": .9, "recall": .8}}``.
        counts: Sample counts by category.
        notes: Human-readable remarks (skipped files, warnings).
        details: Any other JSON data (curves, lists of skipped files, ...).
    """

    model_config = ConfigDict(extra="forbid")

    title: str = "report"
    metrics: dict[str, float] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    confusion: list[list[int]] | None = None
    per_class: dict[str, dict[str, float]] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate_report(self) -> Report:
        if self.confusion is not None:
            k = len(self.classes)
            if len(self.confusion) != k or any(len(r) != k for r in self.confusion):
                raise ValueError(f"confusion matrix must be {k}×{k} to match classes")
        try:
            json.dumps(self.details, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"details must be plain JSON: {exc}") from None
        return self

    def to_json(self, **kwargs: Any) -> str:
        """The report as a JSON string (NaN metrics become ``null``)."""
        data = self.model_dump()
        data["metrics"] = {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()}
        return json.dumps(data, indent=kwargs.pop("indent", 2), **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON atomically (temp file + rename)."""
        from inspectkit.atomic import atomic_write

        return atomic_write(path, self.to_json())


__all__ = [
    "AnomalyScores",
    "Box",
    "Explained",
    "ImageSet",
    "LazyImages",
    "Predictions",
    "Record",
    "Report",
    "SampleMeta",
]
