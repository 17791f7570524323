"""Batched geometric and photometric augmentation, wafer-aware where the data are wafer maps.

Every operation works on a whole ``N×C×H×W`` batch at once: one random affine matrix per
sample is built in pixel coordinates, turned into a sampling grid with
``torch.nn.functional.affine_grid`` and applied with ``grid_sample`` — the primitives
torchvision's ``transforms.v2.functional.affine`` uses, but with a different parameter set
per sample instead of one per call (v2's random transforms draw one set per call, which
would mean a Python loop over the samples).

Wafer maps (codes 0 = outside, 1 = pass, 2 = fail) get the wafer-aware treatment of
:func:`augment_wafers`: the fail-die pattern is rotated, sheared, flipped and shifted about
the wafer's centre with nearest-neighbour sampling (no interpolated codes), and the
original wafer outline is imposed again — every die outside the original wafer is dropped,
and every position inside it is a pass die unless a fail die landed on it.

Example:
    >>> import torch
    >>> from inspectkit.augment_ops import AugmentRanges, augment_batch
    >>> maps = torch.ones(4, 1, 32, 32, dtype=torch.uint8)
    >>> out, _, _ = augment_batch(maps, wafer=True, ranges=AugmentRanges(),
    ...                           generator=torch.Generator().manual_seed(0))
    >>> sorted(out.unique().tolist()) == [1]
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms.v2 import functional as TF

from inspectkit.errors import ConfigError, DataError
from inspectkit.records import Box, ImageSet, SampleMeta

#: Default rotation range (± degrees) when ``rotation`` is left ``None``.
DEFAULT_ROTATION = {"wafer": 180.0, "image": 15.0}

Padding = str  # "zeros" | "border" | "reflection"


class AugmentRanges(BaseModel):
    """Validated ranges of the random augmentations (each drawn uniformly per sample).

    Attributes:
        rotation: Rotation range in degrees, drawn from ``[-rotation, rotation]`` (0–180).
            ``None`` picks 180 for wafer maps (patterns keep their class under any
            rotation about the wafer centre) and 15 for photos.
        shear: Shear range in degrees along x and y, ``[-shear, shear]`` (0–45).
        shift: Largest shift as a fraction of the image size (0–0.5), each axis.
        hflip: Flip left-right with probability 0.5.
        vflip: Flip top-bottom with probability 0.5.
        brightness: Photos only: multiply by a factor from ``[1-b, 1+b]`` (0–1).
        contrast: Photos only: scale the deviation from the image's mean gray by a
            factor from ``[1-c, 1+c]`` (0–1).
        padding: How photos are filled where the transform reaches outside the image:
            ``"zeros"``, ``"border"`` or ``"reflection"`` (wafer maps always use their
            outline).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rotation: float | None = Field(None, ge=0, le=180)
    shear: float = Field(0.0, ge=0, le=45)
    shift: float = Field(0.0, ge=0, le=0.5)
    hflip: bool = True
    vflip: bool = True
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    padding: str = Field("zeros", pattern="^(zeros|border|reflection)$")

    def rotation_for(self, wafer: bool) -> float:
        """The rotation range in effect for wafer maps (``True``) or photos."""
        if self.rotation is not None:
            return float(self.rotation)
        return DEFAULT_ROTATION["wafer" if wafer else "image"]

    def check_for(self, wafer: bool) -> None:
        """Refuse photometric ranges on wafer maps (their codes are not intensities)."""
        if wafer and (self.brightness > 0 or self.contrast > 0):
            raise ConfigError(
                "brightness and contrast apply to photos; wafer maps hold 0/1/2 codes, "
                "so set brightness=0 and contrast=0 for them"
            )


def ranges_from(values: Mapping[str, object]) -> AugmentRanges:
    """Pick the :class:`AugmentRanges` fields out of a config's values."""
    return AugmentRanges(**{k: values[k] for k in AugmentRanges.model_fields if k in values})


