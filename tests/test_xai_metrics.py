"""Explanation metrics against hand-computed values, and heatmap overlays on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from inspectkit.errors import ConfigError, DataError
from inspectkit.records import Box, Explained, SampleMeta
from inspectkit.xai import (
    boxes_to_mask,
    deletion_auc,
    energy_pointing_game,
    explanation_report,
    insertion_auc,
    jet,
    mask_l1,
    overlay,
    write_overlays,
)


def test_ebpg_and_mask_l1_by_hand():
    h = torch.tensor([[[0.5, 0.5], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    gt = torch.tensor([[[1, 0], [0, 1]], [[1, 1], [0, 0]]], dtype=torch.uint8)
    # image 0: energy 2.0, inside 0.5 + 1.0 -> 0.75; image 1: no energy -> 0
    assert energy_pointing_game(h, gt).tolist() == [0.75, 0.0]
    # |h - gt|: image 0: (0.5 + 0.5 + 0 + 0) / 4; image 1: (1 + 1) / 4
    assert mask_l1(h, gt).tolist() == [0.25, 0.5]
    # N×1×H×W masks and bool masks give the same
    assert energy_pointing_game(h[:, None], gt[:, None].bool()).tolist() == [0.75, 0.0]


def test_boxes_to_mask_and_box_ground_truth():
    boxes = [
        Box(label="d", xmin=0.5, ymin=1, xmax=2, ymax=3),
        Box(label="d", xmin=3, ymin=0, xmax=9, ymax=1),
    ]
    m = boxes_to_mask(boxes, (4, 4))
    expected = torch.tensor(
        [[0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
    h = torch.zeros(1, 4, 4)
    h[0, 1, 0] = 1.0
    h[0, 3, 3] = 1.0
    assert energy_pointing_game(h, [boxes]).tolist() == [0.5]
    assert mask_l1(h, [boxes]).item() == pytest.approx((5 - 1 + 1) / 16)


def test_metric_inputs_are_checked():
    h = torch.rand(2, 4, 4)
    gt = torch.ones(2, 4, 4)
    with pytest.raises(DataError, match=r"\(5, 5\) but heatmaps \(4, 4\)"):
        energy_pointing_game(h, torch.ones(2, 5, 5))
    with pytest.raises(DataError, match="3 ground-truth masks for 2 heatmaps"):
        mask_l1(h, torch.ones(3, 4, 4))
    empty = gt.clone()
    empty[1] = 0
    with pytest.raises(DataError, match=r"image\(s\) \[1\] is empty"):
        energy_pointing_game(h, empty)
    with pytest.raises(DataError, match="no ground-truth boxes"):
        energy_pointing_game(h, [[Box(label="d", xmin=0, ymin=0, xmax=2, ymax=2)], []])
    with pytest.raises(DataError, match="lies outside"):
        boxes_to_mask([Box(label="d", xmin=10, ymin=10, xmax=12, ymax=12)], (4, 4))
    with pytest.raises(DataError, match="normalise"):
        mask_l1(h * 3, gt)
    with pytest.raises(DataError, match="non-negative"):
        energy_pointing_game(h - 1, gt)
    with pytest.raises(DataError, match="N×H×W"):
        mask_l1(torch.rand(4, 4), gt)
    with pytest.raises(DataError, match="NaN"):
        mask_l1(torch.full((2, 4, 4), float("nan")), gt)


class MeanProb(nn.Module):
    """Probability of class 0 = mean pixel value (inputs in [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([m.log(), (1 - m).log()], 1)


def test_deletion_and_insertion_auc_by_hand():
    x = torch.tensor([0.8, 0.4, 0.2, 0.0]).reshape(1, 1, 2, 2)
    good = torch.tensor([1.0, 0.5, 0.25, 0.0]).reshape(1, 2, 2)
    bad = good.flip(-1).flip(-2)
    model = MeanProb()
    # deletion, best order: p = .35, .15, .05, 0, 0 -> trapezoid over 4 steps
    d_good = deletion_auc(model, x, good, target=0, steps=4)
    assert d_good.item() == pytest.approx((0.35 + 0.15 + 0.05 - 0.35 / 2) / 4, abs=1e-6)
    d_bad = deletion_auc(model, x, bad, target=0, steps=4)
    assert d_bad.item() == pytest.approx((0.35 + 0.35 + 0.30 + 0.20 - 0.35 / 2) / 4, abs=1e-6)
    # insertion onto a black canvas, best order: p = 0, .2, .3, .35, .35
    i_good = insertion_auc(model, x, good, target=0, steps=4, baseline=0.0)
    assert i_good.item() == pytest.approx((0.2 + 0.3 + 0.35 + 0.35 / 2) / 4, abs=1e-6)
    assert insertion_auc(model, x, bad, target=0, steps=4, baseline=0.0).item() < i_good.item()
    # the other class mirrors it; predicted target (class 1 here) is the default
    d1 = deletion_auc(model, x, good, target=1, steps=4)
    assert d1.item() == pytest.approx(1 - d_good.item(), abs=1e-6)
    assert deletion_auc(model, x, good, steps=4).item() == pytest.approx(d1.item(), abs=1e-9)
    # batched = one at a time; the default blurred canvas works
    xs, hs = torch.cat([x, x]), torch.cat([good, bad])
    both = deletion_auc(model, xs, hs, target=0, steps=4, batch_size=2)
    assert torch.allclose(both, torch.cat([d_good, d_bad]))
    assert insertion_auc(model, torch.rand(2, 1, 16, 16), torch.rand(2, 16, 16), steps=8).shape == (
        2,
    )


def test_causal_metric_inputs_are_checked():
    model = MeanProb()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(DataError, match="out of range"):
        deletion_auc(model, x, torch.rand(2, 4, 4), target=5)
    with pytest.raises(DataError, match="must match"):
        deletion_auc(model, x, torch.rand(2, 5, 5))
    with pytest.raises(ConfigError, match="steps"):
        insertion_auc(model, x, torch.rand(2, 4, 4), steps=0)


def _explained(n: int = 3, size: int = 8, with_masks: bool = True) -> Explained:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[:, :, 2:5, 2:5] = 1
    masks[-1] = 0  # one image without a defect region
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])[:n]
    return Explained(
        images=torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8),
        masks=masks if with_masks else None,
        samples=[SampleMeta(id=f"img/{i}", label="crack") for i in range(n)],
        classes=["crack", "ok"],
        probs=probs,
        predicted=["crack", "ok", None][:n],
        heatmaps=masks[:, 0].float() * 0.5,
        method="gradcam",
        target_classes=[0, 1, 0][:n],
    )


