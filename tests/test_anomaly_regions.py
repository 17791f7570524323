"""Where a flagged part's defect lies: the region threshold set on held-out goods' maps,
the region rule shared with the torch-free runtime, boxes, overlays, saved models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from anomaly_support import flat_parts
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector, Calibration
from inspectkit.anomaly.threshold import (
    REGION_TAIL_SHARE,
    PixelTail,
    region_masks,
    threshold_at_false_alarm_rate,
)
from inspectkit.errors import ConfigError, DataError
from inspectkit.metrics.anomaly import defect_regions, region_boxes
from inspectkit.records import ImageSet
from inspectkit_runtime import regions as runtime_regions

maps_st = st.integers(1, 4).flatmap(
    lambda n: st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
        lambda hw: st.lists(
            st.floats(-100, 100, allow_nan=False, width=32),
            min_size=n * hw[0] * hw[1],
            max_size=n * hw[0] * hw[1],
        ).map(lambda v: torch.tensor(v).reshape(n, *hw))
    )
)


# ---------------------------------------------------------------------- the rule
@settings(max_examples=150, deadline=None)
@given(maps=maps_st, rate=st.floats(1e-4, REGION_TAIL_SHARE))
def test_the_region_threshold_is_the_order_statistic_of_the_good_pixels(maps, rate):
    tail = PixelTail.of(maps)
    line = tail.threshold(rate)
    assert line == threshold_at_false_alarm_rate(maps.flatten(), rate)  # the kept tail suffices
    assert int((maps.double() > line).sum()) <= rate * maps.numel() + 1e-9


@settings(max_examples=150, deadline=None)
@given(maps=maps_st, data=st.data())
def test_regions_only_in_shown_parts_and_every_shown_part_has_one(maps, data):
    n = maps.shape[0]
    lines = torch.tensor(data.draw(st.lists(st.floats(-150, 150), min_size=n, max_size=n)))
    shown = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    region = region_masks(maps, lines, shown)
    assert region.dtype == torch.bool and region.shape == maps.shape
    for i in range(n):
        if not shown[i]:
            assert not region[i].any()
            continue
        above = maps[i].double() > float(lines[i])
        if above.any():
            assert torch.equal(region[i], above)
        else:  # nothing above its line: the part's highest pixel shows where
            assert torch.equal(region[i], maps[i] == maps[i].max())
    np_region = runtime_regions.region_masks(maps.numpy(), lines.numpy(), shown.numpy())
    assert np.array_equal(np_region, region.numpy())  # the runtime's rule is this one


@settings(max_examples=150, deadline=None)
@given(
    mask=st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(
        lambda hw: st.lists(st.booleans(), min_size=hw[0] * hw[1], max_size=hw[0] * hw[1]).map(
            lambda v: np.array(v).reshape(hw)
        )
    ),
    scale=st.tuples(st.integers(1, 4), st.integers(1, 4)),
)
def test_region_boxes_cover_the_region_and_scale_into_the_image(mask, scale):
    boxes = region_boxes(torch.from_numpy(mask))
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 <= x1 < mask.shape[1] and 0 <= y0 <= y1 < mask.shape[0]
        covered[y0 : y1 + 1, x0 : x1 + 1] = True
        # a box is tight: each of its edges holds a region pixel
        inner = mask[y0 : y1 + 1, x0 : x1 + 1]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
    if len(boxes) < runtime_regions.MAX_REGIONS:
        assert not (mask & ~covered).any()
    assert bool(boxes) == bool(mask.any())
    size = (mask.shape[0] * scale[0], mask.shape[1] * scale[1])
    scaled = region_boxes(torch.from_numpy(mask), size)
    assert len(scaled) == len(boxes)
    for (x0, y0, x1, y1), (a0, b0, a1, b1) in zip(boxes, scaled):
        assert (a0, b0) == (x0 * scale[1], y0 * scale[0])
        assert (a1, b1) == ((x1 + 1) * scale[1] - 1, (y1 + 1) * scale[0] - 1)
        assert a1 < size[1] and b1 < size[0]


@settings(max_examples=300, deadline=None)
@given(
    mask=st.tuples(st.integers(1, 30), st.integers(1, 30), st.floats(0.05, 0.95)).flatmap(
        lambda t: st.lists(st.floats(0, 1), min_size=t[0] * t[1], max_size=t[0] * t[1]).map(
            lambda v: np.array(v).reshape(t[:2]) < t[2]
        )
    )
)
def test_the_runtime_labelling_is_scipys(mask):
    from scipy import ndimage

    ours, n = runtime_regions.label(mask)
    theirs, m = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    assert n == m and np.array_equal(ours, theirs)


def test_region_calibration_is_saved_and_checked():
    cal = Calibration.estimate(torch.arange(100.0), 0.05)
    tail = PixelTail.of(torch.arange(10_000.0).reshape(4, 50, 50))
    with_region = cal.with_region(rate=1e-3, tail=tail)
    assert (with_region.region_threshold, with_region.region_false_alarm_rate) == (9989.0, 1e-3)
    assert Calibration.from_state(with_region.to_state()) == with_region
    fixed = with_region.with_region(threshold=3.5)
    assert (fixed.region_threshold, fixed.region_false_alarm_rate) == (3.5, None)
    assert with_region.with_region().region_threshold is None
    # a state saved before regions existed: regions at the image threshold
    old = {k: v for k, v in cal.to_state().items() if not k.startswith("region")}
    assert Calibration.from_state(old).region_threshold is None
    with pytest.raises(DataError, match="region threshold must be a finite"):
        Calibration(1.0, 0.0, 2.0, region_threshold=float("nan"))
    with pytest.raises(DataError, match="region threshold must be a finite"):
        Calibration.from_state({**cal.to_state(), "region_threshold": "3"})
    with pytest.raises(ConfigError, match="above the"):
        tail.threshold(0.05)  # more than the tail kept
    with pytest.raises(DataError, match="needs the calibration goods' maps"):
        cal.with_region(rate=1e-3)
    with pytest.raises(DataError, match="NaN"):
        PixelTail.of(torch.tensor([[[0.0, float("nan")]]]))


# ---------------------------------------------------------------------- in the stage
S = 128  # parts' side: the toy detector's maps are smooth at 8-px features


def two_defects(n: int, seed: int) -> ImageSet:
    """Flat parts with a strong dark square and a faint one in opposite corners."""
    data = flat_parts(n, seed, size=S, noise=0.02)
    img = data.images.clone()
    img[:, :, 16:41, 16:41] = 25  # strong
    img[:, :, 87:112, 87:112] = 95  # faint (flat is 128)
    bad = [s.model_copy(update={"label": "bad"}) for s in data.samples]
    return data.replace(images=img, samples=bad)


@pytest.fixture(scope="module")
def fitted() -> AnomalyDetector:
    det = AnomalyDetector(
        method="padim", size=S, options={"n_features": 16}, progress=False, device="cpu",
        calibration_fraction=0.25, target_false_alarm_rate=0.05,
    )  # fmt: skip
    return det.fit(flat_parts(40, 0, size=S, noise=0.02))


def test_the_region_outlines_both_defects_of_a_flagged_part(fitted):
    cal = fitted.calibration
    assert cal.region_false_alarm_rate == 1e-3 and cal.region_threshold < cal.threshold
    res = fitted.run(two_defects(3, 4))
    assert bool(res.is_anomalous.all())
    line = torch.full((3,), cal.region_threshold, dtype=torch.float64)
    assert torch.equal(res.region_threshold, line)
    region = defect_regions(res)
    assert torch.equal(region, res.maps.double() > cal.region_threshold)
    for i in range(3):
        assert region[i, 16:41, 16:41].any() and region[i, 87:112, 87:112].any()
        assert float(region[i].float().mean()) < 0.6  # not the whole part
        boxes = region_boxes(region[i])
        assert any(x0 <= 40 and y0 <= 40 for x0, y0, _, _ in boxes)
        assert any(x1 >= 87 and y1 >= 87 for _, _, x1, y1 in boxes)
    goods = fitted.run(flat_parts(6, 9, size=S, noise=0.02))
    assert not defect_regions(goods)[~goods.is_anomalous].any()  # good verdicts: no region


def test_set_region_and_a_saved_model_keep_what_regions_rest_on(fitted, tmp_path):
    det = AnomalyDetector(**fitted.config.model_dump())
    det.set_state(fitted.get_state())
    assert det.calibration == fitted.calibration
    with pytest.raises(DataError, match="not kept in a loaded detector"):
        det.set_region(rate=1e-2)
    det.set_region(threshold=123.0)
    assert det.calibration.region_threshold == 123.0 and det.config.region_threshold == 123.0
    assert det.config.region_false_alarm_rate is None
    wider = copy.deepcopy(fitted).set_region(rate=1e-2).calibration  # the tail is kept
    assert wider.region_false_alarm_rate == 1e-2
    assert wider.region_threshold < fitted.calibration.region_threshold
    with pytest.raises(ConfigError, match="not both"):
        det.set_region(rate=1e-3, threshold=1.0)
    Pipeline([det]).save(tmp_path / "m")
    loaded = Pipeline.load(tmp_path / "m").stages[0]
    assert loaded.calibration.region_threshold == 123.0
    config = json.loads((tmp_path / "m" / "pipeline.json").read_text())["stages"][0]["config"]
    assert config["region_threshold"] == 123.0
    assert any("defect regions: the map above 123 (fixed)" in n for n in loaded.recipe_notes())


@settings(max_examples=80, deadline=None)
@given(rate=st.floats(allow_nan=True, allow_infinity=True))
def test_a_region_rate_is_a_share_of_good_pixels_within_the_kept_tail(rate):
    if 0 < rate <= REGION_TAIL_SHARE:
        det = AnomalyDetector(method="padim", region_false_alarm_rate=rate)
        assert det.config.region_false_alarm_rate == rate
    else:
        with pytest.raises(ConfigError, match="region false-alarm rate"):
            AnomalyDetector(method="padim", region_false_alarm_rate=rate)


def test_anomaly_overlays_outline_the_region_of_flagged_parts_only(fitted, tmp_path):
    from inspectkit.xai.overlay import REGION_COLOUR, write_anomaly_overlays

    res = fitted.run(ImageSet.concat([flat_parts(4, 9, size=S, noise=0.02), two_defects(1, 4)]))
    flags = res.is_anomalous.tolist()
    assert flags[-1] and not all(flags)
    paths = write_anomaly_overlays(res, tmp_path / "maps")
    magenta = [
        int((np.asarray(Image.open(p)) == np.array(REGION_COLOUR, dtype=np.uint8)).all(-1).sum())
        for p in paths
    ]
    assert all((m > 20) if f else m == 0 for m, f in zip(magenta, flags)), (magenta, flags)
    index = json.loads((tmp_path / "maps" / "overlays.json").read_text())["overlays"]
    assert [bool(e["regions"]) for e in index] == flags


def test_region_metrics_count_defects_touched_and_region_pixels_on_defects():
    from inspectkit.metrics.anomaly import anomaly_report, region_metrics
    from inspectkit.records import AnomalyScores, Box, SampleMeta

    maps = torch.zeros(3, 10, 10)
    maps[0, 1:3, 1:3] = 5.0  # defect 1 of part 0, found
    maps[0, 8, 8] = 5.0  # a region pixel on no defect
    maps[1, 5, 5] = 0.5  # part 1: below the threshold, passed as good
    maps[2, 0, 0] = 5.0  # a good part flagged: its region lies on no defect
    masks = torch.zeros(3, 1, 10, 10, dtype=torch.uint8)
    masks[0, 0, 1:3, 1:3] = 1
    masks[0, 0, 6:8, 0:2] = 1  # defect 2 of part 0, missed
    masks[1, 0, 4:7, 4:7] = 1
    samples = [SampleMeta(id=str(i), label=lab) for i, lab in enumerate(["bad", "bad", "good"])]
    scores = maps.flatten(1).amax(1)
    res = AnomalyScores(
        images=torch.zeros(3, 1, 10, 10, dtype=torch.uint8), samples=samples, scores=scores,
        classes=["good", "bad"],
        maps=maps, masks=masks, threshold=1.0, is_anomalous=scores > 1.0,
        region_threshold=torch.full((3,), 1.0, dtype=torch.float64),
    )  # fmt: skip
    m = region_metrics(res)
    assert m["defects_touched"] == pytest.approx(1 / 3)  # of 3 defects, one touched
    assert m["region_precision"] == pytest.approx(4 / 6)  # 4 of 6 region pixels on defects
    assert anomaly_report(res).metrics["defects_touched"] == pytest.approx(1 / 3)
    # boxes say where instead of masks (DeepPCB, VOC): each box is a defect
    boxes = [[Box(label="d", xmin=1, ymin=1, xmax=3, ymax=3), Box(label="d", xmin=0, ymin=6, xmax=2, ymax=8)],
             [Box(label="d", xmin=4, ymin=4, xmax=7, ymax=7)], []]  # fmt: skip
    by_box = region_metrics(res.replace(masks=None, boxes=boxes))
    assert by_box == pytest.approx(m)
    assert region_metrics(res.replace(masks=None)) == {}  # nothing says where


def test_each_product_draws_its_regions_by_its_own_line():
    def of(group: str, data: ImageSet) -> ImageSet:
        samples = [
            s.model_copy(update={"group": group, "id": f"{group}/{s.id}"}) for s in data.samples
        ]
        return data.replace(samples=samples)

    bright = flat_parts(24, 1, size=64, noise=0.02)
    bright = bright.replace(images=(bright.images.float() * 1.6).clamp(0, 255).to(torch.uint8))
    det = AnomalyDetector(
        method="padim", size=64, options={"n_features": 16}, progress=False, device="cpu",
        group_by="group", calibration_fraction=0.25,
    ).fit(ImageSet.concat([of("a", flat_parts(24, 0, size=64, noise=0.02)), of("b", bright)]))  # fmt: skip
    lines = {k: p.calibration.region_threshold for k, p in det.products.items()}
    assert len(set(lines.values())) == 2  # one line per product, from its own goods
    res = det.run(ImageSet.concat([of("b", two_defects(1, 3)), of("a", two_defects(1, 4))]))
    assert res.region_threshold.tolist() == [lines["b"], lines["a"]]
    assert res.is_anomalous.all()
    region = defect_regions(res)
    for i, key in enumerate(["b", "a"]):
        assert torch.equal(region[i], res.maps[i].double() > lines[key])
