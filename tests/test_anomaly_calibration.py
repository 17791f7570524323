"""One calibration object: threshold, normalisation, the rule and rate it was set at, and
what a saved model says about it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import torch
from anomaly_support import flat_parts
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector, Calibration, verdict
from inspectkit.anomaly.stage import STATE_VERSION
from inspectkit.errors import DataError, PersistenceError
from inspectkit.records import ImageSet

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1.0" / "anomaly-autoencoder"

scores_st = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=300
)
rates = st.floats(1e-3, 0.999)


def _tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------------- the object
@settings(max_examples=200, deadline=None)
@given(scores=scores_st, rate=rates)
def test_threshold_flags_at_most_the_rate_of_the_calibration_goods(scores, rate):
    s = _tensor(scores)
    cal = Calibration.at_false_alarm_rate(s, rate)
    flagged = int(cal.verdict(s).sum())
    assert flagged <= rate * s.numel() + 1e-9
    if len(set(scores)) == len(scores):  # without ties the rate is met as closely as n allows
        assert flagged == int(rate * s.numel() + 1e-9)
    assert cal.rule == "false_alarm_rate" and cal.false_alarm_rate == pytest.approx(rate)
    assert cal.n_good == s.numel()
    assert cal.low <= cal.threshold < cal.high


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, rate=rates, probes=scores_st)
def test_normalisation_is_monotone_and_puts_the_threshold_at_one_half(scores, rate, probes):
    cal = Calibration.at_false_alarm_rate(_tensor(scores), rate)
    x = _tensor(sorted(probes + scores))
    out = cal.normalize(x)
    assert out.dtype == torch.float32
    assert bool((out[1:] >= out[:-1]).all())  # monotone
    assert bool(((out >= 0) & (out <= 1)).all())
    assert float(cal.normalize(torch.tensor([cal.threshold], dtype=torch.float64))[0]) == 0.5
    assert torch.equal(out > 0.5, cal.verdict(x))  # above one half exactly when flagged
    if cal.low < cal.threshold:
        assert float(cal.normalize(torch.tensor([cal.low], dtype=torch.float64))[0]) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=2, max_size=100),
    data=st.data(),
)
def test_state_round_trip(scores, data):
    s = _tensor(scores)
    bad = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s))))
    cals = [Calibration.at_false_alarm_rate(s, data.draw(rates))]
    if bad.any() and not bad.all():
        cals.append(Calibration.f1_optimal(s, bad))
    for cal in cals:
        assert Calibration.from_state(cal.to_state()) == cal
        buffer = io.BytesIO()  # the way a saved stage state travels
        torch.save({"calibration": cal.to_state()}, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)["calibration"]
        assert Calibration.from_state(state) == cal


def test_f1_calibration_records_its_rule_and_separates_labelled_defects():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8])
    bad = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    cal = Calibration.f1_optimal(scores, bad)
    assert torch.equal(cal.verdict(scores), bad.bool())
    assert (cal.rule, cal.false_alarm_rate, cal.n_good) == ("f1", None, 4)
    assert cal.high >= 0.8 and cal.low == pytest.approx(0.1)


def test_verdict_is_score_above_threshold_in_float64():
    assert verdict(torch.tensor([0.5, 0.5000001]), 0.5).tolist() == [False, True]
    # a threshold between two float32 values: compared exactly, not after float32 rounding
    x = torch.tensor([0.1], dtype=torch.float32)  # 0.100000001490116...
    assert verdict(x, 0.1).tolist() == [True]


def test_bad_calibrations_are_refused():
    with pytest.raises(DataError, match="finite"):
        Calibration(float("nan"), 0.0, 1.0)
    with pytest.raises(DataError, match="rule"):
        Calibration(0.5, 0.0, 1.0, rule="median")
    with pytest.raises(DataError, match="lacks"):
        Calibration.from_state({"threshold": 0.5})
    with pytest.raises(DataError, match="no good scores"):
        Calibration.at_false_alarm_rate(torch.zeros(0), 0.1)


# ---------------------------------------------------------------------- in the stage
def parts(n: int, seed: int, defect: bool = False) -> ImageSet:
    return flat_parts(n, seed, defect, noise=0.03)


@pytest.fixture(scope="module")
def fitted() -> AnomalyDetector:
    det = AnomalyDetector(
        method="padim",
        size=32,
        options={"n_features": 16},
        calibration_fraction=0.25,
        target_false_alarm_rate=0.2,
        progress=False,
        device="cpu",
    )
    return det.fit(parts(24, 0))


def copy_of(det: AnomalyDetector) -> AnomalyDetector:
    again = AnomalyDetector(**det.config.model_dump())
    again.set_state(det.get_state())
    return again


def saved_and_loaded(det: AnomalyDetector, folder: Path) -> tuple[dict, AnomalyDetector]:
    Pipeline([det]).save(folder)
    config = json.loads((folder / "pipeline.json").read_text())["stages"][0]["config"]
    return config, Pipeline.load(folder).stages[0]


def test_fit_calibration_is_saved_with_the_model(fitted, tmp_path):
    cal = fitted.calibration
    assert cal is not None and fitted.threshold == cal.threshold
    assert (cal.rule, cal.false_alarm_rate, cal.n_good) == ("false_alarm_rate", 0.2, 6)
    state = fitted.get_state()
    assert state["version"] == STATE_VERSION and state["calibration"] == cal.to_state()
    config, loaded = saved_and_loaded(fitted, tmp_path / "model")
    assert loaded.calibration == cal
    assert config["target_false_alarm_rate"] == cal.false_alarm_rate


def test_calibrate_at_a_rate_is_the_rate_the_saved_model_states(fitted, tmp_path):
    det = copy_of(fitted)
    goods = parts(40, 5)
    det.calibrate(goods, target_false_alarm_rate=0.1)
    cal = det.calibration
    assert (cal.rule, cal.false_alarm_rate, cal.n_good) == ("false_alarm_rate", 0.1, 40)
    assert det.config.target_false_alarm_rate == 0.1
    assert int(det.run(goods).is_anomalous.sum()) <= 0.1 * 40
    config, loaded = saved_and_loaded(det, tmp_path / "model")
    assert config["target_false_alarm_rate"] == 0.1  # pipeline.json says the rate it was set at
    assert loaded.calibration == cal
    assert loaded.config.target_false_alarm_rate == 0.1
    assert fitted.config.target_false_alarm_rate == 0.2  # the copy's calibration only


def test_a_config_rate_changed_after_calibration_is_reported_on_load(fitted, tmp_path, caplog):
    pipe = Pipeline([copy_of(fitted)])
    pipe.set_params(anomaly_detector__target_false_alarm_rate=0.05)  # threshold still at 0.2
    pipe.save(tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="inspectkit.anomaly.stage"):
        loaded = Pipeline.load(tmp_path / "model").stages[0]
    assert "false-alarm rate of 0.2 but the config says 0.05" in caplog.text
    assert loaded.calibration == fitted.calibration  # the saved calibration is what runs


def test_calibrate_with_defects_records_the_f1_rule(fitted, tmp_path):
    det = copy_of(fitted)
    mixed = ImageSet.concat([parts(8, 6), parts(8, 7, defect=True)])
    det.calibrate(mixed)
    cal = det.calibration
    assert (cal.rule, cal.false_alarm_rate, cal.n_good) == ("f1", None, 8)
    res = det.run(mixed)
    truth = torch.tensor([lab == "bad" for lab in res.labels])
    assert float((res.is_anomalous == truth).float().mean()) >= 0.9
    _, loaded = saved_and_loaded(det, tmp_path / "model")
    assert loaded.calibration == cal
    assert torch.equal(loaded.run(mixed).is_anomalous, res.is_anomalous)


def test_no_held_out_goods_means_no_calibration(tmp_path):
    det = AnomalyDetector(
        method="padim", size=32, options={"n_features": 8}, calibration_fraction=0, progress=False
    )
    det.fit(parts(6, 8))
    assert det.calibration is None and det.threshold is None
    assert det.get_state()["calibration"] is None
    _, loaded = saved_and_loaded(det, tmp_path / "model")
    assert loaded.calibration is None
    res = loaded.run(parts(2, 9))
    assert res.threshold is None and res.is_anomalous is None


def test_legacy_state_becomes_an_unrecorded_calibration():
    expected = torch.load(LEGACY / "expected.pt", weights_only=True)
    det = Pipeline.load(LEGACY).stages[0]
    cal = det.calibration
    assert cal is not None and cal.rule == "unrecorded"
    assert cal.false_alarm_rate is None and cal.n_good is None
    assert cal.threshold == pytest.approx(expected["threshold"], rel=1e-12)
    # written back, it is a version-2 state that loads to the same calibration
    again = copy_of(det)
    assert again.calibration == cal


def test_newer_state_version_is_refused(fitted):
    state = fitted.get_state()
    state["version"] = STATE_VERSION + 1
    with pytest.raises(PersistenceError, match="newer"):
        copy_of(fitted).set_state(state)
    state = fitted.get_state()
    state["calibration"] = {"threshold": 1.0}
    with pytest.raises(PersistenceError, match="calibration"):
        copy_of(fitted).set_state(state)
