"""Classification networks: a compact CNN family sized by a parameter budget, and
torchvision backbones adapted to any channel count and class count.

Every network built here is a :class:`ClassifierNet`: ``forward(x)`` returns logits,
``embed(x)`` the penultimate features (``N×D``, used by replay buffers and feature-space
losses) and ``last_conv`` the last convolution (the usual Grad-CAM layer).

Example:
    >>> import torch
    >>> from inspectkit.models import build_classifier, count_parameters
    >>> net = build_classifier("compact", in_channels=3, num_classes=9, max_params=100_000)
    >>> count_parameters(net) <= 100_000
    True
    >>> net(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 9])
    >>> net.embed(torch.zeros(2, 3, 64, 64)).shape[0]
    2
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inspectkit.errors import ConfigError, PersistenceError
from inspectkit.models.weights import read_state_dict, state_dict_mismatch

log = logging.getLogger(__name__)

#: Architectures :func:`build_classifier` knows.
ARCHITECTURES = ("compact", "resnet18", "mobilenet_v3_small", "efficientnet_b0")


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those that require gradients).

    Example:
        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ClassifierNet(nn.Module):
    """A classifier split into ``features`` → ``neck`` → ``head``.

    * ``features``: convolutional body, ``N×C×H×W`` → ``N×D'×h×w``;
    * ``neck``: global pooling (and, for some backbones, a hidden layer) → ``N×D``;
    * ``head``: the final ``nn.Linear(D, num_classes)``.

    Attributes:
        in_channels: Channels the network takes.
        num_classes: Number of logits.
        embed_dim: ``D``, the size of :meth:`embed`'s output.
        arch: Architecture name.
    """

    def __init__(
        self,
        features: nn.Module,
        neck: nn.Module,
        head: nn.Linear,
        *,
        arch: str,
        in_channels: int,
        num_classes: int,
        last_conv_name: str,
    ) -> None:
        super().__init__()
        self.features = features
        self.neck = neck
        self.head = head
        self.arch = arch
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embed_dim = head.in_features
        self.last_conv_name = last_conv_name

    @property
    def last_conv(self) -> nn.Conv2d:
        """The last convolution of the body (target layer for Grad-CAM)."""
        module = self.get_submodule(self.last_conv_name)
        assert isinstance(module, nn.Conv2d)
        return module

    def fused(self) -> ClassifierNet:
        """An inference copy (eval mode) with BatchNorm folded into the convolutions before it.

        Same outputs up to float rounding, fewer memory passes: for line PCs. The
        compact family folds every BatchNorm; other architectures are copied as they are.
        """
        net = copy.deepcopy(self).eval()
        if self.arch == "compact":
            feats = net.features
            feats.stem = fuse_conv_bn_eval(feats.stem, feats.stem_bn)
            feats.stem_bn = nn.Identity()
            for block in feats.modules():
                if isinstance(block, _SeparableBlock):
                    block.dw = fuse_conv_bn_eval(block.dw, block.bn1)
                    block.bn1 = nn.Identity()
                    block.pw = fuse_conv_bn_eval(block.pw, block.bn2)
                    block.bn2 = nn.Identity()
        return net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, ``N×embed_dim``."""
        return self.neck(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``N×num_classes``."""
        return self.head(self.embed(x))


# ---------------------------------------------------------------------- compact family
class _SeparableBlock(nn.Module):
    """Depthwise 3×3 + pointwise 1×1 convolution, BatchNorm, ReLU; residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool = True) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.residual = residual and stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.dw(x)))
        y = self.bn2(self.pw(y))
        if self.residual:
            y = y + x
        return self.act(y)


