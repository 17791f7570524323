"""Pipeline.export / inspectkit export: every detector and the classifier export to ONNX,
the runtime reproduces the library within the issue's tolerances, and what cannot be
exported is refused with an ExportError naming it, leaving no file behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_support import as_arrays, assert_parity, detector_pipeline, parts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import make_image_set

import inspectkit_runtime as ikr
from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector, AnomalyModel, register_detector
from inspectkit.cli import main
from inspectkit.cli.predict import prediction_rows
from inspectkit.export import ExportError, exact_reference, register_detector_exporter
from inspectkit.stages import Augment, Classifier, Wrangle


@pytest.mark.parametrize(
    "method", ["patchcore", "padim", "autoencoder", "selfsupervised", "ensemble"]
)
def test_every_detector_exports_and_the_runtime_reproduces_it(method: str, tmp_path: Path) -> None:
    pipe = detector_pipeline(method)
    out = pipe.export(tmp_path / "line.onnx")
    sidecar = json.loads((tmp_path / "line.json").read_text())
    assert out == tmp_path / "line.onnx"
    assert sidecar["task"] == "anomaly" and sidecar["method"] == method
    assert sidecar["graph"]["outputs"] == ["score", "map", "normalized", "anomalous"]
    assert sidecar["graph"]["dynamic_batch"] and sidecar["opset"] == 17
    assert sidecar["threshold"] == pipe[0].threshold
    test = parts(5, seed=7)
    test = test.replace(images=torch.cat([test.images[:4], parts(1, seed=8, bright=60).images]))
    model = ikr.load(out)
    outputs = model.run_arrays(as_arrays(test))
    assert_parity(exact_reference(pipe).run(test), outputs)
    one_by_one = ikr.load(out, batch_size=1).run_arrays(as_arrays(test))  # dynamic batch
    np.testing.assert_allclose(one_by_one["score"], outputs["score"], rtol=1e-5)
    rows = model.predict_arrays(as_arrays(test), [s.id for s in test.samples])
    assert [r["anomalous"] for r in rows] == outputs["anomalous"].astype(bool).tolist()
    assert rows[0]["threshold"] == pipe[0].threshold and set(rows[0]) == {
        "input",
        "id",
        "score",
        "normalized",
        "anomalous",
        "threshold",
        "regions",
    }
    # the defect regions' boxes: the library's rule on the runtime's maps, box for box
    expected = prediction_rows(exact_reference(pipe).run(test), "anomaly")
    assert [r["regions"] for r in rows] == [r["regions"] for r in expected]
    assert all(bool(r["regions"]) == r["anomalous"] for r in rows)


def test_an_exported_ensemble_holds_its_shared_backbone_once(tmp_path: Path) -> None:
    import onnx

    convs = {}
    for method in ("ensemble", "padim"):
        detector_pipeline(method).export(tmp_path / f"{method}.onnx")
        graph = onnx.load(str(tmp_path / f"{method}.onnx")).graph
        convs[method] = sum(node.op_type == "Conv" for node in graph.node)
    # PaDiM's pass (layer1..layer3) serves PatchCore's layers too: no second backbone
    assert convs["padim"] > 0 and convs["ensemble"] == convs["padim"]


def test_intensity_standardisation_runs_in_the_runtime(tmp_path: Path) -> None:
    pipe = detector_pipeline("padim", intensity="standardize")
    pipe.export(tmp_path / "m.onnx")
    steps = [s["op"] for s in json.loads((tmp_path / "m.json").read_text())["preprocess"]]
    assert steps == ["resize", "intensity", "to_float"]
    dim = parts(4, seed=3)
    dim = dim.replace(images=(dim.images.float() * 0.6).round().to(torch.uint8))  # darker, flatter
    assert_parity(pipe.run(dim), ikr.load(tmp_path / "m.onnx").run_arrays(as_arrays(dim)))


def test_classifiers_export_probabilities_views_and_review(tmp_path: Path) -> None:
    wafers = make_image_set(n=48, classes=("a", "b", "c"), size=20, kind="wafer")
    pipe = Pipeline(
        [Wrangle(size=16), Classifier(epochs=1, progress=False, tta="dihedral", reject_below=0.45)]
    ).fit(wafers)
    pipe.export(tmp_path / "wafer.onnx")
    model = ikr.load(tmp_path / "wafer.onnx")
    ragged = [
        np.random.default_rng(i).integers(0, 3, (18 + i, 25 - i), dtype=np.uint8) for i in range(6)
    ]
    from inspectkit.records import ImageSet, SampleMeta

    data = ImageSet.build(
        images=[torch.from_numpy(a)[None] for a in ragged],
        samples=[SampleMeta(id=str(i)) for i in range(6)],
        kind="wafer",
    )
    expected = pipe.run(data)
    outputs = model.run_arrays(ragged)
    assert_parity(expected, outputs)
    rows = model.predict_arrays(ragged)
    assert [r["predicted"] for r in rows] == expected.predicted  # None where sent to review
    assert model.classes == ["a", "b", "c"] and model.kind == "wafer"

    photos = make_image_set(n=30, classes=("ok", "scratch"), size=24, channels=3)
    pipe = Pipeline(
        [
            Wrangle(size=20, channels=1, normalize="standard", keep_aspect=True, pad_value=9),
            Classifier(epochs=1, progress=False, tta="flip"),
        ]
    ).fit(photos)
    pipe.export(tmp_path / "photo.onnx", kind="image")
    ops = [s["op"] for s in json.loads((tmp_path / "photo.json").read_text())["preprocess"]]
    assert ops[:4] == ["letterbox", "channels", "to_float", "standardize"]
    test = make_image_set(n=5, classes=("ok", "scratch"), size=30, channels=3, seed=4)
    assert_parity(pipe.run(test), ikr.load(tmp_path / "photo.onnx").run_arrays(as_arrays(test)))


def test_approximate_scoring_exports_the_exact_float32_computation(tmp_path: Path) -> None:
    pipe = detector_pipeline("patchcore", n=20)
    pipe[0].detector.settings = pipe[0].detector.settings.replace(feature_dtype="bfloat16")
    pipe.export(tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["exact_float32"] is False and "bfloat16" in sidecar["notes"][0]
    reference = exact_reference(pipe)
    assert reference is not pipe and pipe[0].detector.feature_dtype == "bfloat16"
    test = parts(3, seed=5)
    assert_parity(reference.run(test), ikr.load(tmp_path / "m.onnx").run_arrays(as_arrays(test)))
    with pytest.raises(ExportError, match=r"strict export.*bfloat16 features"):
        pipe.export(tmp_path / "strict.onnx", strict=True)
    assert not (tmp_path / "strict.onnx").exists()


def test_external_data_is_checked_like_the_graph(tmp_path: Path) -> None:
    pipe = detector_pipeline("padim", n=12)
    out = pipe.export(tmp_path / "big.onnx", external_data_bytes=0)
    data = tmp_path / "big.onnx.data"
    assert data.is_file() and data.stat().st_size > out.stat().st_size
    test = parts(2, seed=9)
    assert_parity(pipe.run(test), ikr.load(out).run_arrays(as_arrays(test)))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ikr.RuntimeModelError, match=r"big\.onnx\.data: SHA-256 differs"):
        ikr.load(out)
    (tmp_path / "big.json").unlink()
    with pytest.raises(ikr.RuntimeModelError, match="sidecar not found"):
        ikr.load(out)


def test_what_cannot_be_exported_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"stage Augment \('augment'\) has no ONNX exporter"):
        Pipeline([Wrangle(size=32), Augment()]).export(tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="dedupe='always'"):
        Pipeline([Wrangle(size=32, dedupe="always")]).export(tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="no classifier or detector"):
        Pipeline([Wrangle(size=32)]).export(tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="not fitted"):
        Pipeline([AnomalyDetector(method="padim", size=32, progress=False)]).export(
            tmp_path / "a.onnx"
        )
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        detector_pipeline("padim", n=8).export(tmp_path / "a.onnx", format="tflite")
    assert list(tmp_path.iterdir()) == []


@register_detector
class _MeanShift(AnomalyModel):
    """A detector of the test suite: distance of each pixel from the good images' mean."""

    name = "export_test_mean_shift"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.register_buffer("mean", torch.zeros(0))

    def _fit(self, images):
        self.mean = torch.cat(list(self.batches(images))).mean(0)

    def _score_batch(self, x):
        maps = (x - self.mean).abs().amax(1)
        return maps.flatten(1).amax(1), maps


