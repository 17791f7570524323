"""Helpers shared by the archive-run tests: models, real-data subsets, the single-process
reference rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1.0"
#: A real wafer classifier (saved by inspectkit 0.1.0, format 1).
WAFER_MODEL = LEGACY / "wafer-classifier"


def padim_model(magnetic_tile_dir: Path, out: Path) -> Path:
    """A small PaDiM detector fitted on 40 good magnetic tiles, saved at ``out``."""
    from inspectkit import Pipeline
    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.sources import load

    good = load(magnetic_tile_dir, purpose="train", task="anomaly", limit=40)
    stage = AnomalyDetector(method="padim", size=64, progress=False, options={"n_features": 24})
    Pipeline([stage]).fit(good).save(out)
    return out


def tile_subset(magnetic_tile_dir: Path, root: Path, per_class: int) -> Path:
    """A magnetic-tile layout (``MT_<class>/Imgs/NAME.jpg`` + ``NAME.png`` masks) of
    links to the first ``per_class`` images of each class."""
    for cls in sorted(p for p in magnetic_tile_dir.iterdir() if p.name.startswith("MT_")):
        dest = root / cls.name / "Imgs"
        dest.mkdir(parents=True)
        for jpg in sorted((cls / "Imgs").glob("*.jpg"))[:per_class]:
            (dest / jpg.name).symlink_to(jpg)
            mask = jpg.with_suffix(".png")
            if mask.exists():
                (dest / mask.name).symlink_to(mask)
    return root


def reference_rows(model: Path, inputs: list[str], batch_size: int) -> dict[tuple[str, int], Any]:
    """Single-process ``Pipeline.run`` (through ``iter_run``, ``batch_size`` at a time, as
    ``inspectkit predict`` reads the inputs): per ``(absolute path, index)`` the record's
    raw values and ``inspectkit predict --json``'s row."""
    from inspectkit.cli.card import load_model
    from inspectkit.cli.predict import prediction_rows
    from inspectkit.sources import load_inputs

    pipe, card = load_model(model)
    data = load_inputs(inputs, channels=card.get("channels"), kind=card["kind"])
    rows: dict[tuple[str, int], Any] = {}
    for res in pipe.iter_run(data, batch_size=batch_size):
        json_rows = prediction_rows(res, card["task"])
        for i, s in enumerate(res.samples):
            index = s.meta.get("index", -1) if card["kind"] == "wafer" else -1
            raw: dict[str, Any] = {"id": s.id, "json": json_rows[i]}
            if card["task"] == "classify":
                raw["probs"] = dict(zip(res.classes, res.probs[i].double().tolist()))
                raw["predicted"] = res.predicted[i]
            else:
                raw["score"] = float(res.scores[i].double())
                raw["normalized"] = float(res.normalized[i].double())
                raw["anomalous"] = bool(res.is_anomalous[i])
            rows[(os.path.abspath(s.source), index)] = raw
    return rows


#: Relative difference allowed between a row and the reference (float32 rounding).
REL = 1e-5


def key_of(row: dict[str, Any]) -> tuple[str, int]:
    return (row["path"], -1 if row["index"] is None else row["index"])


def assert_rows_equal(rows: list[dict[str, Any]], expected: dict[tuple[str, int], Any]) -> None:
    """Each expected input has exactly one row, with the reference's verdict and class, and
    its scores and probabilities up to float32 rounding (``REL``): a worker's batch and
    thread count are not the reference's, and CPU kernels sum in another order for them."""
    keys = [key_of(r) for r in rows]
    assert len(keys) == len(set(keys)), "an input has more than one row"
    assert set(keys) == set(expected)
    for r in rows:
        ref = expected[key_of(r)]
        assert r["error"] is None, r["error"]
        assert r["id"] == ref["id"]
        if "probs" in ref:
            assert dict(r["probs"]) == pytest.approx(ref["probs"], rel=REL, abs=1e-7)
            assert r["predicted"] == ref["predicted"] == ref["json"]["predicted"]
            assert r["verdict"] == (ref["predicted"] if ref["predicted"] is not None else "review")
            assert r["probability"] == pytest.approx(ref["json"]["probability"], abs=2e-6)
        else:
            assert r["score"] == pytest.approx(ref["score"], rel=REL)
            assert r["normalized"] == pytest.approx(ref["normalized"], rel=REL, abs=1e-6)
            assert r["score"] == pytest.approx(ref["json"]["score"], rel=REL, abs=2e-6)
            assert (r["verdict"] == "defect") == ref["anomalous"] == ref["json"]["anomalous"]
            # the region boxes of predict's rows; a map pixel within float rounding of the
            # region line may fall either side in another batch, so an edge may move
            assert len(r["regions"]) == len(ref["json"]["regions"])
            for a, b in zip(r["regions"], ref["json"]["regions"]):
                assert max(abs(x - y) for x, y in zip(a, b)) <= 2, (a, b)


def part_rows(out: Path) -> dict[str, int]:
    """Rows per part file under ``out``."""
    return {p.name: pq.read_metadata(p).num_rows for p in sorted(out.glob("part-*.parquet"))}
