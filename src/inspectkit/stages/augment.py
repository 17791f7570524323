"""``Augment``: classic augmentation that tops up rare classes while a pipeline is fitted.

Like imbalanced-learn's samplers it acts only at training time: ``fit_run`` returns the
real samples plus synthetic ones (``SampleMeta.synthetic=True``), ``run`` hands data on
untouched. Wafer maps are augmented wafer-aware (see :mod:`inspectkit.augment_ops`).
"""

from __future__ import annotations

import logging

import torch
from pydantic import Field, model_validator

from inspectkit.augment_ops import (
    AugmentRanges,
    Mode,
    augment_batch,
    check_wafer_maps,
    ranges_from,
    real_indices_by_class,
    spread_sources,
    synthetic_meta,
    target_classes,
    top_up_plan,
    unique_id,
    wafer_mode,
)
from inspectkit.errors import DataError
from inspectkit.records import Box, ImageSet, SampleMeta
from inspectkit.stage import Seed, Stage, StageConfig

log = logging.getLogger(__name__)


class Augment(Stage[ImageSet, ImageSet]):
    """Top up classes with randomly transformed copies of their real samples (fit time only).

    Every synthetic sample is a rotated / sheared / flipped / shifted (and, for photos,
    brightness- and contrast-jittered) copy of a real sample of the same class; sources
    are used as evenly as possible. Real samples are never removed. Masks and boxes move
    with their images. Wafer maps (``kind="wafer"``, or ``mode="wafer"``) keep their
    0/1/2 codes and their outline.

    Args:
        per_class: Top every class up to this many samples (real + synthetic).
        ratio: Alternatively, top every class up to ``ratio ×`` the largest class
            (0 < ratio ≤ 1). With neither, classes are balanced to the largest one.
        classes: Only top up these classes (default: all classes of the set).
        mode: ``"auto"`` (wafer-aware for wafer sets), ``"wafer"`` or ``"image"``.
        rotation, shear, shift, hflip, vflip, brightness, contrast, padding: The random
            ranges, see :class:`inspectkit.augment_ops.AugmentRanges`.
        seed: Same seed, same synthetic samples.

    Example:
        >>> from inspectkit.stages import Augment
        >>> aug = Augment(per_class=2000, rotation=180, seed=0)
        >>> aug.config.per_class
        2000
    """

    name = "augment"
    preserves_type = True

    class Config(StageConfig, AugmentRanges):
        mode: Mode = "auto"
        per_class: int | None = Field(None, gt=0)
        ratio: float | None = Field(None, gt=0, le=1)
        classes: list[str] | None = None
        seed: Seed = 0

        @model_validator(mode="after")
        def _one_target(self) -> Augment.Config:
            if self.per_class is not None and self.ratio is not None:
                raise ValueError("give either per_class or ratio, not both")
            return self

    config: Config

    @property
    def ranges(self) -> AugmentRanges:
        """The random ranges of this stage."""
        return ranges_from(self.config.model_dump())

    def fit(self, data: ImageSet) -> Augment:
        """Check that ``data`` can be augmented; nothing is learned."""
        self._prepare(data)
        self.fitted = True
        return self

    def run(self, data: ImageSet) -> ImageSet:
        """Inference: data pass through untouched."""
        self.check_input(data)
        return data

    def _prepare(self, data: ImageSet) -> tuple[ImageSet, torch.Tensor, bool]:
        self.check_input(data)
        wafer = wafer_mode(data, self.config.mode, "Augment")
        self.ranges.check_for(wafer)
        data = data.materialize()
        images = data.image_tensor()
        if wafer:
            check_wafer_maps(images)
        return data, images, wafer

    def fit_run(self, data: ImageSet) -> ImageSet:
        """Training time: the real samples followed by the synthetic ones.

        Raises:
            DataError: empty set, images of mixed sizes (put ``Wrangle`` first), or a
                non-wafer image in wafer mode.
            ConfigError: photometric ranges on wafer maps, unknown ``classes``.
        """
        data, images, wafer = self._prepare(data)
        self.fitted = True
        synth = self.synthesize(data, images, wafer)
        base = data if type(data) is ImageSet else ImageSet.build(**data.base_fields())
        if synth is None:
            return base
        return ImageSet.concat([base, synth])

    def synthesize(self, data: ImageSet, images: torch.Tensor, wafer: bool) -> ImageSet | None:
        """The synthetic samples alone (``None`` when every class is already full)."""
        cfg = self.config
        classes = target_classes(data, cfg.classes, "Augment")
        counts = data.class_counts()
        plan = top_up_plan(
            {c: counts[c] for c in classes}, per_class=cfg.per_class, ratio=cfg.ratio
        )
        sources = real_indices_by_class(data, classes)
        gen = torch.Generator().manual_seed(cfg.seed)
        ranges = self.ranges
        taken = set(data.ids)
        counter: dict[str, int] = {}
        out_images: list[torch.Tensor] = []
        out_masks: list[torch.Tensor] = []
        out_boxes: list[list[Box]] = []
        out_samples: list[SampleMeta] = []
        masks = data.masks
        if masks is not None and not isinstance(masks, torch.Tensor):
            masks = torch.stack(list(masks))
        for c in classes:
            need = plan[c]
            if need == 0:
                continue
            src = sources[c]
            if not src:
                log.warning("Augment: class %r has no real samples to augment; it stays empty", c)
                continue
            idx = torch.as_tensor(src)[spread_sources(len(src), need, gen)]
            boxes_in = [data.boxes[i] for i in idx.tolist()] if data.boxes is not None else None
            imgs, ms, bxs = augment_batch(
                images[idx],
                wafer=wafer,
                ranges=ranges,
                generator=gen,
                masks=masks[idx] if masks is not None else None,
                boxes=boxes_in,
            )
            out_images.append(imgs)
            if ms is not None:
                out_masks.append(ms)
            if bxs is not None:
                out_boxes += bxs
            for i in idx.tolist():
                origin = data.samples[i]
                new_id = unique_id(origin.id, counter, taken, "aug")
                out_samples.append(synthetic_meta(origin, new_id, "augment"))
        if not out_samples:
            return None
        log.info(
            "Augment added %d synthetic samples (%s)",
            len(out_samples),
            ", ".join(f"{c}: +{k}" for c, k in plan.items() if k),
        )
        try:
            return ImageSet.build(
                images=torch.cat(out_images),
                masks=torch.cat(out_masks) if masks is not None else None,
                boxes=out_boxes if data.boxes is not None else None,
                samples=out_samples,
                classes=list(data.classes),
                kind=data.kind,
            )
        except DataError as exc:  # pragma: no cover - would be a bug in augment_ops
            raise DataError(f"Augment produced invalid samples: {exc}") from exc


__all__ = ["Augment"]
