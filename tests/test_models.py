"""Network builders: parameter budgets, channel/class adaptation, embeddings, weights files."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit.errors import ConfigError, InspectkitError, PersistenceError
from inspectkit.models import (
    ARCHITECTURES,
    ClassifierNet,
    build_classifier,
    count_parameters,
    train_epochs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("budget", [20_000, 50_000, 100_000])
def test_compact_respects_the_parameter_budget(budget: int) -> None:
    net = build_classifier("compact", 3, 9, input_size=(64, 64), max_params=budget)
    assert count_parameters(net) <= budget
    # the budget is used, not ignored: a smaller budget gives a smaller network
    assert count_parameters(net) > budget // 4


def test_compact_impossible_budget_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="max_params"):
        build_classifier("compact", 3, 9, max_params=500)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_architecture_adapts_channels_and_classes(arch: str, channels: int) -> None:
    net = build_classifier(arch, channels, 5, input_size=(64, 64))
    assert isinstance(net, ClassifierNet)
    x = torch.randn(2, channels, 64, 64)
    net.eval()
    with torch.no_grad():
        logits = net(x)
        emb = net.embed(x)
    assert logits.shape == (2, 5)
    assert emb.shape == (2, net.embed_dim)
    assert torch.allclose(net.head(emb), logits, atol=1e-5)
    assert isinstance(net.last_conv, torch.nn.Conv2d)
    assert net.get_submodule(net.last_conv_name) is net.last_conv


def test_compact_adapts_depth_to_input_size() -> None:
    small = build_classifier("compact", 1, 3, input_size=(16, 16), max_params=30_000)
    big = build_classifier("compact", 1, 3, input_size=(128, 128), max_params=30_000)
    for net, side in ((small, 16), (big, 128)):
        with torch.no_grad():
            fmap = net.features(torch.zeros(1, 1, side, side))
        assert 2 <= fmap.shape[-1] <= 8


def test_local_torchvision_weights_are_loaded_and_adapted(tmp_path) -> None:
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    net = build_classifier("resnet18", 1, 4, weights=path)
    # a 3-channel stem becomes a 1-channel one that answers gray input like RGB gray input
    gray = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = net.features[0](gray)
        b = ref.conv1(gray.expand(-1, 3, -1, -1))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(net.features[4][0].conv1.weight, ref.layer1[0].conv1.weight)
    assert net.head.out_features == 4


def test_weights_file_that_does_not_match_is_refused(tmp_path) -> None:
    wrong = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), wrong)
    with pytest.raises(PersistenceError, match="does not match torchvision's resnet18"):
        build_classifier("resnet18", 3, 2, weights=wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PersistenceError, match="cannot be read"):
        build_classifier("resnet18", 3, 2, weights=junk)
    with pytest.raises(PersistenceError, match="not found"):
        build_classifier("efficientnet_b0", 3, 2, weights=tmp_path / "missing.pth")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "vgg16", "in_channels": 3, "num_classes": 2},
        {"arch": "compact", "in_channels": 0, "num_classes": 2},
        {"arch": "compact", "in_channels": 3, "num_classes": 1},
        {"arch": "compact", "in_channels": 3, "num_classes": 2, "input_size": (4, 4)},
        {"arch": "compact", "in_channels": 3, "num_classes": 2, "bogus": 1},
        {"arch": "compact", "in_channels": 3, "num_classes": 2, "weights": "x.pth"},
    ],
)
def test_bad_builder_arguments_are_clear_errors(kwargs: dict) -> None:
    with pytest.raises(InspectkitError):
        build_classifier(**kwargs)


def test_train_epochs_learns_and_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 1, 16, 16)
    y = (x[:, :, :8].mean((1, 2, 3)) > x[:, :, 8:].mean((1, 2, 3))).long()
    net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    scores = iter([0.5, 0.9, 0.1, 0.2, 0.3, 0.4])
    snapshots = []

    def validate(model: torch.nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    result = train_epochs(
        net, loader, epochs=6, lr=1e-2, validate=validate, patience=2, progress=False
    )
    assert result.best_epoch == 1 and result.best_score == 0.9
    assert result.stopped_early and result.epochs_run == 4
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshots[1][k])
    assert result.history[0]["loss"] > 0

    fresh = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    train_epochs(fresh, loader, epochs=15, lr=1e-2, progress=False)
    with torch.no_grad():
        acc = (fresh.eval()(x).argmax(1) == y).float().mean()
    assert acc > 0.9


def test_fused_inference_copy_matches_the_network() -> None:
    net = build_classifier("compact", 3, 4, input_size=(32, 32), max_params=20_000)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))  # move BatchNorm statistics away from defaults
    net.eval()
    fused = net.fused()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), fused(x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original untouched


def test_time_budget_shortens_the_schedule() -> None:
    x = torch.randn(64, 1, 16, 16)
    y = torch.randint(0, 2, (64,))
    net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    result = train_epochs(net, loader, epochs=1000, time_budget=0.5, progress=False)
    assert result.stopped_early and result.epochs_run < 1000
    # the learning rate was annealed to the end of the shortened schedule
    assert result.history[-1]["lr"] < 3e-3 * 0.05


def test_ema_weights_are_the_average_of_the_trajectory_and_are_what_is_kept() -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 1, 16, 16)
    y = (x[:, :, :8].mean((1, 2, 3)) > x[:, :, 8:].mean((1, 2, 3))).long()
    loader = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]

    def build() -> ClassifierNet:
        torch.manual_seed(1)
        return build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)

    # a decay of ~0 means "the average is the last step": identical to plain training
    plain, tiny = build(), build()
    torch.manual_seed(2)  # same dropout masks for both runs
    train_epochs(plain, loader, epochs=2, lr=1e-2, progress=False, schedule="constant")
    torch.manual_seed(2)
    train_epochs(tiny, loader, epochs=2, lr=1e-2, progress=False, schedule="constant", ema=1e-9)
    for (k, a), b in zip(plain.state_dict().items(), tiny.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k

    # a real decay lags behind the trajectory; validation sees exactly the kept weights
    seen = []

    def validate(model: torch.nn.Module) -> float:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return float(len(seen))  # the last epoch is the best

    smooth = build()
    torch.manual_seed(2)  # the same raw trajectory as `plain`
    train_epochs(
        smooth,
        loader,
        epochs=2,
        lr=1e-2,
        progress=False,
        schedule="constant",
        ema=0.9,
        validate=validate,
    )
    for k, v in smooth.state_dict().items():
        assert torch.equal(v, seen[-1][k]), k
    head_gap = (smooth.head.weight - plain.head.weight).abs().max()
    assert head_gap > 1e-4  # averaged, not the last step of the same trajectory


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_ema_decay_outside_the_open_unit_interval_is_refused(decay: float) -> None:
    net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    loader = [(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(ConfigError, match="ema"):
        train_epochs(net, loader, epochs=1, progress=False, ema=decay)


def test_avgmax_pooling_sees_a_single_hot_pixel_that_average_pooling_dilutes() -> None:
    from inspectkit.models.classifiers import AvgMaxPool

    x = torch.zeros(2, 4, 8, 8)
    x[1, 2, 3, 5] = 64.0
    pooled = AvgMaxPool()(x).flatten(1)
    assert pooled.shape == (2, 8)
    assert pooled[1, 2] == 1.0 and pooled[1, 6] == 64.0  # mean and max of channel 2
    net = build_classifier("compact", 3, 9, input_size=(64, 64), max_params=100_000, pool="avgmax")
    plain = build_classifier("compact", 3, 9, input_size=(64, 64), max_params=100_000)
    assert count_parameters(net) <= 100_000
    assert net.embed_dim == 2 * plain.embed_dim
    net.eval()
    with torch.no_grad():
        x = torch.randn(3, 3, 64, 64)
        assert net(x).shape == (3, 9)
        assert torch.allclose(net(x), net.fused()(x), atol=1e-5)
    with pytest.raises(ConfigError, match="pool"):
        build_classifier("compact", 3, 9, pool="median")


def test_time_budget_recovers_epochs_after_a_slow_start() -> None:
    import time

    x = torch.randn(32, 1, 16, 16)
    y = torch.randint(0, 2, (32,))

    class SlowFirstEpoch:
        """Two batches; the first epoch is slowed down as if the machine were busy."""

        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return 2

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i in (0, 16):
                if self.epoch == 0:
                    time.sleep(0.3)
                yield x[i : i + 16], y[i : i + 16]

    net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    result = train_epochs(net, SlowFirstEpoch(), epochs=12, time_budget=4.0, progress=False)
    # the first epoch alone would have allowed ~6 epochs; the pace afterwards allows all 12
    assert result.epochs_run == 12 and not result.stopped_early


# ---------------------------------------------------------------------- training defaults
def _flat_then_rising(flat_epochs: int) -> Callable[[torch.nn.Module], float]:
    """A validate callback: one-class-like flat scores for ``flat_epochs``, then rising."""
    calls: list[int] = []

    def validate(model: torch.nn.Module) -> float:
        calls.append(len(calls))
        return 0.05 if len(calls) <= flat_epochs else 0.05 + 0.01 * len(calls)

    return validate


def test_patience_does_not_count_during_the_one_cycle_warm_up() -> None:
    """A flat validation score while the learning rate still rises is no reason to stop:
    with 40 epochs the one-cycle warm-up lasts 6, and the score only moves after 7."""
    from inspectkit.models.training import ONECYCLE_WARMUP, warmed_up

    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 2
    loader = [(x, y)]
    for schedule, expect_stop in (("onecycle", False), ("cosine", True), ("constant", True)):
        net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
        validate = _flat_then_rising(7)
        result = train_epochs(
            net, loader, epochs=40, schedule=schedule, validate=validate, patience=6,
            progress=False,
        )  # fmt: skip
        if expect_stop:  # no warm-up: 6 epochs without improvement after the first end it
            assert result.stopped_early and result.epochs_run == 7, schedule
        else:
            assert result.epochs_run == 40 and result.best_epoch == 39, schedule
    assert ONECYCLE_WARMUP * 40 == 6
    assert not warmed_up("onecycle", 6, 40) and warmed_up("onecycle", 7, 40)


def test_one_class_models_are_flagged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from inspectkit.models.training import check_prediction_spread

    with caplog.at_level("WARNING"):
        assert check_prediction_spread(torch.zeros(5, dtype=torch.long), torch.arange(5) % 3)
    assert "predicts class 0 for every one of 5" in caplog.text and "3 classes" in caplog.text
    assert not check_prediction_spread(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]))
    assert not check_prediction_spread(torch.zeros(3, dtype=torch.long), torch.zeros(3))


def test_auto_batch_size_gives_small_sets_and_short_runs_enough_steps() -> None:
    from inspectkit.models.training import AUTO_BATCH_RANGE, AUTO_MIN_STEPS, auto_batch_size

    lo, hi = AUTO_BATCH_RANGE
    assert auto_batch_size(561, 30) == 64 and auto_batch_size(561, 5) == lo
    assert auto_batch_size(0, 30) == lo and auto_batch_size(10**6, 1) == hi
    for n in (1, 100, 511, 1020, 2048, 5000, 10**6):
        for epochs in (1, 5, 30, 200):
            b = auto_batch_size(n, epochs)
            assert lo <= b <= hi and b & (b - 1) == 0
            # the run takes the minimum steps with the largest such batch
            assert b == lo or (n // b) * epochs >= AUTO_MIN_STEPS
            assert b == hi or (n // (2 * b)) * epochs < AUTO_MIN_STEPS


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0))
def test_sqrt_inverse_weights_average_one_per_sample(counts: list[int]) -> None:
    from inspectkit.models.training import sqrt_inverse_weights

    f = torch.tensor(counts, dtype=torch.float64)
    w = sqrt_inverse_weights(f).double()
    assert torch.isclose((w * f).sum(), f.sum(), rtol=1e-4)
    assert bool((w[f == 0] == 0).all())
    present = f > 0
    ratio = w[present] * f[present].sqrt()  # w ∝ 1/√f
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=4, max_size=60),
    st.floats(0.05, 0.5),
    st.integers(0, 1000),
)
def test_validation_split_is_a_seeded_stratified_partition(
    labels: list[int], fraction: float, seed: int
) -> None:
    from inspectkit.models.training import validation_split

    y = torch.tensor(labels)
    train, val = validation_split(y, fraction, seed=seed)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert (train, val) == validation_split(y, fraction, seed=seed)
    assert len(val) == max(1, round(fraction * len(labels)))
    synthetic = torch.arange(len(labels)) % 2 == 1
    _, real_val = validation_split(y, fraction, seed=seed, eligible=~synthetic)
    assert not any(bool(synthetic[i]) for i in real_val)


def test_the_optimizer_is_fused_where_the_device_allows() -> None:
    from inspectkit.models.training import make_optimizer

    net = build_classifier("compact", 1, 2, input_size=(16, 16), max_params=5_000)
    opt = make_optimizer(net, 1e-3, 1e-4)
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in plain["params"])
