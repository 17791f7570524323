"""The process-line examples run end to end in their ``--quick`` mode on the real data sets.

Each example is run as a user would run it (a subprocess), must exit 0, print its
metrics as a JSON line, save a model that loads back and write an HTML report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import inspectkit as ik

REPO = Path(__file__).resolve().parents[1]


def run_example(name: str, data_root: Path, out: Path, *extra: str) -> dict:
    env = {
        **os.environ,
        "INSPECTKIT_DATA": str(data_root),
        "INSPECTKIT_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    summary = next(
        json.loads(line) for line in reversed(proc.stdout.splitlines()) if line.startswith("{")
    )
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert json.loads((out / "report.json").read_text())["metrics"]
    ik.Pipeline.load(out / "model")  # the saved model loads back
    return summary


@pytest.mark.realdata
def test_semiconductor_wafer_line(wm811k_dir: Path, tmp_path: Path) -> None:
    s = run_example("semiconductor_wafer_line.py", wm811k_dir.parent, tmp_path)
    # nine classes: chance is 0.11; even the quick run must learn something
    assert 0.2 < s["accuracy"] <= 1 and 0 < s["macro_f1"] <= 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["synthetic_dropped"] == 0  # augmentation never reaches the test
    assert "holdout_unseen_products" in report["details"]


@pytest.mark.realdata
def test_steel_strip_line(neu_det_dir: Path, tmp_path: Path) -> None:
    s = run_example("steel_strip_line.py", neu_det_dir.parent, tmp_path)
    assert 0.3 < s["accuracy"] <= 1  # six classes: chance is 0.17
    for key in ("ebpg_gradcam", "ebpg_sise"):
        assert 0 < s[key] <= 1


@pytest.mark.realdata
def test_magnetic_tile_line(magnetic_tile_dir: Path, tmp_path: Path) -> None:
    s = run_example("magnetic_tile_line.py", magnetic_tile_dir.parent, tmp_path)
    assert 0.5 < s["image_auroc"] <= 1
    assert 0 <= s["pixel_auroc"] <= 1 and 0 <= s["aupro"] <= 1
    assert len(list((tmp_path / "anomaly_maps").glob("*.png"))) == 12


@pytest.mark.realdata
def test_new_product_continual(wm811k_dir: Path, tmp_path: Path) -> None:
    s = run_example("new_product_continual.py", wm811k_dir.parent, tmp_path)
    assert 0 < s["final_avg_accuracy"] <= 1
    assert -1 <= s["bwt"] <= 1 and -1 <= s["forgetting"] <= 1
    report = json.loads((tmp_path / "report.json").read_text())
    matrix = report["details"]["accuracy_matrix"]["matrix"]
    assert len(matrix) == 4 and all(len(r) == 4 for r in matrix)
    assert matrix[0][1] is None and matrix[3][3] is not None  # lower-triangular R[t, i]
    loaded = ik.Pipeline.load(tmp_path / "model")
    assert len(loaded.stages[-1].classes) == 9  # learned every new defect type


@pytest.mark.realdata
def test_new_product_continual_on_new_die_sizes(wm811k_dir: Path, tmp_path: Path) -> None:
    s = run_example("new_product_continual.py", wm811k_dir.parent, tmp_path, "--stream", "domain")
    assert 0.2 < s["final_avg_accuracy"] <= 1  # nine classes: chance is 0.11
    report = json.loads((tmp_path / "report.json").read_text())
    matrix = report["details"]["accuracy_matrix"]
    assert matrix["columns"] == ["small", "medium", "large"]
    assert matrix["matrix"][0][1] is None and matrix["matrix"][2][2] is not None
    stage = ik.Pipeline.load(tmp_path / "model").stages[-1]
    assert stage.config.quotas == "proportional" and stage.buffer.quotas == "proportional"
    assert len(stage.buffer) == 60  # the quick run's memory, filled
