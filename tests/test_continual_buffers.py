"""Replay buffer policies: capacity, uniformity, balance, SNNL/herding choices, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from inspectkit.continual import (
    ClassBalancedBuffer,
    HerdingBuffer,
    ReservoirBuffer,
    SNNLBuffer,
    buffer_from_state,
    class_quotas,
    herding_order,
    make_buffer,
    proportional_quotas,
    snnl_per_sample,
)
from inspectkit.errors import ConfigError, DataError, InspectkitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(n: int, start: int = 0) -> torch.Tensor:
    """Images whose single pixel is their stream position (to identify them)."""
    return torch.arange(start, start + n, dtype=torch.float32).reshape(n, 1, 1, 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).float()


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "snnl", "herding"])
def test_capacity_respected_over_many_updates(policy: str) -> None:
    buf = make_buffer(policy, 25, seed=3)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        x = torch.randn(40, 1, 2, 2, generator=g)
        y = torch.randint(step * 2, step * 2 + 3, (40,), generator=g)
        buf.update(x, y, features=_flat)
        assert len(buf) <= 25
        assert buf.images is not None and buf.images.shape[0] == len(buf)
    assert len(buf) == 25
    assert buf.seen == 160


@pytest.mark.parametrize("capacity", [0, -5])
def test_capacity_must_be_positive(capacity: int) -> None:
    for policy in ("reservoir", "class_balanced", "snnl", "herding"):
        with pytest.raises(InspectkitError, match="capacity must be positive"):
            make_buffer(policy, capacity)


def test_unknown_policy_and_missing_features() -> None:
    with pytest.raises(ConfigError, match="unknown buffer policy"):
        make_buffer("random-ish", 10)
    with pytest.raises(ConfigError, match="features"):
        SNNLBuffer(5).update(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 1]))
    buf = ReservoirBuffer(4)
    buf.update(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(DataError, match="buffer holds"):
        buf.update(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 0]))
    with pytest.raises(DataError, match="labels"):
        buf.update(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1]))


def test_reservoir_is_uniform_over_the_stream() -> None:
    """Every position of a 60-sample stream (offered in two updates) is kept with
    probability capacity/60: chi-square test of inclusion counts over many seeds."""
    n, cap, runs = 60, 12, 400
    counts = np.zeros(n)
    for seed in range(runs):
        buf = ReservoirBuffer(cap, seed=seed)
        buf.update(_ids(25), torch.zeros(25, dtype=torch.long))
        buf.update(_ids(35, 25), torch.zeros(35, dtype=torch.long))
        assert buf.images is not None
        kept = buf.images.flatten().long().numpy()
        assert len(set(kept.tolist())) == cap  # no duplicates
        counts[kept] += 1
    expected = runs * cap / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    p = stats.chi2.sf(chi2, n - 1)
    assert p > 1e-3, f"inclusion counts not uniform (p={p:.2g}): {counts}"
    # early and late halves equally represented (a biased policy keeps the first or last ones)
    assert abs(counts[:30].sum() - counts[30:].sum()) < 0.1 * counts.sum()


def test_class_quotas_are_exact() -> None:
    assert class_quotas({0: 50, 1: 50, 2: 50}, 12) == {0: 4, 1: 4, 2: 4}
    assert class_quotas({0: 50, 1: 50, 2: 50}, 10) == {0: 4, 1: 3, 2: 3}
    # a rare class keeps what it has, the others share its spare slots
    assert class_quotas({0: 50, 1: 2, 2: 50}, 12) == {0: 5, 1: 2, 2: 5}
    assert class_quotas({0: 3, 1: 2}, 100) == {0: 3, 1: 2}


def test_proportional_quotas_follow_the_stream_mix() -> None:
    assert proportional_quotas({0: 900, 1: 90, 2: 10}, {0: 900, 1: 90, 2: 10}, 100) == {
        0: 90,
        1: 9,
        2: 1,
    }
    # the shares follow what the stream brought, not the candidates at hand
    assert proportional_quotas({0: 300, 1: 100}, {0: 50, 1: 50}, 40) == {0: 30, 1: 10}
    # a class short of candidates keeps them all; its slots go to the others
    assert proportional_quotas({0: 500, 1: 500}, {0: 500, 1: 20}, 100) == {0: 80, 1: 20}
    # remainders: largest first, ties to the lower class index
    assert proportional_quotas({0: 1, 1: 1, 2: 1}, {0: 5, 1: 5, 2: 5}, 10) == {0: 4, 1: 3, 2: 3}
    assert proportional_quotas({0: 2, 1: 3}, {0: 2, 1: 3}, 100) == {0: 2, 1: 3}


_counts = st.dictionaries(st.integers(0, 8), st.integers(0, 400), min_size=1, max_size=6)


@given(available=_counts, extra=_counts, capacity=st.integers(1, 300))
def test_quota_rules_fill_the_capacity_within_the_candidates(
    available: dict[int, int], extra: dict[int, int], capacity: int
) -> None:
    seen = {c: n + extra.get(c, 0) for c, n in available.items()}
    room = min(capacity, sum(available.values()))
    for quotas in (
        class_quotas(available, capacity),
        proportional_quotas(seen, available, capacity),
    ):
        assert set(quotas) == set(available)
        assert sum(quotas.values()) == room
        assert all(0 <= quotas[c] <= available[c] for c in available)
    # where no class runs short, each share is its exact proportion rounded up or down
    prop = proportional_quotas(seen, available, capacity)
    total = sum(max(seen[c], available[c]) for c in available if available[c] > 0)
    if total and all(prop[c] < available[c] for c in available if available[c] > 0):
        for c in available:
            if available[c] > 0:
                assert abs(prop[c] - room * max(seen[c], available[c]) / total) < 1


def test_snnl_proportional_quotas_keep_the_class_mix_of_a_domain_stream() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 90 + [1] * 10)
    balanced = SNNLBuffer(20, temperature=0.5, seed=0)
    prop = SNNLBuffer(20, temperature=0.5, seed=0, quotas="proportional")
    for _ in range(2):  # two domains, the same class mix in each
        x = torch.randn(100, 1, 1, 4, generator=g) + y.reshape(-1, 1, 1, 1)
        balanced.update(x, y, features=_flat)
        prop.update(x, y, features=_flat)
    assert balanced.class_counts() == {0: 10, 1: 10}
    assert prop.class_counts() == {0: 18, 1: 2}
    back = buffer_from_state(prop.get_state())
    assert isinstance(back, SNNLBuffer) and back.quotas == "proportional"
    with pytest.raises(ConfigError, match="quotas"):
        SNNLBuffer(5, quotas="equal")


def test_class_balanced_rebalances_when_classes_arrive() -> None:
    buf = ClassBalancedBuffer(12, seed=0)
    buf.update(_ids(60), torch.arange(60) % 2)  # classes 0, 1
    assert buf.class_counts() == {0: 6, 1: 6}
    buf.update(_ids(60, 60), 2 + torch.arange(60) % 2)  # classes 2, 3 arrive
    assert buf.class_counts() == {0: 3, 1: 3, 2: 3, 3: 3}
    # old classes only kept samples they held before
    assert buf.images is not None
    old = buf.images.flatten()[buf.labels < 2]
    assert bool((old < 60).all())


def test_class_balanced_redraws_a_returning_class_from_all_its_samples() -> None:
    """Domain-incremental: a class seen again gets a uniform sample over both domains."""
    new_share = []
    for seed in range(60):
        buf = ClassBalancedBuffer(10, seed=seed)
        buf.update(_ids(100), torch.zeros(100, dtype=torch.long))
        buf.update(_ids(100, 100), torch.zeros(100, dtype=torch.long))
        assert buf.images is not None
        new_share.append(float((buf.images.flatten() >= 100).float().mean()))
    assert 0.4 < np.mean(new_share) < 0.6


def _cohesion_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two tight class clusters plus 'outliers' of each class sitting in the other's cluster."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(20, 2, generator=g)
    b = torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(20, 2, generator=g)
    a_out = torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(
        4, 2, generator=g
    )  # label 0 inside cluster b
    b_out = torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(
        4, 2, generator=g
    )  # label 1 inside cluster a
    x = torch.cat([a, a_out, b, b_out]).reshape(-1, 1, 1, 2)
    y = torch.tensor([0] * 24 + [1] * 24)
    outlier = torch.tensor([False] * 20 + [True] * 4 + [False] * 20 + [True] * 4)
    return x, y, outlier


def test_snnl_scores_outliers_high() -> None:
    x, y, outlier = _cohesion_set()
    scores = snnl_per_sample(torch.nn.functional.normalize(_flat(x), dim=1), y, temperature=0.1)
    assert float(scores[outlier].min()) > float(scores[~outlier].max())


def test_snnl_buffer_keeps_class_cohesive_samples() -> None:
    x, y, _outlier = _cohesion_set()
    buf = SNNLBuffer(16, temperature=0.1, seed=0)
    buf.update(x, y, features=_flat)
    assert buf.class_counts() == {0: 8, 1: 8}
    assert buf.images is not None
    kept_points = buf.images.reshape(-1, 2)
    # every kept sample of class 0 sits near (1, 0), of class 1 near (0, 1): no outlier kept
    for pt, lab in zip(kept_points, buf.labels):
        centre = torch.tensor([1.0, 0.0]) if int(lab) == 0 else torch.tensor([0.0, 1.0])
        assert float((pt - centre).norm()) < 0.3
    # a reservoir of the same size keeps outliers for most seeds — SNNL's choice is not luck
    kept_outliers = 0
    for seed in range(20):
        r = ReservoirBuffer(16, seed=seed)
        r.update(x, y)
        assert r.images is not None
        pts = r.images.reshape(-1, 2)
        kept_outliers += int(
            sum(float((p - (torch.tensor([1.0, 0.0]) if int(lab) == 0 else torch.tensor([0.0, 1.0]))).norm()) > 0.3
                for p, lab in zip(pts, r.labels))
        )  # fmt: skip
    assert kept_outliers > 0


def test_snnl_cohesive_fraction_sets_where_the_quota_is_drawn_from() -> None:
    # two classes on arcs of the unit circle facing each other: the nearer a class-0
    # sample is to class 1, the higher its SNNL; the fraction decides how far down that
    # ranking the kept samples may come from
    angles = torch.cat([torch.linspace(0.0, 0.6, 40), torch.linspace(1.2, 1.8, 40)])
    x = torch.stack([angles.cos(), angles.sin()], 1).reshape(-1, 1, 1, 2)
    y = torch.tensor([0] * 40 + [1] * 40)
    scores = snnl_per_sample(_flat(x), y, temperature=0.5)
    rank_of = {int(i): r for r, i in enumerate(scores[:40].argsort().tolist())}

    def kept_ranks(fraction: float, seed: int) -> list[int]:
        buf = SNNLBuffer(20, temperature=0.5, cohesive_fraction=fraction, seed=seed)
        buf.update(x, y, features=_flat)
        assert buf.images is not None and buf.class_counts() == {0: 10, 1: 10}
        kept = buf.images[buf.labels == 0].reshape(-1, 2)
        rows = [int((x[:40].reshape(-1, 2) == k).all(1).nonzero()[0]) for k in kept]
        return sorted(rank_of[i] for i in rows)

    # 0: exactly the ten most cohesive samples of class 0, whatever the seed
    assert kept_ranks(0.0, 0) == list(range(10)) == kept_ranks(0.0, 5)
    # 0.5: ten of the twenty most cohesive, not always the same ten
    draws = [kept_ranks(0.5, seed) for seed in range(6)]
    assert all(max(d) < 20 for d in draws)
    assert any(d != list(range(10)) for d in draws)
    # 1: from anywhere in the class (class-balanced random sampling)
    assert any(max(kept_ranks(1.0, seed)) >= 20 for seed in range(6))
    with pytest.raises(ConfigError, match="cohesive_fraction"):
        SNNLBuffer(5, cohesive_fraction=1.5)


def test_snnl_temperature_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        SNNLBuffer(5, temperature=0)


def test_herding_order_tracks_the_mean() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.9, 0.1]])
    order = herding_order(f, 4)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert order[0] == 2  # closest to the mean first
    buf = HerdingBuffer(2)
    buf.update(f.reshape(4, 1, 1, 2), torch.zeros(4, dtype=torch.long), features=_flat)
    assert buf.images is not None
    kept = buf.images.reshape(-1, 2)
    mean_err = float((kept.mean(0) - f.mean(0)).norm())
    # the kept pair represents the mean better than any other pair does on average
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    errs = [float((f[[i, j]].mean(0) - f.mean(0)).norm()) for i, j in pairs]
    assert mean_err <= np.median(errs)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "snnl", "herding"])
def test_same_seed_same_buffer(policy: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 1, 2, 2, generator=g)
    y = torch.randint(0, 4, (80,), generator=g)
    bufs = [make_buffer(policy, 15, seed=7) for _ in range(2)]
    for b in bufs:
        b.update(x[:40], y[:40], features=_flat)
        b.update(x[40:], y[40:], features=_flat)
    assert torch.equal(bufs[0].images, bufs[1].images)
    assert torch.equal(bufs[0].labels, bufs[1].labels)
    if policy in ("reservoir", "class_balanced"):
        other = make_buffer(policy, 15, seed=8)
        other.update(x[:40], y[:40])
        other.update(x[40:], y[40:])
        assert not torch.equal(other.images, bufs[0].images)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "snnl", "herding"])
def test_state_round_trip_through_safe_torch_load(policy: str, tmp_path) -> None:
    buf = make_buffer(policy, 10, seed=2)
    buf.update(
        torch.randint(0, 3, (30, 1, 4, 4), dtype=torch.uint8), torch.arange(30) % 3, features=_flat
    )
    torch.save(buf.get_state(), tmp_path / "b.pt")
    back = buffer_from_state(torch.load(tmp_path / "b.pt", weights_only=True))
    assert type(back) is type(buf)
    assert torch.equal(back.images, buf.images) and torch.equal(back.labels, buf.labels)
    assert back.images.dtype == torch.uint8
    # it keeps behaving identically after loading
    x2 = torch.randint(0, 3, (20, 1, 4, 4), dtype=torch.uint8)
    y2 = 3 + torch.arange(20) % 2
    buf.update(x2, y2, features=_flat)
    back.update(x2, y2, features=_flat)
    assert torch.equal(back.images, buf.images)


def test_sample_draws_from_memory_only() -> None:
    buf = ReservoirBuffer(5, seed=0)
    with pytest.raises(DataError, match="empty"):
        buf.sample(3)
    buf.update(_ids(20), torch.arange(20) % 2)
    x, _y = buf.sample(50, torch.Generator().manual_seed(0))
    assert x.shape[0] == 50
    stored = set(buf.images.flatten().tolist())
    assert set(x.flatten().tolist()) <= stored


def _snnl_by_the_formula(x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """Frosst, Papernot & Hinton (2019), eq. 1, one term per sample, written out literally."""
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        num = sum(
            torch.exp(-((x[i] - x[j]) ** 2).sum() / t) for j in range(n) if j != i and y[j] == y[i]
        )
        den = sum(torch.exp(-((x[i] - x[k]) ** 2).sum() / t) for k in range(n) if k != i)
        out[i] = -torch.log(num / den)
    return out


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_snnl_per_sample_is_the_papers_loss_term(temperature: float) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=g)
    ours = snnl_per_sample(x, y, temperature, chunk=7)  # chunks must not change the answer
    ref = _snnl_by_the_formula(x, y, temperature)
    assert torch.allclose(ours.double(), ref, rtol=1e-4, atol=1e-5)
    # the batch loss of the paper is the mean of these terms
    assert float(ours.mean()) == pytest.approx(float(ref.mean()), rel=1e-4)