# ---------------------------------------------------------------------- checks
def check_wafer_maps(images: torch.Tensor) -> None:
    """Raise :class:`DataError` unless ``images`` are ``N×1×H×W`` uint8 codes 0/1/2."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(
            f"wafer mode needs one-channel wafer maps (N×1×H×W), got shape {tuple(images.shape)}; "
            "use mode='image' for photos"
        )
    if images.dtype != torch.uint8:
        raise DataError(
            f"wafer mode needs uint8 maps coded 0/1/2, got dtype {images.dtype}; "
            "use mode='image' for photos"
        )
    if images.numel() and int(images.max()) > 2:
        raise DataError(
            f"wafer mode needs codes 0 (outside), 1 (pass), 2 (fail); found {int(images.max())} — "
            "these look like photos: use mode='image'"
        )


# ---------------------------------------------------------------------- geometry
def wafer_centres(maps: torch.Tensor) -> torch.Tensor:
    """Centre of each wafer (centroid of its non-zero pixels) as ``N×2`` pixel ``(x, y)``.

    A map without any die falls back to the image centre.
    """
    h, w = int(maps.shape[2]), int(maps.shape[3])
    inside = (maps[:, 0] > 0).to(torch.float32)
    per_col = inside.sum(1)  # N×W
    per_row = inside.sum(2)  # N×H
    mass = per_col.sum(1)
    cx = per_col @ torch.arange(w, dtype=torch.float32) / mass.clamp(min=1)
    cy = per_row @ torch.arange(h, dtype=torch.float32) / mass.clamp(min=1)
    empty = mass == 0
    cx = torch.where(empty, torch.full_like(cx, (w - 1) / 2), cx)
    cy = torch.where(empty, torch.full_like(cy, (h - 1) / 2), cy)
    return torch.stack([cx, cy], 1)


def image_centres(n: int, size: tuple[int, int]) -> torch.Tensor:
    """The image centre ``(x, y)`` in pixel coordinates, repeated ``n`` times."""
    h, w = size
    return torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float32).expand(n, 2).clone()


def random_affine_matrices(
    n: int,
    size: tuple[int, int],
    centres: torch.Tensor,
    *,
    rotation: float,
    shear: float,
    shift: float,
    hflip: bool,
    vflip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random forward affine maps in pixel coordinates, ``N×3×3``, one per sample.

    Each maps an input pixel ``p`` to ``c + t + R·S·Fl·(p - c)``: rotation ``R``, shear
    ``S`` and flips ``Fl`` about the sample's centre ``c``, then a shift ``t``.
    """
    h, w = size
    u = torch.rand(n, 7, generator=generator)
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * rotation)
    sx = torch.tan(torch.deg2rad((u[:, 1] * 2 - 1) * shear))
    sy = torch.tan(torch.deg2rad((u[:, 2] * 2 - 1) * shear))
    fx = torch.where((u[:, 3] < 0.5) & hflip, -1.0, 1.0)
    fy = torch.where((u[:, 4] < 0.5) & vflip, -1.0, 1.0)
    tx = (u[:, 5] * 2 - 1) * shift * w
    ty = (u[:, 6] * 2 - 1) * shift * h
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    one = torch.ones(n)
    shr = torch.stack([torch.stack([one, sx], 1), torch.stack([sy, one], 1)], 1)
    flp = torch.diag_embed(torch.stack([fx, fy], 1))
    lin = rot @ shr @ flp
    c = centres.float()
    trans = c + torch.stack([tx, ty], 1) - (lin @ c.unsqueeze(2)).squeeze(2)
    m = torch.zeros(n, 3, 3)
    m[:, :2, :2] = lin
    m[:, :2, 2] = trans
    m[:, 2, 2] = 1
    return m


def _normalizer(size: tuple[int, int]) -> torch.Tensor:
    """Pixel centres → ``affine_grid`` coordinates (``align_corners=False``)."""
    h, w = size
    return torch.tensor(
        [[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]]
    )