def test_a_plugin_detector_needs_its_own_exporter_and_a_wrong_one_writes_nothing(
    tmp_path: Path,
) -> None:
    pipe = detector_pipeline("export_test_mean_shift", n=10)
    with pytest.raises(
        ExportError, match=r"detector _MeanShift \('export_test_mean_shift'\) has no ONNX exporter"
    ):
        pipe.export(tmp_path / "m.onnx")

    class Doubled(torch.nn.Module):  # scores twice what the detector says
        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, x):
            s, m = self.det._score_batch(x)
            return 2 * s, 2 * m

    register_detector_exporter("export_test_mean_shift")(Doubled)
    with pytest.raises(ExportError, match=r"does not reproduce the model.*nothing was written"):
        pipe.export(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_writes_the_model_and_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    pipe = detector_pipeline("padim", n=10)
    pipe.save(tmp_path / "model")
    code = main(
        ["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "x.onnx"), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["schema"] == "inspectkit.export/1" and report["task"] == "anomaly"
    assert report["verified"]["probe"]["ok"] and Path(report["sidecar"]).is_file()
    code = main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "y.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such model folder" in err


def _stage_has(setting: str) -> bool:
    return setting in AnomalyDetector.Config.model_fields


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"method": "default", "size": 64}, id="default-recipe"),
        pytest.param(
            {
                "method": "padim",
                "size": 96,
                "tile": 48,
                "tile_overlap": 0.25,
                "options": {"n_features": 16},
            },
            id="tiles",
        ),
        pytest.param(
            {
                "method": "padim",
                "size": 64,
                "review_false_alarm_rate": 0.2,
                "options": {"n_features": 16},
            },
            id="review-band",
        ),
        pytest.param(
            {"method": "padim", "size": 64, "maps": "source", "options": {"n_features": 16}},
            id="source-maps",
        ),
    ],
)
def test_detector_stage_features_are_exported(settings: dict, tmp_path: Path) -> None:
    missing = [k for k in settings if not _stage_has(k)]
    if missing or (
        settings["method"] == "default"
        and "default"
        not in AnomalyDetector.Config.model_json_schema()["properties"]["method"].get("enum", [])
    ):
        pytest.skip(f"this AnomalyDetector has no {missing or 'default recipe'}")
    pipe = Pipeline([AnomalyDetector(progress=False, **settings)]).fit(parts(30, 96))
    pipe.export(tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.json").read_text())
    test = parts(4, 96, seed=3)
    expected = exact_reference(pipe).run(test)
    outputs = ikr.load(tmp_path / "m.onnx").run_arrays(as_arrays(test))
    assert_parity(expected, outputs)
    assert outputs["map"].shape == tuple(expected.maps.shape)
    if "review_false_alarm_rate" in settings:
        assert sidecar["graph"]["outputs"][-1] == "review"
        assert outputs["review"].tolist() == expected.review.tolist()
    if "tile" in settings:
        assert sidecar["tile"] == 48


def test_per_product_routing_is_refused_by_name(tmp_path: Path) -> None:
    if not _stage_has("group_by"):
        pytest.skip("this AnomalyDetector has no per-product routing")
    from inspectkit.records import SampleMeta

    good = parts(20)
    good = good.replace(
        samples=[SampleMeta(id=s.id, group="ab"[i % 2]) for i, s in enumerate(good.samples)]
    )
    pipe = Pipeline(
        [
            AnomalyDetector(
                method="padim", size=64, group_by="group", progress=False, options={"n_features": 8}
            )
        ]
    ).fit(good)
    with pytest.raises(ExportError, match=r"group_by='group'.*export one model per product"):
        pipe.export(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ensemble", [False, True])
def test_continual_classifier_exports_its_latest_model_or_its_members(
    ensemble: bool, tmp_path: Path
) -> None:
    from inspectkit.continual import ContinualClassifier

    clf = ContinualClassifier(
        max_params=3000,
        capacity=30,
        epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
        ensemble=ensemble,
    )
    pipe = Pipeline([clf])
    pipe.fit(make_image_set(n=30, classes=("a", "b"), size=16, kind="wafer"))
    clf.update(make_image_set(n=30, classes=("a", "b", "c"), size=16, kind="wafer", seed=1))
    pipe.export(tmp_path / "c.onnx")
    test = make_image_set(n=9, classes=("a", "b", "c"), size=16, kind="wafer", seed=2)
    model = ikr.load(tmp_path / "c.onnx")
    assert_parity(pipe.run(test), model.run_arrays(as_arrays(test)))
    assert model.classes == clf.classes
    with pytest.raises(ikr.InputError, match="trained on 16×16 and takes no other size"):
        model.run_arrays([np.zeros((20, 16), dtype=np.uint8)])


def test_a_sidecar_region_threshold_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    pipe = detector_pipeline("padim")
    pipe.export(tmp_path / "line.onnx")
    side = tmp_path / "line.json"
    doc = json.loads(side.read_text())
    assert doc["calibration"]["region_threshold"] == pipe[0].calibration.region_threshold
    doc["calibration"]["region_threshold"] = "high"
    side.write_text(json.dumps(doc))
    test = parts(2, seed=7)
    with pytest.raises(ikr.RuntimeModelError, match="region threshold is not a finite number"):
        ikr.load(tmp_path / "line.onnx").predict_arrays(as_arrays(test))
