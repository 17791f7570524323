"""Model folders saved by inspectkit 0.1.0 (before the issue #15 refactor) still load
and predict exactly as they did (fixtures written by ``fixtures/make_legacy_models.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inspectkit as ik
from inspectkit.records import ImageSet, SampleMeta

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1.0"


def _load(name: str) -> tuple[ik.Pipeline, dict, dict]:
    folder = LEGACY / name
    pipe = ik.Pipeline.load(folder)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    inputs_file = folder / "inputs.pt"
    if not inputs_file.exists():
        inputs_file = LEGACY / "wafer-classifier" / "inputs.pt"
    inputs = torch.load(inputs_file, weights_only=True)
    return pipe, expected, inputs


def _wafer_set(inputs: dict) -> ImageSet:
    return ImageSet(
        images=inputs["images"],
        samples=[SampleMeta(id=i) for i in inputs["ids"]],
        classes=[],
        kind="wafer",
    )


def test_legacy_wafer_classifier_predicts_and_explains_the_same() -> None:
    pipe, expected, inputs = _load("wafer-classifier")
    out = pipe.run(_wafer_set(inputs))
    torch.testing.assert_close(out.probs, expected["probs"], rtol=1e-4, atol=1e-5)
    assert out.probs.argmax(1).tolist() == expected["probs"].argmax(1).tolist()
    torch.testing.assert_close(out.heatmaps, expected["heatmaps"], rtol=1e-3, atol=1e-3)


def test_legacy_anomaly_detector_scores_the_same() -> None:
    pipe, expected, inputs = _load("anomaly-autoencoder")
    data = ImageSet(
        images=inputs["images"],
        samples=[SampleMeta(id=str(i)) for i in range(len(inputs["images"]))],
        classes=[],
    )
    out = pipe.run(data)
    torch.testing.assert_close(out.scores, expected["scores"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.maps, expected["maps"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out.normalized, expected["normalized"], rtol=1e-4, atol=1e-6)
    assert out.is_anomalous.tolist() == expected["is_anomalous"].tolist()
    assert out.threshold == pytest.approx(expected["threshold"], rel=1e-6)


def test_legacy_continual_classifier_predicts_the_same() -> None:
    pipe, expected, inputs = _load("wafer-continual")
    data = _wafer_set(inputs).replace(classes=expected["classes"])
    out = pipe.run(data)
    assert list(out.classes) == expected["classes"]
    torch.testing.assert_close(out.probs, expected["probs"], rtol=1e-4, atol=1e-5)


def test_legacy_model_folders_work_from_the_command_line(capsys: pytest.CaptureFixture) -> None:
    import json

    from inspectkit.cli import main

    demo = Path(ik.__file__).parent / "data" / "wm811k_demo_test.npz"
    assert main(["predict", "--model", str(LEGACY / "wafer-classifier"), str(demo), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(rows) > 48 and all(r["predicted"] for r in rows)
    _, expected, _ = _load("wafer-classifier")
    first = torch.tensor([list(r["probs"].values()) for r in rows[:48]])
    torch.testing.assert_close(first, expected["probs"], rtol=1e-3, atol=1e-4)
