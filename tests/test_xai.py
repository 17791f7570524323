"""Grad-CAM and SISE on a small CNN whose decision depends on a known region."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inspectkit.errors import ConfigError, DataError, InspectkitError, PipelineError
from inspectkit.xai import (
    SISE,
    GradCAM,
    energy_pointing_game,
    fuse_blocks,
    mask_l1,
    otsu_threshold,
)
from inspectkit.xai._layers import find_blocks, resolve_layer

SIZE = 32
SQUARE = 8


def _square_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; label 1 when a bright square is present (masks mark the square)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, SIZE, SIZE), generator=g) * 0.5
    y = torch.arange(n) % 2
    masks = torch.zeros((n, SIZE, SIZE), dtype=torch.bool)
    pos = torch.randint(0, SIZE - SQUARE + 1, (n, 2), generator=g)
    for i in range(n):
        r, c = int(pos[i, 0]), int(pos[i, 1])
        masks[i, r : r + SQUARE, c : c + SQUARE] = True
        if y[i] == 1:
            x[i, 0, r : r + SQUARE, c : c + SQUARE] += 0.5
    return x, y, masks


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> SmallCNN:
    torch.manual_seed(0)
    net = SmallCNN()
    x, y, _ = _square_set(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(80):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt, _ = _square_set(64, seed=2)
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean()
    assert acc > 0.9, f"the toy CNN did not learn the square ({acc:.2f})"
    return net


@pytest.fixture(scope="module")
def positives() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, m = _square_set(24, seed=3)
    return x[y == 1], m[y == 1]


def manual_gradcam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer.register_forward_hook(hook)
    try:
        logits = model(x)
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        h.remove()
    a = store["a"]
    w = a.grad.mean((2, 3), keepdim=True)
    cam = F.relu((w * a).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).reshape(cam.shape)


def test_gradcam_matches_manual_hooks(trained, positives):
    x, _ = positives
    target = torch.ones(len(x), dtype=torch.long)
    ours = GradCAM(trained).attribute(x, target=1)
    ref = manual_gradcam(trained, trained.features[6], x, target)
    assert ours.shape == (len(x), SIZE, SIZE)
    for a, b in zip(ours, ref):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert r > 0.999
    assert torch.allclose(ours, ref, atol=1e-4)


def test_gradcam_and_sise_point_at_the_square(trained, positives):
    x, masks = positives
    chance = SQUARE * SQUARE / (SIZE * SIZE)
    for method in (GradCAM(trained), SISE(trained, max_masks=16)):
        maps = method.attribute(x)
        assert maps.shape == (len(x), SIZE, SIZE)
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1
        ebpg = energy_pointing_game(maps, masks)
        assert float(ebpg.mean()) > 4 * chance, (type(method).__name__, float(ebpg.mean()))
        # the hottest pixel lies on (or right next to) the square in most images
        peak = maps.flatten(1).argmax(1)
        grown = F.max_pool2d(masks[:, None].float(), 5, 1, 2)[:, 0].flatten(1)
        hits = grown.gather(1, peak[:, None]).mean()
        assert float(hits) >= 0.75
        l1 = mask_l1(maps, masks)
        assert float(l1.mean()) < 0.5


def test_predicted_target_is_default_and_explicit_targets_differ(trained, positives):
    x, _ = positives
    cam = GradCAM(trained)
    with torch.no_grad():
        pred = trained(x).argmax(1)
    assert torch.allclose(cam.attribute(x), cam.attribute(x, target=pred))
    assert not torch.allclose(cam.attribute(x, target=0), cam.attribute(x, target=1))
    # deterministic, batch size does not matter
    assert torch.allclose(
        cam.attribute(x, target=1), GradCAM(trained, batch_size=3).attribute(x, target=1), atol=1e-5
    )
    s1 = SISE(trained, max_masks=8).attribute(x[:3], target=1)
    s2 = SISE(trained, max_masks=8, batch_size=5).attribute(x[:3], target=1)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_model_left_as_found(trained, positives):
    x, _ = positives
    trained.zero_grad(set_to_none=True)
    trained.train()
    try:
        GradCAM(trained).attribute(x[:2])
        SISE(trained, max_masks=4).attribute(x[:2])
        assert trained.training
        assert all(p.grad is None for p in trained.parameters())
    finally:
        trained.eval()


def test_sise_fast_copy_gives_the_same_maps_and_leaves_the_model_alone(
    trained, positives, monkeypatch
):
    import inspectkit.xai.sise as sise_mod

    x, _ = positives
    fast = SISE(trained, max_masks=8).attribute(x[:4], target=1)
    assert all(p.requires_grad for p in trained.parameters())
    assert all(p.is_contiguous() for p in trained.parameters())
    monkeypatch.setattr(sise_mod, "inference_copy", lambda model: model)
    plain = SISE(trained, max_masks=8).attribute(x[:4], target=1)
    assert torch.allclose(fast, plain, atol=1e-4)


def test_sise_falls_back_when_the_fused_copy_disagrees(trained, positives, caplog):
    class BadFuse(SmallCNN):
        def fused(self) -> nn.Module:  # a broken "inference copy": other weights
            torch.manual_seed(123)
            return SmallCNN().eval()

    net = BadFuse()
    net.load_state_dict(trained.state_dict())
    x, _ = positives
    with caplog.at_level("WARNING", logger="inspectkit.xai.sise"):
        got = SISE(net, max_masks=8).attribute(x[:3], target=1)
    assert "disagrees with the model" in caplog.text
    assert torch.allclose(got, SISE(trained, max_masks=8).attribute(x[:3], target=1), atol=1e-4)


def test_frozen_model_still_explained(positives):
    torch.manual_seed(0)
    net = SmallCNN().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x, _ = positives
    assert GradCAM(net).attribute(x[:2]).shape == (2, SIZE, SIZE)
    assert SISE(net, max_masks=4).attribute(x[:2]).shape == (2, SIZE, SIZE)


def test_layer_lookup():
    net = SmallCNN()
    assert resolve_layer(net)[0] == "features.6"
    assert resolve_layer(net, "features.3")[1] is net.features[3]
    assert GradCAM(net, layer="features.3").attribute(torch.rand(1, 1, SIZE, SIZE)).shape == (
        1,
        SIZE,
        SIZE,
    )
    blocks = find_blocks(net, torch.rand(1, 1, SIZE, SIZE))
    assert [(b.name, b.size) for b in blocks] == [
        ("features.1", (32, 32)),
        ("features.4", (16, 16)),
        ("features", (8, 8)),  # the container ends the last block
    ]


def test_shared_activation_module_blocks_are_told_apart():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = F.max_pool2d(self.act(self.c1(x)), 2)
            x = self.act(self.c2(x))
            return self.fc(x.mean((2, 3)))

    net = Shared()
    blocks = find_blocks(net, torch.rand(1, 1, 16, 16))
    assert [(b.name, b.call) for b in blocks] == [("act", 0), ("act", 1)]
    maps = SISE(net, max_masks=4).attribute(torch.rand(2, 1, 16, 16))
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()


def test_bad_layers_and_models_are_refused():
    net = SmallCNN()
    x = torch.rand(2, 1, SIZE, SIZE)
    with pytest.raises(ConfigError, match=r"no layer named 'features\.99'"):
        GradCAM(net, layer="features.99").attribute(x)
    with pytest.raises(ConfigError, match="no layer named"):
        SISE(net, blocks=["nope"]).attribute(x)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2))
    with pytest.raises(ConfigError, match=r"no nn\.Conv2d"):
        GradCAM(mlp).attribute(x)
    with pytest.raises(ConfigError, match="SISE needs a CNN"):
        SISE(mlp).attribute(x)
    with pytest.raises(ConfigError, match="N×C×h×w"):
        GradCAM(mlp, layer="1").attribute(x)


def test_bad_inputs_and_targets_are_refused():
    net = SmallCNN()
    x = torch.rand(2, 1, SIZE, SIZE)
    for method in (GradCAM(net), SISE(net, max_masks=2)):
        with pytest.raises(DataError, match="out of range"):
            method.attribute(x, target=2)
        with pytest.raises(DataError, match="out of range"):
            method.attribute(x, target=[0, -1])
        with pytest.raises(DataError, match="2 inputs"):
            method.attribute(x, target=[0, 1, 1])
        with pytest.raises(DataError, match="float"):
            method.attribute((x * 255).to(torch.uint8))
        with pytest.raises(DataError, match="N×C×H×W"):
            method.attribute(x[0])
        with pytest.raises(InspectkitError):
            method.attribute(x[:0])
    with pytest.raises(ConfigError):
        SISE(net, max_masks=0)
    with pytest.raises(PipelineError, match="no model"):
        GradCAM().attribute(x)
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        GradCAM(model="resnet")  # type: ignore[arg-type]


def test_otsu_and_fusion():
    v = torch.cat([torch.full((50,), 0.2), torch.full((30,), 0.8)])
    t = otsu_threshold(v)
    assert 0.2 <= t < 0.8
    assert int((v > t).sum()) == 30
    # fusion: the deep block gates the shallow one, then adds itself
    shallow = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    deep = torch.tensor([[1.0, 1.0], [0.2, 0.0]])
    fused = fuse_blocks([shallow, deep])
    # F = (norm(shallow) + deep) * [deep > otsu] = [[2, 1], [0, 0]] -> normalised
    assert torch.allclose(fused, torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    # a block without evidence (flat map) is skipped
    assert torch.allclose(fuse_blocks([shallow, torch.zeros(2, 2)]), shallow)
    assert torch.equal(fuse_blocks([torch.zeros(2, 2)]), torch.zeros(2, 2))
