"""Wafer-map ``.npz`` reader: round trips, bad archives, and the real WM-811K splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspectkit.errors import DataError
from inspectkit.sources import WM811K_CLASSES, load_wafer_maps, load_wafer_npz, save_wafer_npz


def write_npz(path: Path, maps: list[np.ndarray], labels: list[str], **override: object) -> Path:
    flat = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(0, np.uint8)
    shapes = np.array([m.shape for m in maps], dtype=np.int32).reshape(-1, 2)
    sizes = [m.size for m in maps]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    arrays = {
        "flat": flat,
        "shapes": shapes,
        "offsets": offsets,
        "failure_type": np.array(labels, dtype=str),
    }
    arrays.update(override)  # type: ignore[arg-type]
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def maps_strategy() -> st.SearchStrategy[list[np.ndarray]]:
    shape = st.tuples(st.integers(1, 9), st.integers(1, 9))
    one = shape.flatmap(
        lambda hw: st.lists(st.integers(0, 2), min_size=hw[0] * hw[1], max_size=hw[0] * hw[1]).map(
            lambda v, hw=hw: np.array(v, dtype=np.uint8).reshape(hw)
        )
    )
    return st.lists(one, min_size=1, max_size=8)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(maps=maps_strategy(), data=st.data())
def test_npz_round_trip_of_random_ragged_maps(tmp_path: Path, maps: list[np.ndarray], data) -> None:
    labels = [data.draw(st.sampled_from([*WM811K_CLASSES, ""])) for _ in maps]
    path = write_npz(tmp_path / "maps.npz", maps, labels)
    s = load_wafer_npz(path)
    assert s.kind == "wafer" and len(s) == len(maps)
    for got, want in zip(s.images, maps):
        assert got.dtype == torch.uint8 and tuple(got.shape) == (1, *want.shape)
        assert np.array_equal(got[0].numpy(), want)
    assert s.labels == [lab or None for lab in labels]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(maps=maps_strategy(), cut=st.floats(0.0, 0.999))
def test_truncated_npz_is_a_data_error(tmp_path: Path, maps: list[np.ndarray], cut: float) -> None:
    path = write_npz(tmp_path / "maps.npz", maps, ["none"] * len(maps))
    raw = path.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(DataError, match=r"cut\.npz"):
        load_wafer_npz(bad)


def test_codes_outside_0_1_2_raise_or_skip(tmp_path: Path) -> None:
    good = np.ones((4, 4), np.uint8)
    bad = good.copy()
    bad[1, 2] = 3
    path = write_npz(tmp_path / "w.npz", [good, bad, good], ["Center", "Loc", "none"])
    with pytest.raises(DataError, match=r"w\.npz.*map 1 holds wafer code 3"):
        load_wafer_npz(path)
    s = load_wafer_npz(path, on_error="skip")
    assert len(s) == 2 and s.labels == ["Center", "none"]
    assert s.skipped == ["w.npz[1]: wafer codes outside 0/1/2"]


def test_negative_codes_are_refused(tmp_path: Path) -> None:
    maps = [np.array([[0, 1], [2, -1]], dtype=np.int16)]
    path = write_npz(tmp_path / "neg.npz", maps, ["none"])
    with pytest.raises(DataError, match="wafer code -1"):
        load_wafer_npz(path)


def test_nan_in_float_flat_is_named(tmp_path: Path) -> None:
    path = write_npz(
        tmp_path / "f.npz",
        [np.ones((2, 2))],
        ["none"],
        flat=np.array([1.0, np.nan, 0.0, 2.0]),
    )
    with pytest.raises(DataError, match=r"f\.npz.*NaN/inf"):
        load_wafer_npz(path)


def test_missing_keys_and_inconsistent_offsets(tmp_path: Path) -> None:
    p = tmp_path / "other.npz"
    np.savez(p, x=np.zeros(3))
    with pytest.raises(DataError, match=r"keys .* missing"):
        load_wafer_npz(p)
    maps = [np.ones((2, 3), np.uint8), np.ones((3, 3), np.uint8)]
    q = write_npz(tmp_path / "off.npz", maps, ["none", "none"], offsets=np.array([0, 5, 15]))
    with pytest.raises(DataError, match=r"off\.npz"):
        load_wafer_npz(q)


def test_unlabelled_keep_skip_limit_and_unknown_format(tmp_path: Path) -> None:
    maps = [np.full((3, 3), i % 3, np.uint8) for i in range(5)]
    path = write_npz(tmp_path / "u.npz", maps, ["", "Donut", "", "None", "Scratch"])
    keep = load_wafer_maps(path)
    assert keep.labels == [None, "Donut", None, "none", "Scratch"]
    skip = load_wafer_maps(path, unlabelled="skip")
    assert skip.labels == ["Donut", "none", "Scratch"]
    assert len(load_wafer_maps(path, limit=2)) == 2
    with pytest.raises(DataError, match="unknown wafer-map format"):
        load_wafer_maps(tmp_path / "maps.csv")
    with pytest.raises(DataError, match="not among the given classes"):
        load_wafer_npz(path, classes=["Donut", "none"])


@pytest.mark.realdata
def test_real_wm811k_test_split_matches_readme(wm811k_dir: Path) -> None:
    s = load_wafer_maps(wm811k_dir / "WM811K_test_data.npz")
    # class counts the data README states for this file
    assert len(s) == 12450
    assert s.class_counts() == {
        "Center": 859,
        "Donut": 111,
        "Edge-Loc": 1038,
        "Edge-Ring": 1936,
        "Loc": 719,
        "Near-full": 30,
        "Random": 173,
        "Scratch": 238,
        "none": 7346,
    }
    first = s.subset(range(200))
    heights = [int(t.shape[1]) for t in first.images]
    widths = [int(t.shape[2]) for t in first.images]
    assert min(heights) >= 22 and max(heights) <= 212
    assert min(widths) >= 15 and max(widths) <= 204
    codes = torch.cat([t.flatten() for t in first.images]).unique().tolist()
    assert codes == [0, 1, 2]
    assert all(s.meta["height"] == h for s, h in zip(first.samples, heights))


@pytest.mark.realdata
def test_real_wm811k_train_splits_have_readme_sizes(wm811k_dir: Path) -> None:
    for name, n in (("WM811K_train_1_split.npz", 623), ("WM811K_train_10_split.npz", 6225)):
        s = load_wafer_npz(wm811k_dir / name)
        assert len(s) == n
        assert Counter(s.labels).keys() <= set(WM811K_CLASSES)


# ---------------------------------------------------------------------- writer
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(maps=maps_strategy(), data=st.data())
def test_save_wafer_npz_round_trips_random_ragged_maps(
    tmp_path: Path, maps: list[np.ndarray], data
) -> None:  # type: ignore[no-untyped-def]
    labels = [data.draw(st.sampled_from([*WM811K_CLASSES, "Ring-2", "", None])) for _ in maps]
    # arrays or 1×H×W tensors, as a loaded or generated set holds them
    given_maps = [torch.from_numpy(m)[None] if i % 2 else m for i, m in enumerate(maps)]
    path = save_wafer_npz(tmp_path / "out.npz", given_maps, labels)
    back = load_wafer_maps(path, classes=[*WM811K_CLASSES, "Ring-2"])
    assert len(back) == len(maps) and back.kind == "wafer"
    for got, want in zip(back.images, maps):
        assert np.array_equal(got[0].numpy(), want)
    assert back.labels == [lab or None for lab in labels]


def test_save_wafer_npz_refuses_bad_maps_and_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "maps.npz"
    ok = np.ones((3, 4), np.uint8)
    with pytest.raises(DataError, match="2 maps but 1 labels"):
        save_wafer_npz(path, [ok, ok], ["Center"])
    with pytest.raises(DataError, match="no wafer maps"):
        save_wafer_npz(path, [], [])
    with pytest.raises(DataError, match="map 1 holds codes outside"):
        save_wafer_npz(path, [ok, ok * 3], ["Center", "Loc"])
    with pytest.raises(DataError, match=r"map 0 must be a non-empty H×W array"):
        save_wafer_npz(path, [np.ones((2, 3, 4), np.uint8)], ["Loc"])
    with pytest.raises(DataError, match="codes outside"):
        save_wafer_npz(path, [np.full((2, 2), 1.5)], ["Loc"])
    assert not path.exists()  # nothing half-written
    save_wafer_npz(path, [ok], ["Center"])
    save_wafer_npz(path, [ok * 2, ok], ["Loc", "none"])
    again = load_wafer_npz(path)
    assert again.labels == ["Loc", "none"] and int(again.images[0].max()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["maps.npz"]  # no temporary files left