def sampling_grid(matrices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ``grid_sample`` grid (``N×H×W×2``) that applies the forward pixel maps ``matrices``.

    Same result as ``F.affine_grid`` (``align_corners=False``) but built from one row and
    one column per sample and broadcast, about four times faster on CPU.
    """
    h, w = size
    norm = _normalizer(size)
    theta = norm @ torch.linalg.inv(matrices.float()) @ torch.linalg.inv(norm)
    xn = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    yn = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    grid = torch.empty(matrices.shape[0], h, w, 2)
    for k in range(2):
        row = theta[:, k, 0, None, None] * xn  # N×1×W
        col = theta[:, k, 1, None, None] * yn[:, None] + theta[:, k, 2, None, None]  # N×H×1
        grid[..., k] = row + col
    return grid


def warp(
    images: torch.Tensor,
    grid: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding: Padding = "zeros",
) -> torch.Tensor:
    """Resample ``images`` (any dtype) on ``grid``; output keeps the input dtype."""
    x = images.float()
    out = F.grid_sample(x, grid.to(x.device), mode=mode, padding_mode=padding, align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    if images.dtype == torch.bool:
        return out > 0.5
    return out.to(images.dtype)


def augment_wafers(maps: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Move the fail-die pattern of wafer maps by ``matrices``, keeping each outline.

    Fail dies are resampled with nearest neighbour, so codes stay 0/1/2; the original
    outline is imposed again: outside it every pixel is 0, inside it a pixel is 2 where a
    fail die landed and 1 otherwise (positions whose source lay off the wafer become
    pass dies).
    """
    grid = sampling_grid(matrices, (int(maps.shape[2]), int(maps.shape[3])))
    fail = (maps == 2).to(torch.float32)
    moved = F.grid_sample(fail, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    outline = (maps > 0).to(torch.uint8)
    return outline + (outline * (moved > 0.5).to(torch.uint8))


def transform_boxes(boxes: Sequence[Box], matrix: torch.Tensor, size: tuple[int, int]) -> list[Box]:
    """Boxes after the forward pixel map ``matrix``: the hull of the moved corners, clipped.

    Boxes that shrink below one pixel inside the image are dropped.
    """
    if not boxes:
        return []
    h, w = size
    out = []
    corners = []
    for b in boxes:
        # box edges are continuous coordinates; pixel i's centre sits at i + 0.5
        for x, y in ((b.xmin, b.ymin), (b.xmax, b.ymin), (b.xmin, b.ymax), (b.xmax, b.ymax)):
            corners.append((x - 0.5, y - 0.5, 1.0))
    pts = (matrix @ torch.tensor(corners, dtype=torch.float32).T).T[:, :2] + 0.5
    pts = pts.view(len(boxes), 4, 2)
    lo = pts.min(1).values
    hi = pts.max(1).values
    lo[:, 0].clamp_(0, w)
    hi[:, 0].clamp_(0, w)
    lo[:, 1].clamp_(0, h)
    hi[:, 1].clamp_(0, h)
    for b, (x0, y0), (x1, y1) in zip(boxes, lo.tolist(), hi.tolist()):
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            out.append(Box(label=b.label, xmin=x0, ymin=y0, xmax=x1, ymax=y1))
    return out


# ---------------------------------------------------------------------- photometric
def photometric(
    images: torch.Tensor, *, brightness: float, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random brightness and contrast on photos (uint8 or float).

    Brightness multiplies by ``b`` from ``[1-brightness, 1+brightness]``; contrast blends
    with the image's mean gray, like ``torchvision.transforms.v2.functional.adjust_contrast``
    but with one factor per sample. uint8 stays in 0–255; float is clipped to the
    input's range.
    """
    if brightness <= 0 and contrast <= 0:
        return images
    n = images.shape[0]
    u = torch.rand(n, 2, generator=generator)
    x = images.float()
    if brightness > 0:
        b = 1 + (u[:, 0] * 2 - 1) * brightness
        x = x * b.view(n, 1, 1, 1)
    if contrast > 0:
        c = (1 + (u[:, 1] * 2 - 1) * contrast).view(n, 1, 1, 1)
        gray = x if x.shape[1] == 1 else TF.rgb_to_grayscale(x[:, :3], num_output_channels=1)
        mean = gray.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    if images.dtype == torch.uint8:
        return x.round_().clamp_(0, 255).to(torch.uint8)
    lo, hi = float(images.min()), float(images.max())
    return x.clamp_(lo, hi).to(images.dtype)


# ---------------------------------------------------------------------- one call
def augment_batch(
    images: torch.Tensor,
    *,
    wafer: bool,
    ranges: AugmentRanges,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
    boxes: Sequence[Sequence[Box]] | None = None,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None, list[list[Box]] | None]:
    """Augment a batch with one random transform per sample.

    Args:
        images: ``N×C×H×W`` uint8 or float images; wafer maps ``N×1×H×W`` uint8 codes.
        wafer: Wafer-aware mode (see :func:`augment_wafers`); photos otherwise.
        ranges: The validated random ranges.
        generator: Source of randomness (same seed ⇒ same output).
        masks: Optional ``N×1×H×W`` defect masks moved with their images (nearest).
        boxes: Optional boxes per image, moved with their images.
        chunk: Samples per vectorised call (bounds memory).

    Returns:
        ``(images, masks, boxes)`` — masks and boxes ``None`` when not given.

    Example:
        >>> import torch
        >>> x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
        >>> y, _, _ = augment_batch(x, wafer=False, ranges=AugmentRanges(brightness=0.2),
        ...                         generator=torch.Generator().manual_seed(1))
        >>> y.shape, y.dtype
        (torch.Size([3, 3, 16, 16]), torch.uint8)
    """
    if images.ndim != 4:
        raise DataError(f"expected N×C×H×W images, got shape {tuple(images.shape)}")
    ranges.check_for(wafer)
    if wafer:
        check_wafer_maps(images)
    n = int(images.shape[0])
    size = (int(images.shape[2]), int(images.shape[3]))
    rotation = ranges.rotation_for(wafer)
    outs, mouts = [], []
    all_matrices = []
    for start in range(0, n, chunk):
        x = images[start : start + chunk]
        m = x.shape[0]
        centres = wafer_centres(x) if wafer else image_centres(m, size)
        mats = random_affine_matrices(
            m,
            size,
            centres,
            rotation=rotation,
            shear=ranges.shear,
            shift=ranges.shift,
            hflip=ranges.hflip,
            vflip=ranges.vflip,
            generator=generator,
        )
        all_matrices.append(mats)
        if wafer:
            outs.append(augment_wafers(x, mats))
            if masks is not None:
                grid = sampling_grid(mats, size)
                mouts.append(warp(masks[start : start + chunk], grid, mode="nearest"))
            continue
        grid = sampling_grid(mats, size)
        y = warp(x, grid, mode="bilinear", padding=ranges.padding)
        y = photometric(
            y, brightness=ranges.brightness, contrast=ranges.contrast, generator=generator
        )
        outs.append(y)
        if masks is not None:
            mouts.append(
                warp(masks[start : start + chunk], grid, mode="nearest", padding=ranges.padding)
            )
    out = torch.cat(outs) if outs else images[:0].clone()
    out_masks = (torch.cat(mouts) if mouts else masks[:0].clone()) if masks is not None else None
    out_boxes = None
    if boxes is not None:
        mats_all = torch.cat(all_matrices) if all_matrices else torch.zeros(0, 3, 3)
        out_boxes = [transform_boxes(list(b), mats_all[i], size) for i, b in enumerate(boxes)]
    return out, out_masks, out_boxes


# ---------------------------------------------------------------------- balancing
def top_up_plan(
    counts: Mapping[str, int],
    *,
    per_class: int | None = None,
    ratio: float | None = None,
) -> dict[str, int]:
    """How many synthetic samples each class needs; never negative (real ones stay).

    ``per_class=N`` tops every class up to ``N``; ``ratio=r`` tops every class up to
    ``ceil(r × largest class)``; with neither, ``ratio=1`` (balance to the largest class).

    Example:
        >>> top_up_plan({"a": 10, "b": 3}, per_class=5)
        {'a': 0, 'b': 2}
        >>> top_up_plan({"a": 10, "b": 3}, ratio=0.5)
        {'a': 0, 'b': 2}
    """
    if per_class is not None and ratio is not None:
        raise ConfigError("give either per_class or ratio, not both")
    if per_class is not None:
        if per_class <= 0:
            raise ConfigError(f"per_class must be a positive number of samples, got {per_class}")
        target = per_class
    else:
        r = 1.0 if ratio is None else ratio
        if not (0 < r <= 1) or not math.isfinite(r):
            raise ConfigError(f"ratio must lie in (0, 1], got {r}")
        target = math.ceil(r * max(counts.values(), default=0))
    return {c: max(0, target - k) for c, k in counts.items()}


def spread_sources(n_sources: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` source positions that use each of ``n_sources`` as evenly as possible, shuffled."""
    if n_sources <= 0:
        raise DataError("no source samples to draw from")
    reps = -(-k // n_sources)
    perms = [torch.randperm(n_sources, generator=generator) for _ in range(reps)]
    return torch.cat(perms)[:k] if perms else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------- sample bookkeeping
Mode = Literal["auto", "wafer", "image"]


def wafer_mode(data: ImageSet, mode: Mode, stage: str) -> bool:
    """Decide wafer-aware or photo mode for ``data``; refuse contradictions clearly."""
    if mode == "auto":
        return data.kind == "wafer"
    if mode == "image" and data.kind == "wafer":
        raise ConfigError(
            f"{stage}: mode='image' would interpolate the 0/1/2 codes of wafer maps; "
            "use mode='wafer' or 'auto' for them"
        )
    return mode == "wafer"


def real_indices_by_class(data: ImageSet, classes: list[str]) -> dict[str, list[int]]:
    """Positions of the real (non-synthetic) samples of each class."""
    out: dict[str, list[int]] = {c: [] for c in classes}
    for i, s in enumerate(data.samples):
        if s.label in out and not s.synthetic:
            out[s.label].append(i)
    return out


def synthetic_meta(
    origin: SampleMeta, new_id: str, method: str, extra: dict[str, Any] | None = None
) -> SampleMeta:
    """Metadata of a sample derived from ``origin``: same label, split and group, flagged synthetic."""
    meta: dict[str, Any] = {"origin": origin.id, "method": method}
    if extra:
        meta.update(extra)
    return SampleMeta(
        id=new_id,
        source=origin.source,
        label=origin.label,
        split=origin.split,
        synthetic=True,
        group=origin.group,
        meta=meta,
    )


def unique_id(base: str, counter: dict[str, int], taken: set[str], tag: str) -> str:
    """``"<base>#<tag><k>"`` with the smallest unused ``k`` for that base."""
    k = counter.get(base, 0)
    new = f"{base}#{tag}{k}"
    while new in taken:
        k += 1
        new = f"{base}#{tag}{k}"
    counter[base] = k + 1
    taken.add(new)
    return new


def target_classes(data: ImageSet, classes: list[str] | None, stage: str) -> list[str]:
    """The classes to top up: ``classes`` (checked against the set) or all of the set's."""
    if classes is None:
        return list(data.classes)
    unknown = [c for c in classes if c not in data.classes]
    if unknown:
        raise ConfigError(
            f"{stage}: classes {unknown} are not in the data's classes {data.classes}"
        )
    return list(classes)


__all__ = [
    "AugmentRanges",
    "Mode",
    "augment_batch",
    "augment_wafers",
    "check_wafer_maps",
    "image_centres",
    "photometric",
    "random_affine_matrices",
    "ranges_from",
    "real_indices_by_class",
    "sampling_grid",
    "spread_sources",
    "synthetic_meta",
    "target_classes",
    "top_up_plan",
    "transform_boxes",
    "unique_id",
    "wafer_centres",
    "wafer_mode",
    "warp",
]
