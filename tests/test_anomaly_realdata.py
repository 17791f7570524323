"""Good-only detection on real magnetic tiles (small subset, random-init weights)."""

from __future__ import annotations

import pytest

from inspectkit.anomaly import AnomalyDetector
from inspectkit.metrics import image_auroc
from inspectkit.records import ImageSet
from inspectkit.sources import load_magnetic_tile


@pytest.mark.realdata
def test_defective_tiles_score_higher_than_good_ones(magnetic_tile_dir):
    free = load_magnetic_tile(magnetic_tile_dir, classes=["Free"], limit_per_class=32)
    bad = load_magnetic_tile(
        magnetic_tile_dir, classes=["Blowhole", "Break", "Crack", "Uneven"], limit_per_class=3
    )
    train, good = free.subset(range(20)), free.subset(range(20, 32))
    # the ragged tiles (different sizes) are resized by the stage; defects in fit are refused
    det = AnomalyDetector(
        method="autoencoder",
        size=96,
        options={"epochs": 15, "batch_size": 8},
        calibration_fraction=0,
        progress=False,
        device="cpu",
    ).fit(train)
    res = det.run(ImageSet.concat([good, bad]))
    g, b = res.scores[: len(good)], res.scores[len(good) :]
    assert float(b.mean()) > float(g.mean())
    assert image_auroc(res) > 0.6
    assert tuple(res.maps.shape) == (len(good) + len(bad), 96, 96)
