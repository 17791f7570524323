"""Image-folder, MVTec AD and magnetic-tile loaders: layouts, bad files, real tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inspectkit.errors import DataError
from inspectkit.records import LazyImages
from inspectkit.sources import load_image_folder, load_magnetic_tile, load_mvtec
from inspectkit.sources._common import read_image


def save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def gray(h: int, w: int, value: int = 0) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def make_folder(root: Path) -> Path:
    save(root / "ok" / "a.png", gray(8, 10, 1))
    save(root / "ok" / "b.png", gray(8, 10, 2))
    save(root / "scratch" / "c.png", gray(8, 10, 3))
    return root


def test_image_folder_labels_pixels_and_ids(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    s = load_image_folder(root)
    assert s.classes == ["ok", "scratch"]
    assert s.ids == ["ok/a.png", "ok/b.png", "scratch/c.png"]
    assert s.labels == ["ok", "ok", "scratch"]
    assert s.images.shape == (3, 1, 8, 10) and s.images.dtype == torch.uint8
    assert np.array_equal(s.images[2, 0].numpy(), gray(8, 10, 3))
    rgb = load_image_folder(root, channels=3)
    assert rgb.images.shape == (3, 3, 8, 10)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_colour_files_become_rgb_and_ragged_sizes_stay_a_list(tmp_path: Path) -> None:
    root = tmp_path / "p"
    colour = np.zeros((6, 5, 3), np.uint8)
    colour[..., 0] = 200
    save(root / "x" / "c.png", colour)
    save(root / "x" / "d.png", np.dstack([gray(9, 4)] * 3))
    s = load_image_folder(root)
    assert isinstance(s.images, list) and [tuple(t.shape) for t in s.images] == [
        (3, 6, 5),
        (3, 9, 4),
    ]
    assert int(s.images[0][0, 0, 0]) == 200 and int(s.images[0][1, 0, 0]) == 0


def test_unknown_class_folder_raises_or_is_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    with pytest.raises(DataError, match=r"scratch: unknown class name 'scratch'"):
        load_image_folder(root, classes=["ok", "dent"])
    s = load_image_folder(root, classes=["ok", "dent"], on_error="skip")
    assert s.classes == ["ok", "dent"] and s.labels == ["ok", "ok"]
    assert len(s.skipped) == 1 and "unknown class name 'scratch'" in s.skipped[0]


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "ok").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images found"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nowhere")


def test_corrupt_and_truncated_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    (root / "ok" / "junk.png").write_bytes(b"this is not an image")
    save(root / "ok" / "whole.jpg", gray(64, 64, 5))
    raw = (root / "ok" / "whole.jpg").read_bytes()
    (root / "ok" / "trunc.jpg").write_bytes(raw[: len(raw) // 2])
    (root / "ok" / "whole.jpg").unlink()
    with pytest.raises(DataError, match=r"junk\.png: not a readable image"):
        load_image_folder(root)
    s = load_image_folder(root, on_error="skip")
    assert s.ids == ["ok/a.png", "ok/b.png", "scratch/c.png"]
    reasons = sorted(s.skipped)
    assert "junk.png: not a readable image" in reasons[0]
    assert "trunc.jpg: corrupt or truncated image" in reasons[1]


def test_float_image_with_nan_is_refused(tmp_path: Path) -> None:
    arr = np.ones((4, 4), np.float32)
    arr[1, 1] = np.nan
    path = tmp_path / "f" / "x" / "nan.tif"
    save(path, arr, "TIFF")
    with pytest.raises(DataError, match=r"nan\.tif: float image holds 1 NaN/inf"):
        read_image(path)
    fine = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    save(path, fine, "TIFF")
    t = read_image(path)
    assert t.dtype == torch.float32 and torch.allclose(t[0], torch.from_numpy(fine))


def test_lazy_folder_decodes_on_demand_and_names_bad_files_then(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "parts")
    s = load_image_folder(root, lazy=True)
    assert isinstance(s.images, LazyImages) and s.is_lazy
    eager = load_image_folder(root)
    assert torch.equal(torch.stack(list(s.images)), eager.images)
    # corrupt after loading: the error surfaces, naming the file, when decoded
    raw = (root / "ok" / "b.png").read_bytes()
    (root / "ok" / "b.png").write_bytes(raw[:40])
    with pytest.raises(DataError, match=r"b\.png"):
        s.materialize()


def make_mvtec(root: Path) -> Path:
    cat = root / "bottle"
    for i in range(3):
        save(cat / "train" / "good" / f"{i:03d}.png", np.dstack([gray(12, 12, i)] * 3))
    save(cat / "test" / "good" / "000.png", np.dstack([gray(12, 12, 10)] * 3))
    for i, d in enumerate(["broken", "contamination"]):
        save(cat / "test" / d / "000.png", np.dstack([gray(12, 12, 20 + i)] * 3))
        mask = np.zeros((12, 12), np.uint8)
        mask[2:5, 3:7] = 255
        save(cat / "ground_truth" / d / "000_mask.png", mask)
    return root


def test_mvtec_train_and_test(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    train = load_mvtec(root, "bottle", split="train")
    assert len(train) == 3 and set(train.labels) == {"good"}
    assert all(s.split == "train" for s in train.samples)
    assert int(train.masks.sum()) == 0
    test = load_mvtec(root / "bottle", split="test")
    assert test.classes == ["good", "broken", "contamination"]
    assert sorted(test.labels) == ["broken", "contamination", "good"]
    assert test.images.shape == (3, 3, 12, 12) and test.masks.shape == (3, 1, 12, 12)
    by_label = dict(zip(test.labels, test.masks))
    assert int(by_label["good"].sum()) == 0
    assert int(by_label["broken"].sum()) == 12 and set(by_label["broken"].unique().tolist()) == {
        0,
        1,
    }
    assert [s.meta["anomalous"] for s in test.samples] == [lab != "good" for lab in test.labels]
    lazy = load_mvtec(root, "bottle", split="test", lazy=True).materialize()
    assert torch.equal(lazy.masks, test.masks) and torch.equal(lazy.images, test.images)


def test_mvtec_missing_mask_and_bad_split(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "broken" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"broken/000\.png: its mask .* is missing"):
        load_mvtec(root, "bottle", split="test")
    s = load_mvtec(root, "bottle", split="test", on_error="skip")
    assert "broken" not in s.labels and len(s.skipped) == 1
    with pytest.raises(DataError, match="split must be"):
        load_mvtec(root, "bottle", split="val")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not found"):
        load_mvtec(root, "cable")


def make_tiles(root: Path) -> Path:
    for cls, sizes in (("Free", [(20, 30), (22, 30)]), ("Crack", [(25, 18)])):
        for i, (h, w) in enumerate(sizes):
            save(root / f"MT_{cls}" / "Imgs" / f"exp{i}.jpg", gray(h, w, i))
            mask = np.zeros((h, w), np.uint8)
            if cls != "Free":
                mask[5:9, 4:6] = 255
                mask[10, 10] = 100  # soft edge below 128: not defect
            save(root / f"MT_{cls}" / "Imgs" / f"exp{i}.png", mask)
    return root


def test_magnetic_tile_layout(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "mt")
    s = load_magnetic_tile(root)
    assert s.classes == ["Crack", "Free"] and s.class_counts() == {"Crack": 1, "Free": 2}
    assert isinstance(s.images, list)
    for img, mask in zip(s.images, s.masks):
        assert img.dtype == torch.uint8 and img.shape[0] == 1
        assert mask.shape == img.shape and mask.dtype == torch.uint8
    crack = s.labels.index("Crack")
    assert int(s.masks[crack].sum()) == 8 and s.samples[crack].meta["anomalous"] is True
    only = load_magnetic_tile(root, classes=["Free"], limit_per_class=1)
    assert only.ids == ["Free/exp0"]
    with pytest.raises(DataError, match=r"unknown class name\(s\) \['Blowhole'\]"):
        load_magnetic_tile(root, classes=["Blowhole"])


def test_magnetic_tile_mask_size_mismatch_and_missing_mask(tmp_path: Path) -> None:
    root = make_tiles(tmp_path / "mt")
    save(root / "MT_Crack" / "Imgs" / "exp0.png", np.zeros((7, 7), np.uint8))
    with pytest.raises(
        DataError, match=r"exp0\.png: mask is 7x7 .* but its image exp0\.jpg is 25x18"
    ):
        load_magnetic_tile(root)
    with pytest.raises(DataError, match=r"exp0\.png: mask is 7x7"):
        load_magnetic_tile(root, lazy=True)  # checked from headers, before any decoding
    (root / "MT_Free" / "Imgs" / "exp1.png").unlink()
    s = load_magnetic_tile(root, on_error="skip")
    assert s.ids == ["Free/exp0"] and len(s.skipped) == 2
    assert any("its mask exp1.png is missing" in x for x in s.skipped)


@pytest.mark.realdata
def test_real_magnetic_tile_two_classes(magnetic_tile_dir: Path) -> None:
    s = load_magnetic_tile(magnetic_tile_dir, classes=["Fray", "Crack"])
    # counts of the data README
    assert s.class_counts() == {"Fray": 32, "Crack": 57}
    assert not s.skipped
    for img, mask in zip(s.images, s.masks):
        assert img.dtype == torch.uint8 and img.shape[0] == 1
        assert mask.shape == img.shape and set(mask.unique().tolist()) <= {0, 1}
        assert 103 <= img.shape[1] <= 632 and 103 <= img.shape[2] <= 632
    # every Fray/Crack mask marks some defect pixels
    assert all(int(m.sum()) > 0 for m in s.masks)
    free = load_magnetic_tile(magnetic_tile_dir, classes=["Free"], limit_per_class=20, lazy=True)
    assert len(free) == 20 and all(int(m.sum()) == 0 for m in free.masks)
