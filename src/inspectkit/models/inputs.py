"""The model-input contract: how stored images become a network's float input.

Every network a stage trains comes with one :class:`InputSpec`: the kind of data (wafer
codes or photos), the channels stored and the channels the network takes, its input size,
the photo normalisation and what happens to images of another size (``"resize"`` them or
``"refuse"`` them). ``Classifier``, ``ContinualClassifier`` and the ``Explain`` stages all
prepare their inputs through it, at fit, at predict and when explaining, so the three can
never disagree on what the network sees:

1. **check** a set against the contract (kind and channels; another channel count is a
   :class:`~inspectkit.errors.DataError` asking for ``Wrangle(channels=...)``);
2. **fit the size**: resize to the input size (nearest neighbour for wafer codes,
   antialiased for photos) or refuse, as the policy says;
3. **encode**: wafer codes 0/1/2 become three one-hot channels (outside / pass / fail:
   codes are categories, not intensities); photos are scaled to [0, 1] and standardised
   with the training set's per-channel mean and standard deviation when it has them;
   optionally straight into channels-last memory layout.

A stage that offers its network and its contract satisfies :class:`ExplainableStage`,
which is all an explanation method needs to attach to it.

Example:
    >>> import torch
    >>> spec = InputSpec(kind="wafer", data_channels=1, size=(4, 4))
    >>> maps = [torch.ones(1, 6, 5, dtype=torch.uint8), torch.full((1, 4, 4), 2, dtype=torch.uint8)]
    >>> spec.prepare(maps).shape
    torch.Size([2, 3, 4, 4])
    >>> InputSpec.from_state(spec.get_state()).model_channels
    3
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch

from inspectkit.errors import DataError, PersistenceError
from inspectkit.ops import check_size, resize_images

if TYPE_CHECKING:
    from torch import nn

    from inspectkit.records import ImageSet, LazyImages

log = logging.getLogger(__name__)

#: Wafer-map codes: 0 outside the wafer, 1 passing die, 2 failing die.
WAFER_CODES = 3
#: Version of :meth:`InputSpec.get_state`'s layout.
SPEC_VERSION = 1

Kind = Literal["wafer", "image"]
SizePolicy = Literal["resize", "refuse"]


def wafer_one_hot(images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Wafer maps coded 0/1/2 (``N×1×H×W``) as ``N×3×H×W`` float one-hot channels.

    Float codes are rounded and clamped to 0..2 first. With ``channels_last=True`` the
    result is built directly in channels-last memory layout (``N×H×W×3`` storage, no
    extra copy to convert it). Each channel is a comparison written straight into the
    float output (no boolean intermediate to cast).

    Example:
        >>> wafer_one_hot(torch.tensor([[[[0, 2]]]], dtype=torch.uint8))[0, :, 0, 1].tolist()
        [0.0, 0.0, 1.0]
    """
    if images.ndim != 4:
        raise DataError(f"expected N×1×H×W wafer maps, got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    codes = images[:, 0]
    if codes.dtype != torch.uint8:
        codes = codes.round().clamp(0, WAFER_CODES - 1).to(torch.uint8)
    if channels_last:
        out = torch.empty(n, h, w, WAFER_CODES, device=images.device)
        for k in range(WAFER_CODES):
            torch.eq(codes, k, out=out[..., k])
        return out.permute(0, 3, 1, 2)
    out = torch.empty(n, WAFER_CODES, h, w, device=images.device)
    for k in range(WAFER_CODES):
        torch.eq(codes, k, out=out[:, k])
    return out


@dataclass(frozen=True, eq=False)
class InputSpec:
    """What a network takes, and how stored images are turned into it.

    Attributes:
        kind: ``"wafer"`` (uint8 codes 0/1/2, one-hot encoded) or ``"image"`` (photos).
        data_channels: Channels of the stored images (1 for wafer maps).
        size: ``(H, W)`` the network is trained at.
        mean: Per-channel mean of photos in [0, 1] (``None``: no standardisation).
        std: Per-channel standard deviation matching ``mean``.
        size_policy: ``"resize"`` images of another size to ``size`` or ``"refuse"``
            them with a :class:`~inspectkit.errors.DataError`.
    """

    kind: Kind
    data_channels: int
    size: tuple[int, int]
    mean: torch.Tensor | None = field(default=None, repr=False)
    std: torch.Tensor | None = field(default=None, repr=False)
    size_policy: SizePolicy = "resize"

    def __post_init__(self) -> None:
        if self.kind not in ("wafer", "image"):
            raise DataError(f"input kind must be 'wafer' or 'image', got {self.kind!r}")
        if self.size_policy not in ("resize", "refuse"):
            raise DataError(f"size policy must be 'resize' or 'refuse', got {self.size_policy!r}")
        if int(self.data_channels) < 1:
            raise DataError(f"images need at least one channel, got {self.data_channels}")
        try:
            size = check_size(tuple(self.size))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise DataError(f"input size: {exc}") from None
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "data_channels", int(self.data_channels))
        if (self.mean is None) != (self.std is None):
            raise DataError("photo normalisation needs both mean and std, or neither")

    # ------------------------------------------------------------------ derived
    @property
    def model_channels(self) -> int:
        """Channels the network takes: 3 one-hot channels for wafer maps, else the data's."""
        return WAFER_CODES if self.kind == "wafer" else self.data_channels

    @property
    def resize_mode(self) -> Literal["nearest", "antialias"]:
        """Nearest neighbour keeps wafer codes discrete; photos are antialiased."""
        return "nearest" if self.kind == "wafer" else "antialias"

    def with_stats(self, images: torch.Tensor) -> InputSpec:
        """A copy whose photo mean/std are measured on ``images`` (``N×C×H×W``, uint8 or
        float, already at the input size). Wafer specs are returned unchanged."""
        if self.kind == "wafer":
            return self
        x = images.float() / 255.0 if not images.dtype.is_floating_point else images.float()
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return replace(self, mean=mean, std=std)

    # ------------------------------------------------------------------ checks
    def check(self, data: ImageSet, owner: str = "model") -> None:
        """Refuse a set of another kind or channel count (and, under ``"refuse"``, of another
        uniform size); ``owner`` names the stage in the message."""
        if data.kind != self.kind:
            raise DataError(
                f"this {owner} was trained on {self.kind!r} images but got {data.kind!r} images"
            )
        channels = data.channels
        if channels is not None and channels != self.data_channels:
            raise DataError(
                f"this {owner} was trained on {self.data_channels}-channel images but got "
                f"{channels}-channel images; convert them with Wrangle(channels={self.data_channels})"
            )
        size = data.size
        if self.size_policy == "refuse" and size is not None and tuple(size) != self.size:
            raise self._size_error(size)

    def _size_error(self, size: tuple[int, ...]) -> DataError:
        h, w = self.size
        return DataError(
            f"images are {size[0]}×{size[1]} but the model was trained on {h}×{w}; "
            f"put the same Wrangle(size=({h}, {w})) before this stage"
        )

    # ------------------------------------------------------------------ preparation
    def fit_size(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """One ``N×C×H×W`` batch at the input size: images of another size are resized
        (``"resize"``) or refused (``"refuse"``); a ragged list is resized per size group."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise DataError(f"expected N×C×H×W images, got shape {tuple(images.shape)}")
            if tuple(images.shape[-2:]) == self.size:
                return images
            if self.size_policy == "refuse":
                raise self._size_error(tuple(images.shape[-2:]))
            return resize_images(images, self.size, self.resize_mode)
        images = list(images)
        if not images:
            raise DataError("no images to prepare")
        other = [tuple(t.shape[-2:]) for t in images if tuple(t.shape[-2:]) != self.size]
        if not other:
            return torch.stack(images)
        if self.size_policy == "refuse":
            raise self._size_error(other[0])
        return resize_images(images, self.size, self.resize_mode)

    def encode(self, images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        """The network's float input for stored images already at the input size:
        one-hot wafer codes, or photos scaled to [0, 1] and standardised.

        Example:
            >>> spec = InputSpec("image", 1, (1, 2), mean=torch.tensor([0.5]), std=torch.tensor([0.5]))
            >>> spec.encode(torch.tensor([[[[0, 255]]]], dtype=torch.uint8)).tolist()
            [[[[-1.0, 1.0]]]]
        """
        if self.kind == "wafer":
            return wafer_one_hot(images, channels_last=channels_last)
        x = images.float() / 255.0 if not images.dtype.is_floating_point else images.float()
        if self.mean is not None and self.std is not None:
            mean = self.mean.to(x.device).view(1, -1, 1, 1)
            std = self.std.to(x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def prepare(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        *,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Stored images (a batch or a ragged list) → the network's float input: sized as
        the policy says, moved to ``device`` as stored (uint8 travels 4× lighter), encoded."""
        x = self.fit_size(images)
        if device is not None:
            x = x.to(device, non_blocking=True)
        return self.encode(x, channels_last=channels_last)

    def batches(
        self,
        images: torch.Tensor | Sequence[torch.Tensor] | LazyImages,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """:meth:`prepare` over consecutive batches of a tensor, a ragged list or lazily
        decoded images."""
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        n = len(images)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if isinstance(images, torch.Tensor):
                batch: torch.Tensor | list[torch.Tensor] = images[start:stop]
            else:
                batch = [images[i] for i in range(start, stop)]
            yield self.prepare(batch, device=device, channels_last=channels_last)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """Tensors and plain values (``torch.load(weights_only=True)`` safe)."""
        return {
            "version": SPEC_VERSION,
            "kind": self.kind,
            "data_channels": self.data_channels,
            "size": list(self.size),
            "mean": None if self.mean is None else self.mean.detach().cpu().clone(),
            "std": None if self.std is None else self.std.detach().cpu().clone(),
            "size_policy": self.size_policy,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> InputSpec:
        """Rebuild what :meth:`get_state` wrote; a newer or broken layout is a
        :class:`~inspectkit.errors.PersistenceError`."""
        try:
            version = int(state.get("version", 0))
            if version > SPEC_VERSION:
                raise PersistenceError(
                    f"input contract version {version} is newer than {SPEC_VERSION}; "
                    "upgrade inspectkit to load this model"
                )
            return cls(
                kind=state["kind"],
                data_channels=int(state["data_channels"]),
                size=(int(state["size"][0]), int(state["size"][1])),
                mean=state.get("mean"),
                std=state.get("std"),
                size_policy=state.get("size_policy", "resize"),
            )
        except (KeyError, TypeError, ValueError, IndexError, DataError) as exc:
            raise PersistenceError(
                f"saved input contract is incomplete or invalid: {exc}"
            ) from None


@runtime_checkable
class ExplainableStage(Protocol):
    """A stage that offers its network and the contract of that network's input.

    That is all an explanation method (:class:`inspectkit.xai.Explain`) needs to attach
    to a stage: it prepares each batch with ``input_spec.prepare`` and explains
    ``network``. Both are ``None`` until the stage is fitted. ``Classifier`` and
    ``ContinualClassifier`` implement it; so can any plugin stage.
    """

    @property
    def network(self) -> nn.Module | None: ...

    @property
    def input_spec(self) -> InputSpec | None: ...


__all__ = [
    "SPEC_VERSION",
    "WAFER_CODES",
    "ExplainableStage",
    "InputSpec",
    "wafer_one_hot",
]