def test_explanation_report_uses_masks_and_skips_images_without_defect():
    rep = explanation_report(_explained())
    assert rep.counts == {"scored": 2, "without_ground_truth": 1}
    assert rep.metrics["ebpg"] == pytest.approx(1.0)
    assert rep.metrics["mask_l1"] == pytest.approx(9 * 0.5 / 64)
    with pytest.raises(DataError, match="no masks or boxes"):
        explanation_report(_explained(with_masks=False))


def test_jet_and_overlay():
    lut = jet(np.linspace(0, 1, 5))
    assert lut.shape == (5, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 128] and lut[-1].tolist() == [128, 0, 0]
    assert lut[2].tolist() == [128, 255, 128]  # green in the middle
    img = torch.zeros(1, 4, 6, dtype=torch.uint8)
    hm = torch.zeros(2, 3)
    hm[0, 0] = 1.0
    out = overlay(img, hm, alpha=1.0)
    assert out.size == (6, 4) and out.mode == "RGB"
    arr = np.asarray(out)
    assert arr[0, 0].tolist() == [128, 0, 0]  # hot corner is red after upsampling
    assert arr[3, 5].tolist() == [0, 0, 128]  # cold corner is blue
    assert np.asarray(overlay(img, hm, alpha=0.0)).max() == 0
    with pytest.raises(DataError, match="alpha"):
        overlay(img, hm, alpha=2)


def test_write_overlays(tmp_path):
    ex = _explained()
    paths = write_overlays(ex, tmp_path / "ov")
    assert [p.name for p in paths] == [
        "00000_img_0_crack_0.90.png",
        "00001_img_1_ok_0.80.png",
        "00002_img_2_review_0.60.png",
    ]
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (8, 8) and im.mode == "RGB"
    side = json.loads((tmp_path / "ov" / "overlays.json").read_text())
    assert side["method"] == "gradcam"
    assert side["overlays"][1] == {
        "file": "00001_img_1_ok_0.80.png",
        "id": "img/1",
        "label": "crack",
        "predicted": "ok",
        "probability": pytest.approx(0.8),
        "explained_class": "ok",
        "explained_probability": pytest.approx(0.8),
        "method": "gradcam",
    }
    assert not [p for p in (tmp_path / "ov").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_overlays(ex, tmp_path / "file")


def test_metrics_are_reachable_from_inspectkit_metrics():
    import inspectkit.metrics as m

    assert m.energy_pointing_game is energy_pointing_game
    assert m.explanation_report is explanation_report


@pytest.mark.realdata
def test_real_ground_truth_neu_boxes_and_tile_masks(neu_det_dir, magnetic_tile_dir):
    from inspectkit.sources.folders import load_magnetic_tile
    from inspectkit.sources.voc import load_voc

    neu = load_voc(neu_det_dir / "IMAGES", neu_det_dir / "ANNOTATIONS", channels=1, limit=6)
    gt = torch.stack([boxes_to_mask(b, neu.size) for b in neu.boxes])
    assert gt.shape == (6, 200, 200) and bool(gt.flatten(1).any(1).all())
    # a heatmap equal to the box mask is perfect; its complement scores 0
    assert torch.allclose(
        energy_pointing_game(gt.float(), neu.boxes), torch.ones(6, dtype=torch.float64)
    )
    assert torch.allclose(mask_l1(gt.float(), neu.boxes), torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(
        energy_pointing_game(1 - gt.float(), neu.boxes), torch.zeros(6, dtype=torch.float64)
    )
    tiles = load_magnetic_tile(magnetic_tile_dir, classes=["Blowhole", "Free"], limit_per_class=2)
    h, w = tiles.masks[0].shape[-2:]
    first = tiles.masks[0].reshape(1, h, w)
    assert float(mask_l1(first.float().clamp(0, 1), first)) == 0.0
    free = next(i for i, s in enumerate(tiles.samples) if s.label == "Free")
    fm = tiles.masks[free]
    with pytest.raises(DataError, match="empty"):  # Free tiles have no defect region
        energy_pointing_game(torch.rand(1, *fm.shape[-2:]), fm)
