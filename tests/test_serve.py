"""inspectkit serve: /predict answers what predict --json prints, bad input gets 422 and a
large body 413, /health, /model, /metrics (counts, verdict rate, latency, score drift),
atomic reload under concurrent requests; in-process and with a real uvicorn on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from deploy_support import detector_pipeline, png
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient

from inspectkit.cli import main
from inspectkit.serve import DriftMonitor, create_app, ks_statistic, psi

FINITE = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(FINITE, min_size=20, max_size=200), st.lists(FINITE, min_size=1, max_size=200))
def test_drift_statistics_are_bounded_and_zero_for_the_same_scores(ref, new):
    ref, new = np.asarray(ref), np.asarray(new)
    assert psi(ref, new) >= 0 and 0 <= ks_statistic(ref, new) <= 1
    assert psi(ref, ref) == pytest.approx(0, abs=1e-12) and ks_statistic(ref, ref) == 0


def test_the_drift_alarm_needs_a_shift_and_enough_scores() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(rng.normal(size=400), window=200, alarm=0.25, min_samples=50)
    monitor.add(rng.normal(size=200))
    assert not monitor.status().alarm and monitor.status().psi < 0.1
    monitor.add(rng.normal(2.0, size=30))
    assert not monitor.status().alarm or monitor.status().recent_size >= 50
    monitor.add(rng.normal(2.0, size=200))
    status = monitor.status()
    assert status.alarm and status.psi > 0.25 and status.ks > 0.5 and status.recent_size == 200
    with pytest.raises(ValueError, match="at least 20"):
        DriftMonitor([1.0, 2.0])


def test_metrics_count_the_review_verdict_of_a_detector() -> None:
    from inspectkit.serve.metrics import Metrics

    metrics = Metrics(DriftMonitor())
    rows = [
        {"anomalous": True, "review": False},
        {"anomalous": False, "review": True},
        {"anomalous": False, "review": True},
        {"anomalous": False, "review": False},
        {"anomalous": False},  # a detector without a review band
    ]
    metrics.predicted(rows, 0.01, "anomaly")
    text = metrics.render(in_flight=0, generation=1, task="anomaly")
    counts = {
        v: float(line.rsplit(" ", 1)[1])
        for v in ("anomalous", "review", "good")
        for line in text.splitlines()
        if line.startswith(f'inspectkit_predictions_total{{verdict="{v}"}}')
    }
    assert counts == {"anomalous": 1.0, "review": 2.0, "good": 2.0}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    pipe = detector_pipeline("padim", n=24)
    pipe.save(root / "model")
    pipe.export(root / "model.onnx")
    other = detector_pipeline("padim", n=24, seed=5) if False else None  # noqa: F841
    rng = np.random.default_rng(3)
    parts = root / "parts"
    parts.mkdir()
    good = root / "good"
    good.mkdir()
    for i in range(3):
        (parts / f"part{i}.png").write_bytes(
            png(rng.integers(0, 256, (60, 50 + i), dtype=np.uint8))
        )
    from deploy_support import as_arrays
    from deploy_support import parts as make_parts

    for i, a in enumerate(as_arrays(make_parts(30, seed=11))):
        (good / f"good{i:02d}.png").write_bytes(png(a))
    return {"root": root, "pipe": pipe, "parts": sorted(parts.iterdir()), "good": good}


def _files(paths):
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]


def _cli_predict(model: Path, paths, capsys) -> list[dict]:
    assert main(["predict", "--model", str(model), *map(str, paths), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)["predictions"]


@pytest.mark.parametrize("backend", ["model", "model.onnx"])
def test_predict_answers_what_predict_json_prints(served, backend, capsys) -> None:
    client = TestClient(create_app(served["root"] / backend))
    answer = client.post("/predict", files=_files(served["parts"]))
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["schema"] == "inspectkit.predict/1" and doc["task"] == "anomaly"
    expected = _cli_predict(served["root"] / "model", served["parts"], capsys)
    for got, want in zip(doc["predictions"], expected):
        assert got["id"] == Path(want["id"]).name and got["anomalous"] == want["anomalous"]
        assert got["threshold"] == want["threshold"]
        assert got["score"] == pytest.approx(want["score"], rel=1e-4)
    one = client.post(
        "/predict?name=one.png",
        content=served["parts"][0].read_bytes(),
        headers={"content-type": "image/png"},
    ).json()["predictions"]
    # one image alone: the same score up to float32 rounding (CPU kernels sum a batch of
    # one in another order)
    assert one[0]["id"] == "one.png"
    assert one[0]["score"] == pytest.approx(doc["predictions"][0]["score"], rel=1e-5)


def test_bad_input_gets_422_with_the_reason_and_a_large_body_413(served) -> None:
    client = TestClient(create_app(served["root"] / "model", max_body=50_000))
    bad = client.post("/predict", files=[("files", ("broken.png", b"not an image", "image/png"))])
    assert bad.status_code == 422 and bad.json()["detail"].startswith(
        "broken.png: not a readable image"
    )
    wafer = client.post("/predict", files=[("files", ("lot.npz", b"PK", "application/zip"))])
    assert wafer.status_code == 422 and "reads images, not wafer maps" in wafer.json()["detail"]
    assert client.post("/predict", data={"other": "x"}).status_code == 422
    big = client.post(
        "/predict?name=x.png", content=b"x" * 60_000, headers={"content-type": "image/png"}
    )
    assert big.status_code == 413
    chunked = client.post(
        "/predict?name=x.png",
        content=iter([b"x" * 30_000, b"x" * 30_000]),
        headers={"content-type": "image/png"},
    )
    assert chunked.status_code == 413
    metrics = client.get("/metrics").text
    assert 'inspectkit_requests_total{endpoint="/predict",status="413"} 2' in metrics
    assert 'inspectkit_requests_total{endpoint="/predict",status="422"} 3' in metrics


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_health_model_card_and_metrics_with_score_drift(served) -> None:
    client = TestClient(
        create_app(served["root"] / "model", reference=[str(served["good"])], drift_window=100)
    )
    health = client.get("/health").json()
    assert (
        health["status"] == "ok" and health["task"] == "anomaly" and health["model_generation"] == 1
    )
    assert health["drift"]["reference_size"] == 30
    card = client.get("/model").json()
    assert card["backend"] == "torch" and card["threshold"] == served["pipe"][0].threshold
    goods = sorted(served["good"].iterdir())
    for start in range(0, 30, 10):
        assert client.post("/predict", files=_files(goods[start : start + 10])).status_code == 200
    text = client.get("/metrics").text
    assert _metric(text, "inspectkit_inputs_total") == 30
    assert _metric(text, "inspectkit_predict_seconds_count") == 3
    assert _metric(text, "inspectkit_score_drift_psi") == pytest.approx(0, abs=1e-9)
    assert _metric(text, "inspectkit_score_drift_alarm") == 0
    # the line changes: parts come out much brighter and flatter; the scores drift
    from deploy_support import as_arrays
    from deploy_support import parts as make_parts

    bright = [
        ("files", (f"b{i}.png", png(a), "image/png"))
        for i, a in enumerate(as_arrays(make_parts(60, seed=12, bright=90)))
    ]
    for start in range(0, 60, 20):
        assert client.post("/predict", files=bright[start : start + 20]).status_code == 200
    text = client.get("/metrics").text
    assert (
        _metric(text, "inspectkit_score_drift_psi") > 0.25
        and _metric(text, "inspectkit_score_drift_alarm") == 1
    )
    flagged = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('inspectkit_predictions_total{verdict="anomalous"}')
    )
    assert _metric(text, "inspectkit_anomalous_rate") == pytest.approx(flagged / 90)
    assert client.get("/health").json()["drift"]["alarm"] is True


def test_reload_swaps_atomically_under_concurrent_requests(served, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    models = [served["pipe"], detector_pipeline("padim", n=16)]
    models[0].save(folder)
    client = TestClient(create_app(folder))
    files = _files(served["parts"])
    expected = []
    for m in models:  # each model's scores of the three parts, as the service computes them
        m.save(folder)
        client.post("/reload")
        expected.append(
            [r["score"] for r in client.post("/predict", files=files).json()["predictions"]]
        )
    assert expected[0] != expected[1]
    which = {}  # generation -> model index
    which_lock = threading.Lock()
    answers, stop = [], threading.Event()

    def ask() -> None:
        while not stop.is_set():
            doc = client.post("/predict", files=files).json()
            answers.append((doc["model_generation"], [r["score"] for r in doc["predictions"]]))

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for t in askers:
        t.start()
    for k in range(6):
        models[k % 2].save(folder)
        with which_lock:
            gen = client.post("/reload").json()["model_generation"]
            which[gen] = k % 2
        time.sleep(0.05)
    stop.set()
    for t in askers:
        t.join()
    seen = {gen for gen, _ in answers}
    assert len(answers) >= 6 and len(seen) >= 2
    for gen, scores in answers:
        if gen in which:
            assert scores == expected[which[gen]], (gen, scores)
        else:  # answered by a model loaded before this test's swaps
            assert scores in expected
    assert client.get("/health").json()["in_flight"] == 0


def test_a_failed_reload_keeps_the_previous_model(served, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    served["pipe"].save(folder)
    client = TestClient(create_app(folder))
    (folder / "pipeline.json").write_text("{ not json")
    failed = client.post("/reload")
    assert failed.status_code == 422 and "previous model keeps serving" in failed.json()["detail"]
    assert client.get("/health").json()["model_generation"] == 1
    assert client.post("/predict", files=_files(served["parts"][:1])).status_code == 200
    assert _metric(client.get("/metrics").text, "inspectkit_model_reload_failures_total") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_uvicorn_server_on_loopback(served) -> None:
    import httpx

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INSPECTKIT_PROGRESS": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inspectkit.cli",
            "serve",
            "--model",
            str(served["root"] / "model"),
            "--port",
            str(port),
            "--reference",
            str(served["good"]),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the server did not answer in 90 s"
            time.sleep(0.3)
        files = _files(served["parts"])
        results: list[int] = []

        def client() -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                for _ in range(3):
                    results.append(c.post("/predict", files=files).status_code)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        proc.send_signal(signal.SIGHUP)  # reload while the clients are asking
        for t in threads:
            t.join()
        assert results == [200] * 12
        deadline = time.monotonic() + 60
        while httpx.get(base + "/health").json()["model_generation"] < 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload the model"
            time.sleep(0.2)
        text = httpx.get(base + "/metrics").text
        assert _metric(text, "inspectkit_inputs_total") == 36
        assert _metric(text, "inspectkit_model_reloads_total") == 1
        assert httpx.get(base + "/model").json()["backend"] == "torch"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
