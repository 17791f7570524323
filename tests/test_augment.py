"""Augment: wafer-aware geometry, class balancing, determinism, fit-time only, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_image_set

import inspectkit as ik
from inspectkit.augment_ops import (
    AugmentRanges,
    augment_batch,
    augment_wafers,
    top_up_plan,
    wafer_centres,
)
from inspectkit.errors import ConfigError, DataError, InspectkitError
from inspectkit.records import Box, ImageSet, SampleMeta
from inspectkit.stages import Augment


def disk_wafers(
    n: int, size: int = 31, *, seed: int = 0, labels: list[str] | None = None
) -> ImageSet:
    """Wafer maps: a centred disk of dies (1) with random fail dies (2), 0 outside."""
    g = torch.Generator().manual_seed(seed)
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - c) ** 2 + (xx - c) ** 2) <= (size / 2 - 1) ** 2
    fails = torch.rand(n, size, size, generator=g) < 0.2
    maps = inside.to(torch.uint8) * (1 + fails.to(torch.uint8))
    labels = labels or [("a", "b", "c")[i % 3] for i in range(n)]
    return ImageSet(
        images=maps.unsqueeze(1),
        samples=[SampleMeta(id=f"w{i}", label=lab) for i, lab in enumerate(labels)],
        classes=sorted(set(labels)),
        kind="wafer",
    )


def _origin_positions(out: ImageSet) -> dict[str, int]:
    return {s.id: i for i, s in enumerate(out.samples)}


# ---------------------------------------------------------------------- wafer mode
def test_wafer_mode_keeps_codes_and_each_outline() -> None:
    data = disk_wafers(12, labels=["a"] * 9 + ["b"] * 3)
    # an off-centre, non-square wafer too: outline must survive exactly
    odd = torch.zeros(1, 1, 24, 40, dtype=torch.uint8)
    odd[0, 0, 3:20, 5:30] = 1
    odd[0, 0, 5:9, 6:12] = 2
    data2 = ImageSet(
        images=odd.repeat(4, 1, 1, 1),
        samples=[SampleMeta(id=f"o{i}", label="x") for i in range(4)],
        classes=["x"],
        kind="wafer",
    )
    for d, n in ((data, 10), (data2, 40)):
        out = Augment(per_class=n, shear=10, shift=0.1, seed=3).fit_run(d)
        pos = _origin_positions(out)
        imgs = out.image_tensor()
        assert set(imgs.unique().tolist()) <= {0, 1, 2}
        synth = [i for i, s in enumerate(out.samples) if s.synthetic]
        assert synth
        for i in synth:
            origin = imgs[pos[out.samples[i].meta["origin"]]]
            # no die outside the original wafer, no hole inside it
            assert torch.equal(imgs[i] > 0, origin > 0)


def test_wafer_flip_and_quarter_turn_are_exact_on_a_centred_wafer() -> None:
    d = disk_wafers(3, size=31)
    maps = d.image_tensor()
    out, _, _ = augment_batch(
        maps,
        wafer=True,
        ranges=AugmentRanges(rotation=0, hflip=True, vflip=False),
        generator=torch.Generator().manual_seed(0),
    )
    for x, y in zip(maps, out):
        assert torch.equal(y, x) or torch.equal(y, torch.flip(x, [-1]))
    # a 90° turn about the wafer centre moves every fail die onto a die position
    c = wafer_centres(maps)[0]
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    shift = torch.eye(3)
    shift[:2, 2] = c
    back = torch.eye(3)
    back[:2, 2] = -c
    m = (shift @ turn @ back).expand(3, 3, 3)
    rot = augment_wafers(maps, m)
    expected = torch.rot90(maps, k=-1, dims=(-2, -1))
    assert torch.equal(rot, expected)
    assert int((rot == 2).sum()) == int((maps == 2).sum())


def test_non_wafer_image_in_wafer_mode_is_refused() -> None:
    photos = make_image_set(6, channels=3)
    with pytest.raises(DataError, match="wafer mode"):
        Augment(mode="wafer", per_class=4).fit_run(photos)
    with pytest.raises(ConfigError, match="wafer"):
        Augment(mode="image").fit_run(disk_wafers(6))
    with pytest.raises(ConfigError, match="brightness"):
        Augment(brightness=0.2).fit_run(disk_wafers(6))


# ---------------------------------------------------------------------- balancing
def test_per_class_counts_are_exact_and_real_samples_kept() -> None:
    labels = ["a"] * 10 + ["b"] * 3 + ["c"] * 1 + [None] * 2  # type: ignore[list-item]
    d = disk_wafers(16, labels=[lab or "a" for lab in labels])
    d = d.replace(
        samples=[s.model_copy(update={"label": lab}) for s, lab in zip(d.samples, labels)]
    )
    out = Augment(per_class=7, seed=0).fit_run(d)
    assert out.class_counts() == {"a": 10, "b": 7, "c": 7}
    assert out.class_counts(include_synthetic=False) == d.class_counts()
    # the real samples come first, unchanged, unlabelled ones included
    assert out.samples[: len(d)] == d.samples
    assert torch.equal(out.image_tensor()[: len(d)], d.image_tensor())
    assert all(s.synthetic and s.label for s in out.samples[len(d) :])
    assert len({s.id for s in out.samples}) == len(out)
    # the single "c" sample is used for all six copies, ids stay unique
    c_ids = [s.id for s in out.samples if s.label == "c" and s.synthetic]
    assert c_ids == [f"w13#aug{k}" for k in range(6)]


def test_ratio_balances_relative_to_largest_class() -> None:
    d = disk_wafers(13, labels=["a"] * 10 + ["b"] * 3)
    assert Augment(ratio=0.5).fit_run(d).class_counts() == {"a": 10, "b": 5}
    assert Augment().fit_run(d).class_counts() == {"a": 10, "b": 10}
    assert Augment(per_class=4).fit_run(d).class_counts() == {"a": 10, "b": 4}
    assert top_up_plan({"a": 10, "b": 3}, ratio=0.25) == {"a": 0, "b": 0}
    out = Augment(per_class=12, classes=["b"]).fit_run(d)
    assert out.class_counts() == {"a": 10, "b": 12}


def test_same_seed_same_samples_other_seed_differs() -> None:
    d = disk_wafers(9)
    a1 = Augment(per_class=20, seed=5).fit_run(d)
    a2 = Augment(per_class=20, seed=5).fit_run(d)
    a3 = Augment(per_class=20, seed=6).fit_run(d)
    assert torch.equal(a1.image_tensor(), a2.image_tensor())
    assert a1.ids == a2.ids
    assert not torch.equal(a1.image_tensor(), a3.image_tensor())


def test_run_is_identity_and_fit_run_only_adds() -> None:
    d = disk_wafers(6)
    aug = Augment(per_class=50)
    assert aug.run(d) is d
    pipe = ik.Pipeline([Augment(per_class=50)])
    assert pipe.run(d) is d
    assert len(pipe.fit_run(d)) == 150


# ---------------------------------------------------------------------- photos
def test_photos_move_masks_and_boxes_with_the_image() -> None:
    n = 4
    images = torch.zeros(n, 3, 20, 30, dtype=torch.uint8)
    images[:, :, 5:10, 8:16] = 200
    masks = torch.zeros(n, 1, 20, 30, dtype=torch.uint8)
    masks[:, :, 5:10, 8:16] = 1
    boxes = [[Box(label="d", xmin=8, ymin=5, xmax=16, ymax=10)] for _ in range(n)]
    d = ImageSet(
        images=images,
        masks=masks,
        boxes=boxes,
        samples=[SampleMeta(id=f"p{i}", label="d") for i in range(n)],
        classes=["d"],
    )
    out = Augment(per_class=12, rotation=30, brightness=0.3, contrast=0.3, seed=1).fit_run(d)
    assert len(out) == 12 and out.masks is not None and out.boxes is not None
    assert out.image_tensor().dtype == torch.uint8
    assert set(out.masks.unique().tolist()) <= {0, 1}
    for i in range(n, 12):
        m = out.masks[i, 0]
        assert int(m.sum()) > 0
        ys, xs = torch.nonzero(m, as_tuple=True)
        (b,) = out.boxes[i]
        # the moved box covers the moved defect
        assert b.xmin <= int(xs.min()) + 0.5 and int(xs.max()) + 0.5 <= b.xmax + 1
        assert b.ymin <= int(ys.min()) + 0.5 and int(ys.max()) + 0.5 <= b.ymax + 1


def test_photometric_ranges_change_intensity_only_within_bounds() -> None:
    images = torch.full((4, 3, 12, 12), 100, dtype=torch.uint8)
    d = ImageSet(
        images=images,
        samples=[SampleMeta(id=f"p{i}", label="a") for i in range(4)],
        classes=["a"],
    )
    out = Augment(
        per_class=40, rotation=0, hflip=False, vflip=False, brightness=0.5, seed=0
    ).fit_run(d)
    x = out.image_tensor()[4:].float()
    assert x.dtype == torch.float32 and out.image_tensor().dtype == torch.uint8
    per_image = x.mean((1, 2, 3))
    # each copy is uniformly scaled by its own factor in [0.5, 1.5]
    assert torch.equal(x.amax((1, 2, 3)), x.amin((1, 2, 3)))
    assert float(per_image.min()) >= 50 - 1 and float(per_image.max()) <= 150 + 1
    assert len(per_image.unique()) > 10


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rotation": 181}, "rotation"),
        ({"shear": -1}, "shear"),
        ({"per_class": 0}, "per_class"),
        ({"per_class": -3}, "per_class"),
        ({"ratio": 1.5}, "ratio"),
        ({"shift": 0.9}, "shift"),
        ({"per_class": 5, "ratio": 0.5}, "either"),
        ({"padding": "mirror"}, "padding"),
    ],
)
def test_bad_config_is_refused_at_construction(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Augment(**kwargs)


def test_bad_data_is_refused_at_fit() -> None:
    empty = ImageSet(images=torch.zeros(0, 1, 8, 8, dtype=torch.uint8), samples=[], classes=["a"])
    with pytest.raises(DataError, match="empty"):
        Augment(per_class=3).fit_run(empty)
    ragged = ImageSet(
        images=[torch.ones(1, 8, 8, dtype=torch.uint8), torch.ones(1, 9, 9, dtype=torch.uint8)],
        samples=[SampleMeta(id="a", label="a"), SampleMeta(id="b", label="a")],
        classes=["a"],
        kind="wafer",
    )
    with pytest.raises(DataError, match="Wrangle"):
        Augment(per_class=3).fit_run(ragged)
    with pytest.raises(ConfigError, match="not in the data"):
        Augment(per_class=3, classes=["zzz"]).fit_run(disk_wafers(3))
    with pytest.raises(InspectkitError):
        top_up_plan({"a": 1}, ratio=0.0)


def test_augment_spec_round_trips_through_save_and_load(tmp_path) -> None:
    pipe = ik.Pipeline([Augment(per_class=9, rotation=45, shear=5, seed=2)])
    pipe.fit(disk_wafers(6))
    pipe.save(tmp_path / "m")
    loaded = ik.Pipeline.load(tmp_path / "m")
    assert loaded[0].config == pipe[0].config
    d = disk_wafers(6)
    assert torch.equal(loaded[0].fit_run(d).image_tensor(), pipe[0].fit_run(d).image_tensor())
    assert math.isclose(loaded[0].config.rotation, 45)
