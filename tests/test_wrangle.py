"""Wrangle: resize, normalisation, de-duplication, splits, letterbox, lazy sets, reports."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit import Pipeline
from inspectkit.errors import ConfigError, DataError, NotFittedError
from inspectkit.records import Box, ImageSet, LazyImages, SampleMeta
from inspectkit.stages.wrangle import Wrangle, assign_splits, letterbox, split_of, summarize


def wafer_set(n: int = 12, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    maps = [
        torch.randint(0, 3, (1, 20 + (i % 4) * 7, 15 + (i % 3) * 9), generator=g, dtype=torch.uint8)
        for i in range(n)
    ]
    classes = ["Center", "Donut", "none"]
    samples = [SampleMeta(id=f"w{i}", label=classes[i % 3], group=f"lot{i // 4}") for i in range(n)]
    return ImageSet(images=maps, samples=samples, classes=classes, kind="wafer")


def photo_set(n: int = 10, channels: int = 3, size: int = 12, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    samples = [SampleMeta(id=f"p{i}", label="ab"[i % 2]) for i in range(n)]
    return ImageSet(images=images, samples=samples, classes=["a", "b"])


# ---------------------------------------------------------------------- resize & normalise
def test_wafer_resize_keeps_codes_and_kind() -> None:
    data = wafer_set()
    out = Wrangle(size=32).run(data)
    assert out.kind == "wafer" and out.images.shape == (12, 1, 32, 32)
    assert out.images.dtype == torch.uint8
    assert set(out.images.unique().tolist()) <= {0, 1, 2}
    # nearest neighbour: every output code is one of the input's codes at that place
    small = data.images[0]
    up = Wrangle(size=(small.shape[1] * 2, small.shape[2] * 2)).run(data.subset([0])).images[0]
    assert torch.equal(up[:, ::2, ::2], small)


def test_unit_normalisation_of_photos_and_wafers() -> None:
    photos = photo_set()
    out = Wrangle(normalize="unit").run(photos)
    assert out.images.dtype == torch.float32
    assert torch.allclose(out.images * 255, photos.images.float())
    wafers = Wrangle(size=16, normalize="unit").run(wafer_set())
    assert wafers.kind == "image" and set(wafers.images.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_standard_normalisation_learns_state_and_survives_save_load(tmp_path: Path) -> None:
    data = photo_set(n=20, channels=3)
    stage = Wrangle(normalize="standard")
    with pytest.raises(NotFittedError):
        stage.run(data)
    out = stage.fit_run(data)
    x = out.images
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    pipe = Pipeline([stage])
    pipe.save(tmp_path / "m")
    again = Pipeline.load(tmp_path / "m")
    new = photo_set(n=4, seed=5)
    assert torch.allclose(again.run(new).images, stage.run(new).images)
    with pytest.raises(DataError, match="3-channel"):
        stage.run(photo_set(n=4, channels=1))


def test_standard_statistics_come_from_the_train_split_only() -> None:
    data = photo_set(n=40, channels=1)
    stage = Wrangle(normalize="standard", split=(0.5, 0.25, 0.25), seed=3)
    out = stage.fit_run(data)
    train = [i for i, s in enumerate(out.samples) if s.split == "train"]
    raw = data.images[train].float() / 255
    assert torch.allclose(stage.mean, raw.mean().reshape(1), atol=1e-5)
    assert not torch.allclose(stage.mean, (data.images.float() / 255).mean().reshape(1), atol=1e-6)


def test_channels_on_ragged_photos_and_wafer_refusal() -> None:
    imgs = [
        torch.full((1, 5, 6), 10, dtype=torch.uint8),
        torch.full((1, 7, 3), 20, dtype=torch.uint8),
    ]
    data = ImageSet(images=imgs, samples=[SampleMeta(id="a"), SampleMeta(id="b")])
    out = Wrangle(channels=3).run(data)
    assert [tuple(t.shape) for t in out.images] == [(3, 5, 6), (3, 7, 3)]
    with pytest.raises(DataError, match="wafer maps have one channel"):
        Wrangle(channels=3).run(wafer_set())


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        Wrangle(split=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="size"):
        Wrangle(size=0)
    with pytest.raises(ConfigError):
        Wrangle(normalize="zscore")


# ---------------------------------------------------------------------- de-duplication
def test_dedupe_keeps_first_and_reports_conflicts() -> None:
    data = photo_set(n=6)
    images = data.images.clone()
    images[3] = images[0]  # same label as p0 ("a"/"b" alternate: p3 is "b", p0 is "a")
    images[4] = images[2]  # p4 "a" == p2 "a"
    data = data.replace(images=images)
    stage = Wrangle(dedupe=True)
    out = stage.fit_run(data)
    assert out.ids == ["p0", "p1", "p2", "p5"]
    rep = stage.report_
    assert rep is not None and rep.counts["duplicates_removed"] == 2
    assert rep.counts["input_samples"] == 6
    pairs = {
        (d["id"], d["duplicate_of"], d["label_differs"]) for d in rep.details["duplicates_removed"]
    }
    assert pairs == {("p3", "p0", True), ("p4", "p2", False)}
    assert any("different label" in n for n in rep.notes)
    # inference keeps one output per input unless asked
    assert len(stage.run(data)) == 6
    assert len(Wrangle(dedupe="always").run(data)) == 4


def test_dedupe_on_ragged_wafers_ignores_equal_bytes_of_other_shapes() -> None:
    a = torch.ones((1, 2, 6), dtype=torch.uint8)
    b = torch.ones((1, 3, 4), dtype=torch.uint8)  # same bytes, other shape: not a duplicate
    data = ImageSet(
        images=[a, b, a.clone()],
        samples=[SampleMeta(id=str(i)) for i in range(3)],
        kind="wafer",
    )
    out = Wrangle(dedupe=True).fit_run(data)
    assert out.ids == ["0", "1"]


# ---------------------------------------------------------------------- splits
def test_stratified_split_is_seeded_and_proportional() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    samples = [SampleMeta(id=str(i), label=lab) for i, lab in enumerate(labels)]
    s1 = assign_splits(samples, (0.7, 0.2, 0.1), seed=1)
    assert s1 == assign_splits(samples, (0.7, 0.2, 0.1), seed=1)
    assert s1 != assign_splits(samples, (0.7, 0.2, 0.1), seed=2)
    per = defaultdict(Counter)
    for lab, sp in zip(labels, s1):
        per[lab][sp] += 1
    assert per["a"] == Counter(train=42, val=12, test=6)
    assert per["b"] == Counter(train=21, val=6, test=3)
    assert per["c"] == Counter(train=7, val=2, test=1)


def test_group_split_keeps_lots_together_and_split_of() -> None:
    data = wafer_set(n=40)
    out = Wrangle(split=(0.6, 0.2, 0.2), group_by="group", seed=0).run(data)
    by_lot = defaultdict(set)
    for s in out.samples:
        by_lot[s.group].add(s.split)
    assert all(len(v) == 1 for v in by_lot.values())
    assert {s.split for s in out.samples} == {"train", "val", "test"}
    train = split_of(out, "train")
    assert len(train) == sum(s.split == "train" for s in out.samples)
    assert all(s.split == "train" for s in train.samples)
    with pytest.raises(DataError, match="no sample has a split"):
        split_of(data, "train")
    with pytest.raises(DataError, match="split must be one of"):
        split_of(out, "holdout")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=60),
    groups=st.data(),
    seed=st.integers(0, 2**31),
)
def test_split_properties(labels: list[str | None], groups, seed: int) -> None:
    lots = groups.draw(
        st.lists(
            st.sampled_from(["L1", "L2", "L3", "L4", None]),
            min_size=len(labels),
            max_size=len(labels),
        )
    )
    samples = [
        SampleMeta(id=str(i), label=lab, group=g) for i, (lab, g) in enumerate(zip(labels, lots))
    ]
    fractions = (0.6, 0.2, 0.2)
    grouped = assign_splits(samples, fractions, seed=seed, group_by="group")
    seen: dict[str, set[str]] = defaultdict(set)
    for s, sp in zip(samples, grouped):
        if s.group is not None:
            seen[s.group].add(sp)
    assert all(len(v) == 1 for v in seen.values())
    plain = assign_splits(samples, fractions, seed=seed)
    for lab in set(labels):
        n = labels.count(lab)
        got = Counter(sp for sp, x in zip(plain, labels) if x == lab)
        for name, f in zip(("train", "val", "test"), fractions):
            assert abs(got[name] - f * n) <= 1


# ---------------------------------------------------------------------- letterbox
def test_letterbox_pads_wafers_and_moves_boxes_and_masks() -> None:
    img = torch.full((1, 10, 20), 200, dtype=torch.uint8)
    mask = torch.zeros((1, 1, 10, 20), dtype=torch.uint8)
    mask[0, 0, 2:4, 5:10] = 1
    data = ImageSet(
        images=img[None],
        masks=mask,
        boxes=[[Box(label="d", xmin=5, ymin=2, xmax=10, ymax=4)]],
        samples=[SampleMeta(id="x", label="d")],
        classes=["d"],
    )
    out = Wrangle(size=40, keep_aspect=True, pad_value=7).run(data)
    assert out.images.shape == (1, 1, 40, 40)
    assert int(out.images[0, 0, 0, 0]) == 7 and int(out.images[0, 0, 20, 20]) == 200
    b = out.boxes[0][0]
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == (10, 14, 20, 18)
    ys, xs = torch.nonzero(out.masks[0, 0], as_tuple=True)
    assert (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1) == (14, 18, 10, 20)
    wafers = Wrangle(size=64, keep_aspect=True, pad_value=9).run(wafer_set())
    assert wafers.kind == "wafer" and set(wafers.images.unique().tolist()) <= {0, 1, 2}
    _, geo = letterbox(list(wafer_set().images), (64, 64), "nearest")
    assert all(g[0] == pytest.approx(g[1], rel=0.05) for g in geo)


# ---------------------------------------------------------------------- lazy sets & NaN
def test_lazy_set_is_processed_in_batches_like_the_eager_one() -> None:
    data = wafer_set(n=10)
    decoded: list[int] = []

    def loader(i: int) -> torch.Tensor:
        decoded.append(i)
        return data.images[i]

    lazy = data.replace(images=LazyImages(list(range(10)), loader))
    out = Wrangle(size=24, batch_size=3).run(lazy)
    assert torch.equal(out.images, Wrangle(size=24).run(data).images)
    assert sorted(decoded) == list(range(10))


def test_nan_in_lazy_float_images_is_a_data_error() -> None:
    def loader(i: int) -> torch.Tensor:
        t = torch.ones((1, 4, 4))
        if i == 2:
            t[0, 1, 1] = float("nan")
        return t

    lazy = ImageSet(
        images=LazyImages([0, 1, 2], loader), samples=[SampleMeta(id=f"s{i}") for i in range(3)]
    )
    with pytest.raises(DataError, match=r"NaN/inf"):
        Wrangle(size=8).run(lazy)


# ---------------------------------------------------------------------- reports
def test_summary_report_counts_sizes_skipped_and_is_json() -> None:
    data = wafer_set(n=12).replace(skipped=["bad.npz[3]: wafer codes outside 0/1/2"])
    rep = summarize(data, duplicates=True)
    assert rep.counts["samples"] == 12 and rep.counts["skipped"] == 1
    assert {c: int(v["count"]) for c, v in rep.per_class.items()} == data.class_counts()
    assert sum(rep.details["sizes"].values()) == 12
    assert rep.details["sizes"]["20x15"] == sum(
        1 for t in data.images if tuple(t.shape[1:]) == (20, 15)
    )
    assert rep.details["skipped"] == data.skipped
    assert rep.counts["duplicates"] == 0
    json.loads(rep.to_json())
    stage = Wrangle(size=16, split=(0.5, 0.5, 0.0))
    out = stage.run(data)
    assert stage.report_ is not None
    assert stage.report_.details["sizes"] == rep.details["sizes"]  # sizes before resizing
    assert stage.report_.details["output_size"] == [16, 16]
    splits = stage.report_.details["splits"]
    assert splits["train"] + splits["val"] == 12 and splits["test"] == 0
    assert sum(v.get("train", 0) for v in stage.report_.per_class.values()) == splits["train"]
    assert len(out) == 12


def test_wrangle_preserves_derived_record_types() -> None:
    from inspectkit.records import Predictions

    data = photo_set(n=4)
    probs = torch.full((4, 2), 0.5)
    preds = Predictions.build(**data.base_fields(), probs=probs, predicted=["a", "b", "a", "b"])
    out = Wrangle(size=6, split=(0.5, 0.5, 0.0)).run(preds)
    assert isinstance(out, Predictions) and out.images.shape == (4, 3, 6, 6)
    assert np.allclose(out.probs.numpy(), 0.5)