class AvgMaxPool(nn.Module):
    """Global average and global max pooling side by side: ``N×C×h×w`` → ``N×2C×1×1``.

    The average says how much of a pattern a map holds; the maximum says whether it holds
    it anywhere, which a small or thin defect (a scratch, a local cluster) needs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], 1)


#: Channel widths per resolution level at width multiplier 1 (level 0 = stem).
_COMPACT_WIDTHS = (24, 48, 96, 160, 224, 288, 352)
_WIDTH_GRID = (3.0, 2.5, 2.0, 1.75, 1.5, 1.25, 1.125, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)


def _round8(x: float) -> int:
    return max(8, round(x / 8) * 8)


def _levels_for(input_size: tuple[int, int]) -> int:
    """Stride-2 steps so that the last feature map is about 4×4 (at least one)."""
    side = max(1, min(input_size))
    return int(min(6, max(1, round(math.log2(max(side, 2) / 4)))))


def _compact(
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    width: float,
    depth: int,
    dropout: float,
    pool: str = "avg",
) -> ClassifierNet:
    downs = _levels_for(input_size)
    widths = [_round8(w * width) for w in _COMPACT_WIDTHS]
    layers: list[tuple[str, nn.Module]] = [
        ("stem", nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False)),
        ("stem_bn", nn.BatchNorm2d(widths[0])),
        ("stem_act", nn.ReLU(inplace=True)),
    ]
    cin = widths[0]
    index = 0
    # level 0 is the stem (stride 2, cheap: few channels at the highest resolution); each
    # further level halves the resolution with a strided block, then refines with `depth`
    # residual blocks, so most parameters and arithmetic sit at low resolution
    for level in range(1, max(downs, 2)):
        cout = widths[min(level, len(widths) - 1)]
        stride = 2 if level < downs else 1
        layers.append((f"block{index}", _SeparableBlock(cin, cout, stride)))
        index += 1
        cin = cout
        for _ in range(depth):
            layers.append((f"block{index}", _SeparableBlock(cin, cin, 1)))
            index += 1
    features = nn.Sequential(OrderedDict(layers))
    pooling: nn.Module = AvgMaxPool() if pool == "avgmax" else nn.AdaptiveAvgPool2d(1)
    neck = nn.Sequential(pooling, nn.Flatten(), nn.Dropout(dropout))
    head = nn.Linear(cin * (2 if pool == "avgmax" else 1), num_classes)
    last = layers[-1][0]
    net = ClassifierNet(
        features,
        neck,
        head,
        arch="compact",
        in_channels=in_channels,
        num_classes=num_classes,
        last_conv_name=f"features.{last}.pw",
    )
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_compact(
    in_channels: int,
    num_classes: int,
    *,
    input_size: tuple[int, int] = (64, 64),
    max_params: int | None = 100_000,
    width: float | None = None,
    depth: int = 2,
    dropout: float = 0.1,
    pool: str = "avg",
) -> ClassifierNet:
    """A depthwise-separable CNN with BatchNorm and global pooling, sized to a budget.

    The resolution is halved until the last feature map is about 4×4; each level has a
    strided separable block followed by ``depth`` residual ones. Without ``width``, the
    widest channel multiplier whose parameter count fits ``max_params`` is chosen.

    Args:
        in_channels: Input channels (3 for one-hot wafer maps, 1 for gray photos).
        num_classes: Number of classes.
        input_size: ``(H, W)`` the network will see; sets the number of levels.
        max_params: Parameter budget used when ``width`` is not given.
        width: Explicit channel multiplier (overrides the budget search).
        depth: Residual blocks per level.
        dropout: Dropout before the final linear layer.
        pool: ``"avg"`` (global average pooling) or ``"avgmax"`` (average and max pooling
            concatenated, :class:`AvgMaxPool`: better on small and thin defects).

    Example:
        >>> net = build_compact(3, 9, max_params=50_000)
        >>> count_parameters(net) <= 50_000
        True
    """
    if depth < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if pool not in ("avg", "avgmax"):
        raise ConfigError(f"pool must be 'avg' or 'avgmax', got {pool!r}")
    if width is not None:
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        return _compact(in_channels, num_classes, input_size, width, depth, dropout, pool)
    budget = 100_000 if max_params is None else int(max_params)
    for w in _WIDTH_GRID:
        net = _compact(in_channels, num_classes, input_size, w, depth, dropout, pool)
        if count_parameters(net) <= budget:
            log.debug("compact net: width %.3f, %d parameters", w, count_parameters(net))
            return net
    smallest = count_parameters(
        _compact(in_channels, num_classes, input_size, _WIDTH_GRID[-1], depth, dropout, pool)
    )
    raise ConfigError(
        f"no compact network fits max_params={budget} (the smallest with depth={depth} has "
        f"{smallest}); raise max_params or lower depth"
    )


# ---------------------------------------------------------------------- torchvision backbones
_HEAD_PREFIX = {
    "resnet18": "fc.",
    "mobilenet_v3_small": "classifier.3.",
    "efficientnet_b0": "classifier.1.",
}


def _load_backbone_weights(model: nn.Module, arch: str, path: str | os.PathLike[str]) -> None:
    """Load a torchvision-layout state dict; the classification head may differ in shape."""
    sd = read_state_dict(path, error=PersistenceError)
    own = model.state_dict()
    head = _HEAD_PREFIX[arch]
    problems = state_dict_mismatch(own, sd, ignore_prefix=head)
    if problems:
        raise PersistenceError(
            f"weights file {path} does not match torchvision's {arch}: "
            + "; ".join(problems)
            + f". Use a state dict saved from torchvision.models.{arch}()"
        )
    usable = {k: v for k, v in sd.items() if not (k.startswith(head) and v.shape != own[k].shape)}
    model.load_state_dict(usable, strict=False)
    log.info("loaded %s weights from %s (%d tensors)", arch, path, len(usable))


def _adapt_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution taking ``in_channels`` inputs; learned filters are averaged over RGB."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    return new


def _torchvision(
    arch: str,
    in_channels: int,
    num_classes: int,
    weights: str | os.PathLike[str] | None,
    dropout: float | None,
) -> ClassifierNet:
    import torchvision.models as tvm

    ctor: Callable[..., nn.Module] = getattr(tvm, arch)
    model = ctor(weights=None)
    if weights is not None:
        _load_backbone_weights(model, arch, weights)
    if arch == "resnet18":
        model.conv1 = _adapt_conv(model.conv1, in_channels)  # type: ignore[assignment]
        features = nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,  # type: ignore[arg-type]
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,  # type: ignore[arg-type]
        )
        neck: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if dropout:
            neck.append(nn.Dropout(dropout))  # type: ignore[union-attr]
        dim = model.fc.in_features  # type: ignore[union-attr]
        last = "features.7.1.conv2"
    elif arch == "mobilenet_v3_small":
        feats = model.features  # type: ignore[union-attr]
        feats[0][0] = _adapt_conv(feats[0][0], in_channels)  # type: ignore[index]
        features = feats  # type: ignore[assignment]
        cls = model.classifier  # type: ignore[union-attr]
        if dropout is not None:
            cls[2].p = dropout  # type: ignore[index]
        neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), cls[0], cls[1], cls[2])  # type: ignore[index]
        dim = cls[3].in_features  # type: ignore[index]
        last = f"features.{len(feats) - 1}.0"  # type: ignore[arg-type]
    elif arch == "efficientnet_b0":
        feats = model.features  # type: ignore[union-attr]
        feats[0][0] = _adapt_conv(feats[0][0], in_channels)  # type: ignore[index]
        features = feats  # type: ignore[assignment]
        cls = model.classifier  # type: ignore[union-attr]
        if dropout is not None:
            cls[0].p = dropout  # type: ignore[index]
        neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), cls[0])  # type: ignore[index]
        dim = cls[1].in_features  # type: ignore[index]
        last = f"features.{len(feats) - 1}.0"  # type: ignore[arg-type]
    else:  # pragma: no cover - guarded by build_classifier
        raise ConfigError(f"unknown torchvision architecture {arch!r}")
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    return ClassifierNet(
        features,
        neck,
        head,
        arch=arch,
        in_channels=in_channels,
        num_classes=num_classes,
        last_conv_name=last,
    )


def build_classifier(
    arch: str,
    in_channels: int,
    num_classes: int,
    *,
    input_size: tuple[int, int] = (64, 64),
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ClassifierNet:
    """Build a classification network.

    Args:
        arch: ``"compact"``, ``"resnet18"``, ``"mobilenet_v3_small"`` or ``"efficientnet_b0"``.
        in_channels: Input channels (1 gray, 3 RGB or one-hot wafer codes, any other count).
        num_classes: Number of classes (≥ 2).
        input_size: ``(H, W)`` of the inputs; the compact family adapts its depth to it.
        weights: Torchvision backbones only: a local ``.pt``/``.pth`` state dict in
            torchvision's layout (no download ever happens). The classification head is
            replaced, and a 3-channel first convolution is averaged to ``in_channels``.
        **kwargs: ``compact``: ``max_params``, ``width``, ``depth``, ``dropout``, ``pool``;
            torchvision backbones: ``dropout``.

    Returns:
        A :class:`ClassifierNet`.

    Raises:
        ConfigError: Unknown architecture, bad sizes or keyword arguments.
        PersistenceError: ``weights`` is missing, unreadable or does not match ``arch``.

    Example:
        >>> net = build_classifier("resnet18", in_channels=1, num_classes=6)
        >>> net.last_conv.out_channels
        512
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    if int(in_channels) < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if int(num_classes) < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    size = (int(input_size[0]), int(input_size[1]))
    if min(size) < 8:
        raise ConfigError(f"input_size {size} is too small; use at least 8×8 pixels")
    if arch == "compact":
        if weights is not None:
            raise ConfigError("weights files apply to torchvision backbones, not to arch='compact'")
        allowed = {"max_params", "width", "depth", "dropout", "pool"}
        extra = set(kwargs) - allowed
        if extra:
            raise ConfigError(
                f"unknown options {sorted(extra)} for arch='compact'; allowed: {sorted(allowed)}"
            )
        return build_compact(int(in_channels), int(num_classes), input_size=size, **kwargs)
    extra = set(kwargs) - {"dropout", "max_params", "width", "depth", "pool"}
    if extra:
        raise ConfigError(
            f"unknown options {sorted(extra)} for arch={arch!r}; allowed: ['dropout']"
        )
    return _torchvision(arch, int(in_channels), int(num_classes), weights, kwargs.get("dropout"))


__all__ = [
    "ARCHITECTURES",
    "ClassifierNet",
    "build_classifier",
    "build_compact",
    "count_parameters",
]
