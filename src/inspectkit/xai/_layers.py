"""Finding the layers an explanation method looks at, and small tensor helpers.

Every method in :mod:`inspectkit.xai` works on any ``nn.Module`` classifier that maps an
``N×C×H×W`` float tensor to ``N×K`` logits. Layers are found automatically (the model's
``last_conv`` attribute when it has one, else its last ``nn.Conv2d``) or by name as in
``dict(model.named_modules())``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.errors import ConfigError, DataError

LayerSpec = str | nn.Module | None


def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_layer(model: nn.Module, layer: LayerSpec = None) -> tuple[str, nn.Module]:
    """The ``(name, module)`` an explanation method hooks.

    Args:
        model: The classifier.
        layer: ``None`` for automatic choice (``model.last_conv`` if present, else the
            last ``nn.Conv2d`` in ``model.modules()`` order), a name from
            ``model.named_modules()`` (``"layer4"``, ``"features.6"``), or a submodule.

    Raises:
        ConfigError: The named layer does not exist, the module is not part of the
            model, or the model has no conv layer and no layer was named.
    """
    named = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in named or layer == "":
            convs = _conv_names(model)
            hint = f"; its conv layers are {convs[-5:]}" if convs else ""
            raise ConfigError(
                f"the model has no layer named {layer!r}{hint}; pass a name from "
                "model.named_modules() or layer=None to pick the last conv layer"
            )
        return layer, named[layer]
    if isinstance(layer, nn.Module):
        for name, mod in named.items():
            if mod is layer:
                return name, mod
        raise ConfigError(f"the layer {type(layer).__name__} given is not a submodule of the model")
    if layer is not None:
        raise ConfigError(f"layer must be a name, a module or None, got {type(layer).__name__}")
    last = getattr(model, "last_conv", None)
    if isinstance(last, nn.Module):
        for name, mod in named.items():
            if mod is last:
                return name, mod
    convs = _conv_names(model)
    if not convs:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Conv2d layer to explain; name the layer to use "
            "with layer='...' (a module whose output is N×C×h×w)"
        )
    return convs[-1], named[convs[-1]]


@dataclass(frozen=True)
class BlockPoint:
    """One selected block end: module ``name`` and which call of it in a forward pass."""

    name: str
    call: int
    size: tuple[int, int]
    channels: int


class _Recorder:
    """Forward hooks that log every 4-D output in execution order."""

    def __init__(self, model: nn.Module) -> None:
        self.events: list[tuple[str, int, tuple[int, int], int]] = []
        self.calls: dict[str, int] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if name == "":
                continue
            self.handles.append(mod.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def fn(_mod: nn.Module, _inp: object, out: object) -> None:
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                self.events.append(
                    (name, call, (int(out.shape[2]), int(out.shape[3])), int(out.shape[1]))
                )

        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def find_blocks(
    model: nn.Module, example: torch.Tensor, names: Sequence[str] | None = None, max_blocks: int = 4
) -> list[BlockPoint]:
    """The ends of the model's conv blocks: the last output at each spatial resolution.

    A forward pass with hooks on every submodule logs the 4-D outputs in the order they
    are produced. Consecutive outputs of one spatial size form a block; the block's end
    is the last of them (for torchvision ResNets that is ``layer1`` … ``layer4`` and the
    stem; for a plain CNN the last conv/activation before each pooling). Outputs of
    1×1 (after global pooling) are ignored. The deepest ``max_blocks`` are kept.

    Args:
        model: The classifier (evaluated in its current mode).
        example: One preprocessed input ``1×C×H×W``.
        names: Explicit module names to use instead (each called once, or its first call).
        max_blocks: How many of the deepest blocks to keep.

    Raises:
        ConfigError: A named module does not exist or produces no ``N×C×h×w`` output;
            the model has no conv block.
    """
    rec = _Recorder(model)
    try:
        with torch.no_grad():
            model(example)
    finally:
        rec.remove()
    if names is not None:
        known = dict(model.named_modules())
        points = []
        for n in names:
            if n not in known or n == "":
                raise ConfigError(
                    f"the model has no layer named {n!r}; use names from model.named_modules()"
                )
            ev = next((e for e in rec.events if e[0] == n), None)
            if ev is None:
                raise ConfigError(
                    f"layer {n!r} produces no N×C×h×w output; pick a conv block output"
                )
            points.append(BlockPoint(ev[0], ev[1], ev[2], ev[3]))
        return points
    blocks: list[BlockPoint] = []
    prev_size: tuple[int, int] | None = None
    for name, call, size, ch in rec.events:
        if size[0] * size[1] <= 1:
            prev_size = size
            continue
        point = BlockPoint(name, call, size, ch)
        if size == prev_size and blocks:
            blocks[-1] = point
        else:
            blocks.append(point)
        prev_size = size
    if not blocks:
        raise ConfigError(
            f"{type(model).__name__} produces no spatial feature maps; SISE needs a CNN "
            "(or name the block outputs with layers=[...])"
        )
    return blocks[-max_blocks:]


class Capture:
    """Keeps the outputs of chosen (module, call) points during a forward pass."""

    def __init__(self, model: nn.Module, points: Sequence[BlockPoint]) -> None:
        named = dict(model.named_modules())
        self.points = list(points)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.points)
        self.calls: dict[str, int] = {}
        self.handles = []
        for name in {p.name for p in self.points}:
            self.handles.append(named[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def fn(_mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
            call = self.calls.get(name, 0)
            self.calls[name] = call + 1
            for i, p in enumerate(self.points):
                if p.name == name and p.call == call:
                    self.outputs[i] = out

        return fn

    def reset(self) -> None:
        self.calls = {}
        self.outputs = [None] * len(self.points)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_inputs(inputs: object) -> torch.Tensor:
    """Refuse anything but a non-empty float ``N×C×H×W`` tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise DataError(f"inputs must be a float N×C×H×W tensor, got {type(inputs).__name__}")
    if inputs.ndim != 4:
        raise DataError(f"inputs must be N×C×H×W, got shape {tuple(inputs.shape)}")
    if not inputs.dtype.is_floating_point:
        raise DataError(
            f"inputs must be float (the model's preprocessed input), got {inputs.dtype}; "
            "convert with inspectkit.ops.to_float or the classifier's preprocess()"
        )
    if inputs.shape[0] == 0:
        raise DataError("inputs are empty (0 images)")
    return inputs


def resolve_targets(
    target: int | Sequence[int] | torch.Tensor | None, n: int, num_classes: int
) -> torch.Tensor | None:
    """Targets as a LongTensor of length ``n`` (``None`` stays ``None``); range-checked."""
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((n,), int(target), dtype=torch.long)
    else:
        t = torch.as_tensor(target).long().flatten()
        if t.numel() == 1 and n > 1:
            t = t.expand(n).clone()
    if t.numel() != n:
        raise DataError(
            f"{t.numel()} targets for {n} inputs; give one class index per input or one for all"
        )
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][:5].tolist()
        raise DataError(
            f"target classes {bad} are out of range 0..{num_classes - 1} for this model"
        )
    return t


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each ``H×W`` map of an ``N×H×W`` tensor to [0, 1] (flat maps → 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(
        span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)
    )
    return out.reshape(maps.shape)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``N×C×h×w`` maps to ``size`` (torch ``interpolate``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


__all__ = [
    "BlockPoint",
    "Capture",
    "check_inputs",
    "eval_mode",
    "find_blocks",
    "model_device",
    "normalize_maps",
    "resolve_layer",
    "resolve_targets",
    "upsample",
]
