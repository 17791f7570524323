"""Export parity on the real data sets (small subsets; the full test sets run in
benchmarks/bench_deploy.py): read from the files by the runtime (decode, preprocessing in
NumPy, ONNX Runtime) and by the library (``sources``, ``Pipeline.run`` of the exact float32
reference), every verdict and top class equal, scores and probabilities within 1e-4
relative, maps within 1e-3. Where OpenVINO is installed it reads the same ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from deploy_support import assert_parity

pytest.importorskip("onnxruntime")

import inspectkit_runtime as ikr
from inspectkit import Pipeline
from inspectkit.anomaly import AnomalyDetector
from inspectkit.export import exact_reference
from inspectkit.sources import load, load_inputs, load_wafer_maps
from inspectkit.stages import Classifier, Wrangle

pytestmark = pytest.mark.realdata


def _files(root: Path, pattern: str, n: int) -> list[Path]:
    found = sorted(root.glob(pattern))
    if not found:
        pytest.skip(f"{pattern} not found under {root}")
    return found[:: max(1, len(found) // n)][:n]


def _openvino_parity(model: ikr.InspectionModel, arrays: list[np.ndarray], outputs: dict) -> None:
    """The same ONNX file under OpenVINO (when installed): same verdicts / classes, scores
    within 1e-4 relative."""
    try:
        import openvino as ov
    except ImportError:
        return
    # f32: on CPUs with bfloat16 units OpenVINO otherwise infers in bfloat16 (scores 3 % off)
    compiled = ov.Core().compile_model(
        str(model.onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    x = model.preprocess(arrays)
    result = compiled(x)
    got = {name: result[compiled.output(name)] for name in model.output_names}
    if "score" in got:
        np.testing.assert_allclose(got["score"], outputs["score"], rtol=1e-4)
        if "anomalous" in got:
            assert (got["anomalous"].astype(bool) == outputs["anomalous"].astype(bool)).all()
    else:
        np.testing.assert_allclose(got["probs"], outputs["probs"], atol=1e-4)
        assert (got["class"] == outputs["class"]).all()


def _check(
    pipe: Pipeline, onnx: Path, paths: list[Path], channels: int | None, kind: str = "image"
) -> dict:
    model = ikr.load(onnx)
    if kind == "wafer":
        arrays = [a for p in paths for a in ikr.read_wafer_npz(p)]
        data = load_inputs([str(p) for p in paths], kind="wafer")
    else:
        arrays = [ikr.decode_image(p, channels) for p in paths]
        # in memory: the library returns maps="source" maps at the images' size only when
        # it knows they share one (a lazy set does not), as the runtime does per call
        data = load_inputs([str(p) for p in paths], channels=channels, kind=kind).materialize()
    outputs = model.run_arrays(arrays)
    report = assert_parity(exact_reference(pipe).run(data), outputs)
    _openvino_parity(model, arrays, outputs)
    return report


def test_magnetic_tile_patchcore_parity(magnetic_tile_dir: Path, tmp_path: Path) -> None:
    good = load(magnetic_tile_dir, task="anomaly", limit=40, channels=1)
    pipe = Pipeline(
        [AnomalyDetector(method="patchcore", size=128, intensity="standardize", progress=False)]
    ).fit(good)
    pipe.export(tmp_path / "tiles.onnx")
    paths = _files(magnetic_tile_dir, "MT_Free/Imgs/*.jpg", 6) + _files(
        magnetic_tile_dir, "MT_[BCFU]*/Imgs/*.jpg", 10
    )
    report = _check(pipe, tmp_path / "tiles.onnx", paths, channels=1)
    assert report["n"] == 16


def test_deeppcb_ensemble_parity_with_source_size_maps(data_root: Path, tmp_path: Path) -> None:
    root = data_root / "deeppcb"
    templates = _files(root, "PCBData/*/*/*_temp.jpg", 24)
    from inspectkit.sources import load_image_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = load_image_files([str(p) for p in templates], channels=1)
        options = {"members": [{"method": "patchcore"}, {"method": "padim", "n_features": 48}]}
        pipe = Pipeline(
            [AnomalyDetector(method="ensemble", size=128, options=options, progress=False)]
        ).fit(good)
    pipe.export(tmp_path / "pcb.onnx")
    tested = _files(root, "PCBData/*/*/*_test.jpg", 6)
    report = _check(pipe, tmp_path / "pcb.onnx", tested, channels=1)
    assert report["n"] == 6


def test_wm811k_classifier_parity(wm811k_dir: Path, tmp_path: Path) -> None:
    train = load_wafer_maps(wm811k_dir / "WM811K_train_1_split.npz")
    pipe = Pipeline(
        [Wrangle(size=32), Classifier(epochs=2, progress=False, tta="dihedral", reject_below=0.5)]
    ).fit(train)
    pipe.export(tmp_path / "wafer.onnx")
    from inspectkit.sources import save_wafer_npz

    test = load_wafer_maps(wm811k_dir / "WM811K_test_data.npz", limit=800)
    save_wafer_npz(tmp_path / "lot.npz", list(test.images), test.labels)  # real maps, ragged
    report = _check(
        pipe, tmp_path / "wafer.onnx", [tmp_path / "lot.npz"], channels=None, kind="wafer"
    )
    assert report["n"] == 800 and report["class_mismatches"] == 0


def test_neu_classifier_parity(neu_det_dir: Path, tmp_path: Path) -> None:
    train = load(neu_det_dir)
    train = train.subset(range(0, len(train), 15))  # VOC's limit counts in total: every class
    pipe = Pipeline([Wrangle(size=64, channels=1), Classifier(epochs=2, progress=False)]).fit(train)
    pipe.export(tmp_path / "steel.onnx", kind="image")
    paths = _files(neu_det_dir, "Validation_Images/*.jpg", 30)
    report = _check(pipe, tmp_path / "steel.onnx", paths, channels=None)
    assert report["n"] == len(paths)
