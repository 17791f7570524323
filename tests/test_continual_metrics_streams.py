"""Continual metrics against hand-computed matrices, and stream construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inspectkit.continual import (
    accuracy_matrix,
    average_forgetting,
    backward_transfer,
    class_incremental_stream,
    continual_summary,
    domain_incremental_stream,
    final_average_accuracy,
    meta_key,
    size_bucket,
)
from inspectkit.errors import ConfigError, DataError
from inspectkit.records import ImageSet, SampleMeta

NAN = float("nan")


def test_metrics_on_a_hand_computed_matrix() -> None:
    R = [[0.9, NAN, NAN], [0.7, 0.8, NAN], [0.5, 0.6, 0.95]]
    assert final_average_accuracy(R) == pytest.approx((0.5 + 0.6 + 0.95) / 3)
    # forgetting: exp0 best 0.9 -> 0.5 (0.4), exp1 best 0.8 -> 0.6 (0.2)
    assert average_forgetting(R) == pytest.approx(0.3)
    # BWT: (0.5-0.9 + 0.6-0.8) / 2
    assert backward_transfer(R) == pytest.approx(-0.3)


def test_forgetting_uses_the_best_earlier_row_bwt_the_diagonal() -> None:
    # exp0 improves after exp1 (0.6 -> 0.9) then drops to 0.8: forgetting counts from the
    # best value (0.1), BWT from the diagonal (+0.2); exp1: 0.7 -> 0.5
    R = np.array([[0.6, 0.0, 0.0], [0.9, 0.7, 0.1], [0.8, 0.5, 0.9]])
    assert average_forgetting(R) == pytest.approx((0.1 + 0.2) / 2)
    assert backward_transfer(R) == pytest.approx((0.2 - 0.2) / 2)
    s = continual_summary(torch.tensor(R))
    assert s["final_avg_accuracy"] == pytest.approx(2.2 / 3)
    # upper-triangle entries (unseen experiences) never enter the figures
    R2 = R.copy()
    R2[0, 1:] = 0.99
    assert continual_summary(R2) == pytest.approx(s)


def test_single_experience_and_accuracy_matrix() -> None:
    assert average_forgetting([[0.7]]) == 0.0 and backward_transfer([[0.7]]) == 0.0
    R = accuracy_matrix([[0.9], [0.6, 0.8]])
    assert R.shape == (2, 2) and math.isnan(R[0, 1])
    assert final_average_accuracy(R) == pytest.approx(0.7)


def test_bad_matrices_are_refused() -> None:
    with pytest.raises(DataError, match="square"):
        final_average_accuracy([[0.1, 0.2]])
    with pytest.raises(DataError, match=r"R\[1, 0\] is NaN"):
        average_forgetting([[0.9, NAN], [NAN, 0.8]])


def _set(
    labels: list[str], classes: list[str], meta: list[dict] | None = None, prefix: str = "s"
) -> ImageSet:
    n = len(labels)
    meta = meta or [{} for _ in range(n)]
    return ImageSet(
        images=torch.zeros(n, 1, 4, 4, dtype=torch.uint8),
        samples=[
            SampleMeta(id=f"{prefix}{i}", label=lab, meta=m)
            for i, (lab, m) in enumerate(zip(labels, meta))
        ],
        classes=classes,
    )


def test_class_incremental_stream_grows_the_class_list() -> None:
    classes = ["a", "b", "c", "d", "e"]
    train = _set([classes[i % 5] for i in range(50)], classes)
    test = _set([classes[i % 5] for i in range(25)], classes, prefix="t")
    stream = class_incremental_stream(
        train, test, [["c", "a"], ["d"], ["b"]], max_train_per_class=4, seed=1
    )
    assert [e.classes for e in stream] == [["c", "a"], ["d"], ["b"]]
    assert [e.train.classes for e in stream] == [["c", "a"], ["c", "a", "d"], ["c", "a", "d", "b"]]
    assert [len(e.train) for e in stream] == [8, 4, 4]
    assert [len(e.test) for e in stream] == [10, 5, 5]
    assert {s.label for s in stream[1].train.samples} == {"d"}
    # class e was in no group: dropped
    assert all("e" not in e.train.labels for e in stream)
    again = class_incremental_stream(
        train, test, [["c", "a"], ["d"], ["b"]], max_train_per_class=4, seed=1
    )
    assert again[0].train.ids == stream[0].train.ids


def test_class_incremental_stream_bad_orders() -> None:
    train = _set(["a", "b"] * 3, ["a", "b"])
    with pytest.raises(ConfigError, match="more than one experience"):
        class_incremental_stream(train, train, [["a"], ["a", "b"]])
    with pytest.raises(ConfigError, match="not classes"):
        class_incremental_stream(train, train, [["a"], ["z"]])
    with pytest.raises(ConfigError, match="at least one"):
        class_incremental_stream(train, train, [])
    unlabelled = _set(["a", None], ["a", "b"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="unlabelled"):
        class_incremental_stream(unlabelled, train, [["a"], ["b"]])


def test_domain_incremental_stream_by_meta_key_and_size() -> None:
    labels = ["a", "b", "a", "b", "c", "a"]
    meta = [{"product": p, "height": h, "width": w} for p, h, w in
            [("X", 20, 20), ("X", 20, 20), ("Y", 40, 40), ("Y", 40, 40), ("Y", 60, 60), ("X", 60, 60)]]  # fmt: skip
    data = _set(labels, ["a", "b", "c"], meta)
    by_product = domain_incremental_stream(data, data, "product", order=["X", "Y"])
    assert [e.name for e in by_product] == ["X", "Y"]
    assert [len(e.train) for e in by_product] == [3, 3]
    assert by_product[0].classes == ["a", "b"] and by_product[1].classes == ["c"]
    assert by_product[1].train.classes == ["a", "b", "c"]
    by_size = domain_incremental_stream(
        data, data, size_bucket([1000, 3000]), order=["small", "medium", "large"]
    )
    assert [e.train.labels for e in by_size] == [["a", "b"], ["a", "b"], ["c", "a"]]
    with pytest.raises(DataError, match="no metadata 'line'"):
        domain_incremental_stream(data, data, "line")
    with pytest.raises(DataError, match="no training samples"):
        domain_incremental_stream(data, data, meta_key("product"), order=["X", "Z"])
    with pytest.raises(ConfigError, match="increase"):
        size_bucket([3000, 1000])


@pytest.mark.realdata
def test_wafer_size_buckets_on_real_maps(wm811k_dir) -> None:
    from inspectkit.sources import load_wafer_maps

    data = load_wafer_maps(wm811k_dir / "WM811K_train_1_split.npz")
    bucket = size_bucket([676, 1353])
    stream = domain_incremental_stream(data, data, bucket, order=["small", "medium", "large"])
    assert sum(len(e.train) for e in stream) == len(data)
    for e in stream:
        areas = [s.meta["height"] * s.meta["width"] for s in e.train.samples]
        lo, hi = {"small": (0, 676), "medium": (676, 1353), "large": (1353, 10**9)}[e.name]
        assert all(lo <= a < hi for a in areas)
    ci = class_incremental_stream(
        data, data, [["none", "Center", "Edge-Ring"], ["Edge-Loc", "Loc"]]
    )
    assert ci[1].train.classes == ["none", "Center", "Edge-Ring", "Edge-Loc", "Loc"]
