"""DeepPCB layout: templates good, tested images defective with boxes, designs as groups;
a tiled detector per design on a small real subset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import find_data_root

from inspectkit import sources
from inspectkit.errors import DataError
from inspectkit.sources.deeppcb import DEFECT_TYPES, is_deeppcb, load_deeppcb


@pytest.fixture(scope="module")
def deeppcb_dir() -> Path:
    root = find_data_root()
    if root is None or not (root / "deeppcb").is_dir():
        pytest.skip("deeppcb not found: set INSPECTKIT_DATA or place it in ../shared/data")
    return root / "deeppcb"


def fake_tree(root: Path, lines: str = "10 10 30 30 1\n") -> Path:
    """A one-pair DeepPCB tree with tiny blank images."""
    from PIL import Image

    pair = root / "PCBData" / "group12345" / "12345"
    notes = root / "PCBData" / "group12345" / "12345_not"
    pair.mkdir(parents=True)
    notes.mkdir()
    for name in ("12345000_temp.jpg", "12345000_test.jpg"):
        Image.new("L", (64, 64), 255).save(pair / name)
    (notes / "12345000.txt").write_text(lines)
    return root


def test_layout_reads_pairs_boxes_and_designs(tmp_path):
    root = fake_tree(tmp_path / "pcb", "10 10 30 30 1\n5 6 9 12 6\n")
    assert is_deeppcb(root) and sources.detect(root) == "deeppcb"
    data = load_deeppcb(root)
    assert [s.meta["role"] for s in data.samples] == ["template", "tested"]
    assert [s.label for s in data.samples] == ["good", "defect"]
    assert {s.group for s in data.samples} == {"12345"}
    assert data.boxes[0] == [] and [b.label for b in data.boxes[1]] == ["open", "pin_hole"]
    assert tuple(data.materialize().images.shape) == (2, 1, 64, 64)
    train = sources.load(root, task="anomaly")  # a training set keeps the templates
    assert [s.meta["role"] for s in train.samples] == ["template"]
    assert len(sources.load(root, purpose="predict")) == 2


def test_bad_annotations_and_folders_are_named(tmp_path):
    root = fake_tree(tmp_path / "pcb", "10 10 thirty 30 1\n")
    with pytest.raises(DataError, match=r"12345000\.txt.*line 1"):
        load_deeppcb(root)
    root2 = fake_tree(tmp_path / "pcb2", "10 10 30 30 9\n")
    with pytest.raises(DataError, match="unknown defect type 9"):
        load_deeppcb(root2)
    with pytest.raises(DataError, match=r"unknown design\(s\) \['99999'\]"):
        load_deeppcb(fake_tree(tmp_path / "pcb3"), designs=["99999"])
    (tmp_path / "pcb3" / "PCBData" / "group12345" / "12345_not" / "12345000.txt").unlink()
    skipped = load_deeppcb(fake_tree(tmp_path / "pcb4"), on_error="skip")
    assert len(skipped) == 2
    shutil.rmtree(tmp_path / "pcb4" / "PCBData" / "group12345" / "12345_not")
    with pytest.raises(DataError, match="incomplete"):
        load_deeppcb(tmp_path / "pcb4")


@pytest.mark.realdata
def test_real_subset_loads_with_its_boxes(deeppcb_dir):
    data = load_deeppcb(deeppcb_dir, designs=["00041", "13000"], limit=3)
    assert len(data) == 12 and {s.group for s in data.samples} == {"00041", "13000"}
    tested = [i for i, s in enumerate(data.samples) if s.meta["role"] == "tested"]
    assert all(3 <= len(data.boxes[i]) <= 12 for i in tested)
    assert {b.label for i in tested for b in data.boxes[i]} <= set(DEFECT_TYPES.values())
    assert tuple(data.subset([0]).materialize().images.shape) == (1, 1, 640, 640)


@pytest.mark.realdata
def test_tiled_detector_per_design_on_real_boards(deeppcb_dir):
    from inspectkit.anomaly import AnomalyDetector

    data = load_deeppcb(deeppcb_dir, designs=["00041", "44000"], limit=8).materialize()
    firsts: dict[str, list[str]] = {}
    for s in data.samples:  # the first 5 pairs of each design train, the other 3 test
        pairs = firsts.setdefault(s.group, [])
        if s.meta["pair"] not in pairs:
            pairs.append(s.meta["pair"])
    pair = [firsts[s.group].index(s.meta["pair"]) for s in data.samples]
    fit = data.subset([i for i, s in enumerate(data.samples)
                       if s.meta["role"] == "template" and pair[i] < 5])  # fmt: skip
    test = data.subset([i for i in range(len(data)) if pair[i] >= 5])
    det = AnomalyDetector(
        method="patchcore", tile=160, group_by="group", calibration_fraction=0.2,
        options={"coreset_ratio": 0.05, "max_bank_size": 4096}, progress=False, device="cpu",
    ).fit(fit)  # fmt: skip
    assert sorted(det.products) == ["00041", "44000"]
    res = det.run(test)
    assert tuple(res.maps.shape) == (len(test), 640, 640)  # at native resolution
    bad = torch.tensor([s.meta["role"] == "tested" for s in res.samples])
    assert float(res.scores[bad].mean()) > float(res.scores[~bad].mean())
