"""Feature extractors for the anomaly detectors: intermediate layers of a backbone.

A backbone is a torchvision model name (``"resnet18"``, ``"wide_resnet50_2"``, ...), a
name registered with :func:`register_backbone`, or any ``nn.Module``. Features come out
of named submodules (``"layer2"``, ``"layer3"``): through
``torchvision.models.feature_extraction.create_feature_extractor`` (which drops the
layers that are not needed) and, where a model cannot be traced, through forward hooks.

A backbone starts from a seeded random initialisation, from a local weights file (a
``state_dict`` saved with ``torch.save``), loaded strictly so a file for another
architecture is refused with a :class:`~inspectkit.errors.ConfigError`, or from its
ImageNet weights (``weights="imagenet"``, see :mod:`inspectkit.models.backbones`:
EfficientNet-Lite0 from the ``inspectkit[weights]`` extra, torchvision models through
torch's hub cache).

Example:
    >>> import torch
    >>> from inspectkit.models.features import FeatureExtractor
    >>> fx = FeatureExtractor("resnet18", layers=["layer2", "layer3"])
    >>> {k: tuple(v.shape) for k, v in fx(torch.rand(1, 1, 64, 64)).items()}
    {'layer2': (1, 128, 8, 8), 'layer3': (1, 256, 4, 4)}
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from inspectkit.errors import ConfigError
from inspectkit.models.weights import read_state_dict, state_dict_mismatch

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONES: dict[str, Callable[[], nn.Module]] = {}


def register_backbone(name: str, factory: Callable[[], nn.Module]) -> None:
    """Make a custom architecture available by name (e.g. in a stage's config).

    ``factory()`` returns a freshly initialised module; weights come from a local file
    given separately. Registered names take precedence over torchvision names.

    Example:
        >>> from torch import nn
        >>> register_backbone("tiny", lambda: nn.Sequential(nn.Conv2d(3, 4, 3)))
        >>> isinstance(build_backbone("tiny"), nn.Sequential)
        True
    """
    if not name or not callable(factory):
        raise ConfigError("register_backbone needs a non-empty name and a callable factory")
    _BACKBONES[name] = factory


def available_backbones() -> list[str]:
    """Registered and built-in names plus torchvision's classification models."""
    from inspectkit.models.backbones import BUILTIN_BACKBONES

    names = set(_BACKBONES) | set(BUILTIN_BACKBONES)
    return sorted(names | set(torchvision.models.list_models(torchvision.models)))


def load_weights(
    module: nn.Module,
    weights: str | os.PathLike[str] | dict[str, torch.Tensor],
    *,
    what: str = "backbone",
) -> None:
    """Load a local ``state_dict`` file (or a state dict) into ``module`` strictly (names
    and shapes must agree).

    The file may hold the state dict itself or a dict with a ``"state_dict"`` or
    ``"model"`` entry. It is read with ``torch.load(weights_only=True)``.

    Raises:
        ConfigError: The file is missing, unreadable, or made for another architecture.
    """
    if isinstance(weights, dict):
        state, label = weights, "weights"
    else:
        path = Path(weights)
        state = read_state_dict(path, error=ConfigError, what=f"{what} weights file")
        label = f"weights file {str(path)!r}"
    problems = state_dict_mismatch(module.state_dict(), state)
    if problems:
        raise ConfigError(
            f"{what} {label} does not match the architecture: "
            + "; ".join(problems)
            + ". Use weights saved from the same backbone (model.state_dict())."
        )
    module.load_state_dict(state, strict=True)


def build_backbone(
    backbone: str | nn.Module, weights: str | os.PathLike[str] | None = None, seed: int = 0
) -> nn.Module:
    """A backbone module: registered name, torchvision name, or a module passed through.

    Random initialisation is seeded (same ``seed`` ⇒ same weights) and leaves the global
    random state untouched. ``weights`` is a local state-dict file or ``"imagenet"``
    (:func:`~inspectkit.models.backbones.imagenet_state_dict`: the installed extra or
    torch's hub cache; a download only where the machine is online).
    """
    from inspectkit.models.backbones import BUILTIN_BACKBONES, IMAGENET, imagenet_state_dict

    if isinstance(backbone, nn.Module):
        model = backbone
    elif isinstance(backbone, str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if backbone in _BACKBONES:
                model = _BACKBONES[backbone]()
            elif backbone in BUILTIN_BACKBONES:
                model = BUILTIN_BACKBONES[backbone]()
            else:
                try:
                    model = torchvision.models.get_model(backbone, weights=None)
                except ValueError:
                    raise ConfigError(
                        f"unknown backbone {backbone!r}; use a torchvision model name "
                        "(resnet18, wide_resnet50_2, ...), register_backbone(), or pass an nn.Module"
                    ) from None
    else:
        raise ConfigError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    if isinstance(weights, str) and weights == IMAGENET:
        if not isinstance(backbone, str):
            raise ConfigError("weights='imagenet' needs a backbone given by name")
        load_weights(model, imagenet_state_dict(backbone), what=f"{backbone} ImageNet")
    elif weights is not None:
        load_weights(model, weights)
    return model


def _fold_batchnorm(gm: torch.fx.GraphModule) -> None:
    """Fold every eval-mode ``BatchNorm2d`` that only follows a ``Conv2d`` into that conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(gm.named_modules())
    graph = gm.graph
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if not (
            isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and isinstance(modules.get(prev.target), nn.Conv2d)
            and len(prev.users) == 1
            and uses.get(prev.target) == 1
            and uses.get(node.target) == 1
        ):
            continue
        bn = modules[node.target]
        if bn.track_running_stats is False or bn.running_mean is None:
            continue
        fused = fuse_conv_bn_eval(modules[prev.target].eval(), bn.eval())
        for target, module in ((prev.target, fused), (node.target, nn.Identity())):
            parent, _, leaf = target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


#: Activations that can overwrite their input (``inplace=True``) without changing results.
_INPLACE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.LeakyReLU)
#: Modules whose output is a fresh tensor (no view of their input).
_FRESH_OUTPUT = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def _inplace_activations(gm: torch.fx.GraphModule) -> int:
    """Let each activation module overwrite its input where nothing else reads it.

    An activation qualifies when the graph calls its module once and its input is the
    sole use of a fresh tensor: the output of a convolution, BatchNorm or linear layer,
    possibly through ``Identity`` modules (folded BatchNorms) each used once. Saves one
    full-size tensor write per activation (ReLU6 took a third of EfficientNet-Lite0's
    time on a CPU). Returns the number of activations changed.
    """
    modules = dict(gm.named_modules())
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1

    def fresh_and_private(node: Any) -> bool:
        while True:
            if not (
                isinstance(node, torch.fx.Node)
                and node.op == "call_module"
                and len(node.users) == 1
                and uses.get(node.target) == 1
            ):
                return False
            module = modules.get(node.target)
            if isinstance(module, _FRESH_OUTPUT):
                return True
            if not isinstance(module, nn.Identity) or not node.args:
                return False
            node = node.args[0]

    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or uses.get(node.target) != 1:
            continue
        module = modules.get(node.target)
        if (
            isinstance(module, _INPLACE_ACTIVATIONS)
            and not module.inplace
            and node.args
            and fresh_and_private(node.args[0])
        ):
            module.inplace = True
            changed += 1
    return changed


class _Stop(Exception):
    """Raised by the last hook to skip the rest of a forward pass."""


class FeatureExtractor(nn.Module):
    """Outputs of named layers of a backbone, for float images in [0, 1].

    Gray images are replicated to three channels and ImageNet mean/std normalisation is
    applied (``normalize=False`` turns it off), because that is what torchvision
    backbones and ImageNet weights expect.

    Args:
        backbone: torchvision / registered name, or any ``nn.Module``.
        layers: Names of submodules whose outputs to return (``dict(model.named_modules())``).
        weights: Local state-dict file for the backbone, or ``None`` for random init.
        seed: Seed of the random initialisation.
        normalize: Apply ImageNet normalisation.

    Example:
        >>> fx = FeatureExtractor("resnet18", layers=["layer1"])
        >>> fx.out_channels()
        {'layer1': 64}
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str | os.PathLike[str] | None = None,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ConfigError("name at least one backbone layer to take features from")
        model = build_backbone(backbone, weights, seed)
        names = dict(model.named_modules())
        unknown = [name for name in layers if name not in names]
        if unknown:
            top = [n for n in names if n and "." not in n]
            raise ConfigError(f"backbone has no layer(s) {unknown}; its top-level layers are {top}")
        self.layers = layers
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._hooked = False
        try:
            self.body: nn.Module = create_feature_extractor(
                model, return_nodes={n: n for n in layers}
            )
        except Exception as exc:  # models that torch.fx cannot trace
            log.info("tracing the backbone failed (%s); using forward hooks", exc)
            self.body = model
            self._hooked = True
            self._outputs: dict[str, torch.Tensor] = {}
            for name in layers:
                names[name].register_forward_hook(self._make_hook(name))
        self.body.eval()
        self._channels: dict[str, int] | None = None

    def _make_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self._outputs[name] = out
            if len(self._outputs) == len(self.layers):
                raise _Stop

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        if getattr(self, "_channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        if not self._hooked:
            return dict(self.body(x))
        self._outputs = {}
        with contextlib.suppress(_Stop):
            self.body(x)
        out, self._outputs = self._outputs, {}
        missing = [n for n in self.layers if n not in out]
        if missing:
            raise ConfigError(f"layers {missing} were never called in the backbone's forward pass")
        return {n: out[n] for n in self.layers}

    def inference_copy(self) -> FeatureExtractor:
        """A frozen, faster copy for inference: BatchNorm folded into the convolution before
        it, activations computed in place where nothing else reads their input, tensors in
        ``channels_last`` layout. Same outputs up to float rounding.

        The copy shares nothing with ``self`` (train or load weights into ``self``, then
        take a new copy). Backbones that could not be traced (forward hooks) get only the
        layout change.

        Example:
            >>> fx = FeatureExtractor("resnet18", layers=["layer2"])
            >>> x = torch.rand(1, 3, 64, 64)
            >>> with torch.no_grad():
            ...     d = (fx.inference_copy()(x)["layer2"] - fx.eval()(x)["layer2"]).abs().max()
            >>> bool(d < 1e-3)
            True
        """
        if self._hooked:  # hooks close over ``self``: a deep copy would write into it
            return self
        fast = copy.deepcopy(self).eval()
        for p in fast.parameters():
            p.requires_grad_(False)
        if isinstance(fast.body, torch.fx.GraphModule):
            _fold_batchnorm(fast.body)
            _inplace_activations(fast.body)
        fast.to(memory_format=torch.channels_last)
        fast._channels_last = True
        return fast

    @torch.no_grad()
    def out_channels(self, size: int = 64) -> dict[str, int]:
        """Channels of each requested layer (found with one small forward pass)."""
        if self._channels is None:
            was_training = self.training
            self.eval()
            feats = self(torch.zeros(1, 3, size, size, device=self.mean.device))
            self.train(was_training)
            self._channels = {k: int(v.shape[1]) for k, v in feats.items()}
        return dict(self._channels)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "available_backbones",
    "build_backbone",
    "load_weights",
    "register_backbone",
]
