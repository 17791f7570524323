"""``Wrangle``: bring a raw image set to one size and channel count.

Wafer maps are resized with nearest neighbour so their 0/1/2 codes survive; photos with
antialiased bilinear resampling. Masks always use nearest neighbour, boxes are rescaled.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, field_validator

from inspectkit.errors import DataError
from inspectkit.ops import resize_images, to_channels
from inspectkit.records import ImageSet
from inspectkit.stage import Stage, StageConfig

log = logging.getLogger(__name__)


class Wrangle(Stage[ImageSet, ImageSet]):
    """Resize, convert channels and tidy an :class:`ImageSet` for the stages after it.

    Args:
        size: Output size, ``64`` for 64×64 or ``(H, W)``; ``None`` keeps sizes (they must
            then agree already for most downstream stages).
        channels: 1 (gray) or 3 (RGB); ``None`` keeps the input's channel count.
        resize: ``"auto"`` (nearest for wafer maps, antialiased otherwise),
            ``"nearest"`` or ``"antialias"``.

    Example:
        >>> from inspectkit.stages import Wrangle
        >>> Wrangle(size=64).config.size
        (64, 64)
    """

    name = "wrangle"
    preserves_type = True

    class Config(StageConfig):
        size: tuple[int, int] | None = None
        channels: Literal[1, 3] | None = None
        resize: Literal["auto", "nearest", "antialias"] = "auto"

        @field_validator("size", mode="before")
        @classmethod
        def _square(cls, v: Any) -> Any:
            if isinstance(v, int) and not isinstance(v, bool):
                v = (v, v)
            return v

        @field_validator("size")
        @classmethod
        def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
            if v is not None and (v[0] < 1 or v[1] < 1 or v[0] > 8192 or v[1] > 8192):
                raise ValueError(f"size must be between 1 and 8192 pixels, got {v}")
            return v

    config: Config

    def _mode(self, data: ImageSet) -> Literal["nearest", "antialias"]:
        if self.config.resize != "auto":
            return self.config.resize
        return "nearest" if data.kind == "wafer" else "antialias"

    def run(self, data: ImageSet) -> ImageSet:
        self.check_input(data)
        data = data.materialize()
        changes: dict[str, Any] = {}
        images = data.images
        size = self.config.size
        if size is not None:
            old_sizes = [tuple(int(x) for x in t.shape[-2:]) for t in images]
            changes["images"] = images = resize_images(images, size, self._mode(data))
            if data.masks is not None:
                changes["masks"] = resize_images(data.masks, size, "nearest")
            if data.boxes is not None:
                changes["boxes"] = [
                    [b.scaled(size[1] / ow, size[0] / oh) for b in boxes]
                    for boxes, (oh, ow) in zip(data.boxes, old_sizes)
                ]
        if self.config.channels is not None and data.channels != self.config.channels:
            if data.kind == "wafer":
                raise DataError("wafer maps have one channel of 0/1/2 codes; leave channels=None")
            if not hasattr(images, "ndim"):
                raise DataError("channel conversion needs images of one size; set size too")
            changes["images"] = to_channels(images, self.config.channels)  # type: ignore[arg-type]
        return data.replace(**changes) if changes else data


__all__ = ["Wrangle"]
