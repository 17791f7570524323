"""Anomaly metrics against scikit-learn and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import roc_auc_score

from inspectkit.errors import DataError
from inspectkit.metrics import anomaly_report, aupro, image_auroc, pixel_auroc
from inspectkit.metrics.anomaly import ranked_auroc, threshold_metrics
from inspectkit.records import AnomalyScores, SampleMeta


def scores_record(scores, labels, *, maps=None, masks=None, threshold=None, synthetic=()):
    n = len(scores)
    samples = [SampleMeta(id=f"s{i}", label=labels[i], synthetic=i in synthetic) for i in range(n)]
    s = torch.tensor(scores, dtype=torch.float32)
    fields = {}
    if threshold is not None:
        fields = {"threshold": threshold, "is_anomalous": s > threshold}
    size = 8 if maps is None else maps.shape[-1]
    return AnomalyScores(
        images=torch.zeros(n, 1, size, size, dtype=torch.uint8),
        masks=masks,
        samples=samples,
        classes=["good", "crack"],
        scores=s,
        maps=maps,
        **fields,
    )


def test_image_auroc_matches_sklearn_and_uses_labels():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50)
    truth = rng.integers(0, 2, size=50)
    assert image_auroc(torch.tensor(scores), torch.tensor(truth)) == pytest.approx(
        roc_auc_score(truth, scores)
    )
    labels = ["crack" if t else "good" for t in truth]
    rec = scores_record(scores.tolist(), labels)
    assert image_auroc(rec) == pytest.approx(roc_auc_score(truth, scores), abs=1e-6)


def test_synthetic_samples_are_ignored():
    rec = scores_record([0.1, 0.9, 0.2, 0.8], ["good", "crack", "good", "good"], synthetic={3})
    assert image_auroc(rec) == 1.0  # the synthetic good sample scoring 0.8 is dropped


def test_image_auroc_is_nan_with_one_class():
    assert math.isnan(image_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))


def test_pixel_auroc_matches_sklearn_and_resizes_masks():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 8, 8, generator=g)
    masks = torch.zeros(3, 1, 16, 16, dtype=torch.uint8)
    masks[0, :, 4:8, 4:8] = 1
    masks[2, :, 0:6, 10:16] = 1
    small = (
        torch.nn.functional.interpolate(masks.float(), size=(8, 8), mode="nearest-exact")[:, 0] > 0
    )
    expected = roc_auc_score(small.flatten().numpy(), maps.flatten().numpy())
    assert pixel_auroc(maps, masks) == pytest.approx(expected)
    rec = scores_record(
        [0.5, 0.1, 0.7],
        ["crack", "good", "crack"],
        maps=maps,
        masks=masks[:, :, ::2, ::2].contiguous(),
    )
    assert pixel_auroc(rec) == pytest.approx(
        roc_auc_score((masks[:, :, ::2, ::2][:, 0] > 0).flatten().numpy(), maps.flatten().numpy())
    )


def test_aupro_perfect_random_and_region_weighting():
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    masks[0, :, 2:4, 2:4] = 1  # tiny region
    masks[1, :, 8:28, 8:28] = 1  # big region
    perfect = masks[:, 0].float()
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 32, 32, generator=g)
    # random maps: overlap ≈ false-positive rate, so the area up to 0.3 is 0.045 → 0.15
    big = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    big[0, :, 2:18, 2:18] = 1
    big[1, :, 8:28, 8:28] = 1
    assert aupro(noise, big) == pytest.approx(0.15, abs=0.04)
    # finding only the big region gets half the credit: every region weighs the same
    half = perfect.clone()
    half[0] = 0
    assert aupro(half + 0.001 * noise, masks) == pytest.approx(0.5, abs=0.05)


def test_threshold_metrics_and_report():
    rec = scores_record(
        [0.1, 0.2, 0.6, 0.7, 0.9, 0.3],
        ["good", "good", "good", "crack", "crack", "crack"],
        threshold=0.5,
    )
    m = threshold_metrics(rec)
    # flagged: 0.6 (good, false alarm), 0.7 and 0.9 (defects); missed: 0.3
    assert m["false_alarm_rate"] == pytest.approx(1 / 3)
    assert m["miss_rate"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    report = anomaly_report(rec)
    assert report.metrics["threshold"] == pytest.approx(0.5)
    assert report.counts == {"good": 3, "defective": 3, "flagged": 3}
    assert "pixel" in " ".join(report.notes)
    report.to_json()


def test_metrics_refuse_missing_inputs():
    rec = scores_record([0.1, 0.9], ["good", "crack"])
    with pytest.raises(DataError, match="no threshold"):
        threshold_metrics(rec)
    with pytest.raises(DataError, match="maps"):
        pixel_auroc(rec)
    with pytest.raises(DataError, match="ground truth"):
        image_auroc(torch.tensor([0.1, 0.2]))
    with pytest.raises(DataError, match="masks"):
        pixel_auroc(torch.rand(2, 4, 4))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(2, 300),
    levels=st.sampled_from([2, 5, 50, None]),
)
def test_ranked_auroc_equals_sklearn_with_ties(data, n: int, levels: int | None) -> None:
    """The pixel AUROC's one-sort Mann-Whitney sum equals scikit-learn's curve, ties (few
    distinct values, as quantised maps have) counted half."""
    y = data.draw(hnp.arrays(np.bool_, n))
    if y.all() or not y.any():
        y[0] = not y[0]
    floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    if levels is not None:
        floats = st.integers(0, levels - 1).map(float)
    s = data.draw(hnp.arrays(np.float32, n, elements=floats))
    got = ranked_auroc(y, torch.from_numpy(s))
    assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ranked_auroc_refuses_nan_maps() -> None:
    with pytest.raises(DataError, match="NaN"):
        ranked_auroc(np.array([True, False]), torch.tensor([float("nan"), 0.0]))


def _aupro_by_histograms(values: np.ndarray, gt: np.ndarray, max_fpr=0.3, k=1000) -> float:
    """AUPRO as written before the shared sort (np.quantile thresholds, here in float64,
    and a histogram of every good pixel)."""
    from scipy import ndimage
    from sklearn.metrics import auc

    thresholds = np.unique(np.quantile(values.astype(np.float64), np.linspace(0, 1, k)))
    edges = np.concatenate([thresholds, [np.inf]])
    good_hist = np.histogram(values[~gt], bins=edges)[0]
    fpr = good_hist[::-1].cumsum()[::-1] / max(1, (~gt).sum())
    pros = []
    for i in range(values.shape[0]):
        labelled, n_regions = ndimage.label(gt[i])
        for r in range(1, n_regions + 1):
            region = values[i][labelled == r]
            pros.append(np.histogram(region, bins=edges)[0][::-1].cumsum()[::-1] / region.size)
    pro = np.mean(pros, axis=0)
    order = np.argsort(fpr)
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= max_fpr
    x = np.concatenate([fpr[keep], [max_fpr]])
    y = np.concatenate([pro[keep], [np.interp(max_fpr, fpr, pro)]])
    return float(auc(x, y) / max_fpr) if x.size >= 2 else float("nan")


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    side=st.integers(4, 24),
    levels=st.sampled_from([3, 40, None]),
    k=st.sampled_from([7, 100, 1000]),
)
def test_pixel_metrics_from_one_sort_equal_the_direct_computation(data, n, side, levels, k):
    """``PixelRanks`` (one sort, binary search) gives numpy's float64 quantiles, the exact
    pixel AUROC and the AUPRO of per-threshold histograms, ties and repeated values
    included."""
    from inspectkit.metrics.anomaly import PixelRanks

    floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    if levels is not None:
        floats = st.integers(0, levels - 1).map(float)
    maps = data.draw(hnp.arrays(np.float32, (n, side, side), elements=floats))
    gt = data.draw(hnp.arrays(np.bool_, (n, side, side)))
    gt[0, 0, 0], gt[-1, -1, -1] = True, False
    ranks = PixelRanks(maps, gt)
    qs = np.linspace(0, 1, k)
    assert np.array_equal(ranks.quantiles(qs), np.quantile(maps.astype(np.float64), qs))
    assert ranks.auroc() == pytest.approx(roc_auc_score(gt.ravel(), maps.ravel()), abs=1e-12)
    want = _aupro_by_histograms(maps, gt, k=k)
    got = aupro(torch.from_numpy(maps), torch.from_numpy(gt).unsqueeze(1), num_thresholds=k)
    assert got == pytest.approx(want, abs=1e-12) or (math.isnan(got) and math.isnan(want))
    rec = scores_record(
        [0.0] * n,
        ["crack"] * n,
        maps=torch.from_numpy(maps),
        masks=torch.from_numpy(gt).unsqueeze(1).to(torch.uint8),
    )
    report = anomaly_report(rec).metrics  # the report shares one sort between the two
    assert report["pixel_auroc"] == pytest.approx(ranks.auroc(), abs=1e-12)
    want_report = _aupro_by_histograms(maps, gt)
    assert report["aupro"] == pytest.approx(want_report, abs=1e-12) or (
        math.isnan(report["aupro"]) and math.isnan(want_report)
    )
