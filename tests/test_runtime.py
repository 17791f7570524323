"""inspectkit_runtime: its NumPy preprocessing agrees with the library's torch
preprocessing (properties on random arrays, and on the real data sets' files), and it
imports and predicts in a process where ``import torch`` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectkit.ops import resize_images, to_channels
from inspectkit_runtime import preprocess as P
from inspectkit_runtime.images import decode_image, read_wafer_npz

SIDES = st.integers(min_value=1, max_value=70)
#: torch's antialiased kernels mishandle rows one pixel wide (the float one repeats the
#: first pixel, the uint8 one fails an internal assert for RGB); working sizes are at
#: least 16 pixels, so widths start at two
WIDE = st.integers(min_value=2, max_value=70)


@settings(max_examples=60, deadline=None)
@given(
    h=SIDES,
    w=WIDE,
    out_h=SIDES,
    out_w=WIDE,
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_antialiased_resize_of_uint8_is_bit_identical_to_torch(h, w, out_h, out_w, channels, seed):
    a = np.random.default_rng(seed).integers(0, 256, (channels, h, w), dtype=np.uint8)
    expected = resize_images(torch.from_numpy(a)[None], (out_h, out_w), "antialias")[0].numpy()
    np.testing.assert_array_equal(P.resize(a, (out_h, out_w), "antialias"), expected)


@settings(max_examples=60, deadline=None)
@given(h=SIDES, w=SIDES, out_h=SIDES, out_w=SIDES, seed=st.integers(0, 2**31 - 1))
def test_nearest_resize_keeps_the_library_s_wafer_codes(h, w, out_h, out_w, seed):
    a = np.random.default_rng(seed).integers(0, 3, (1, h, w), dtype=np.uint8)
    expected = resize_images(torch.from_numpy(a)[None], (out_h, out_w), "nearest")[0].numpy()
    np.testing.assert_array_equal(P.resize(a, (out_h, out_w), "nearest"), expected)


@settings(max_examples=30, deadline=None)
@given(h=SIDES, w=WIDE, out_h=SIDES, out_w=WIDE, seed=st.integers(0, 2**31 - 1))
def test_float_resize_and_gray_conversion_match_torch(h, w, out_h, out_w, seed):
    rng = np.random.default_rng(seed)
    f = rng.random((1, h, w), dtype=np.float32)
    expected = resize_images(torch.from_numpy(f)[None], (out_h, out_w), "antialias")[0].numpy()
    np.testing.assert_allclose(P.resize(f, (out_h, out_w), "antialias"), expected, atol=1e-5)
    rgb = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    np.testing.assert_array_equal(
        P.to_channels(rgb, 1), to_channels(torch.from_numpy(rgb)[None], 1)[0].numpy()
    )


def test_intensity_standardisation_matches_the_detector_stage() -> None:
    from inspectkit.anomaly import AnomalyDetector
    from inspectkit.records import ImageSet, SampleMeta

    g = torch.Generator().manual_seed(0)
    good = (torch.rand(12, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    stage = AnomalyDetector(
        method="padim", size=32, intensity="standardize", progress=False, options={"n_features": 8}
    )
    stage.fit(ImageSet.build(images=good, samples=[SampleMeta(id=str(i)) for i in range(12)]))
    mean, std = stage.intensity_stats
    test = (torch.rand(20, 1, 32, 32, generator=g) * 180).to(torch.uint8)
    expected = stage._standardize(
        test, *([stage.products[""]] if hasattr(stage, "products") else []), False
    )
    got = np.stack([P.intensity(a, mean, std) for a in test.numpy()])
    np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.realdata
def test_decoding_and_resizing_real_files_agree_with_the_library(data_root: Path) -> None:
    from inspectkit.sources import load_wafer_maps
    from inspectkit.sources._common import read_image

    files = []
    for pattern, n in (
        ("magnetic_tile/MT_Blowhole/Imgs/*.jpg", 3),
        ("magnetic_tile/MT_Blowhole/Imgs/*.png", 2),
        ("deeppcb/PCBData/*/*/*_test.jpg", 2),
        ("neu_det/IMAGES/*.jpg", 3),
    ):
        found = sorted(data_root.glob(pattern))[:n]
        if not found:
            pytest.skip(f"{pattern} not found under {data_root}")
        files += found
    for f in files:
        for channels in (None, 1, 3):
            ours = P.as_chw(decode_image(f, channels))
            theirs = read_image(f, channels).numpy()
            np.testing.assert_array_equal(ours, theirs, err_msg=str(f))
        for size, mode in (
            ((128, 128), "antialias"),
            ((200, 96), "antialias"),
            ((64, 64), "nearest"),
        ):
            expected = resize_images(torch.from_numpy(ours)[None], size, mode)[0].numpy()
            np.testing.assert_array_equal(
                P.resize(ours, size, mode), expected, err_msg=f"{f} {size}"
            )
    npz = data_root / "wm811k" / "WM811K_train_1_split.npz"
    if not npz.is_file():
        pytest.skip("WM-811K not found")
    ours = read_wafer_npz(npz)
    theirs = load_wafer_maps(npz)
    assert len(ours) == len(theirs)
    for a, t in zip(ours[:300], theirs.images[:300]):
        np.testing.assert_array_equal(a, t[0].numpy())
        np.testing.assert_array_equal(
            P.resize(a[None], (48, 48), "nearest"),
            resize_images(t[None], (48, 48), "nearest")[0].numpy(),
        )


BLOCKER = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "inspectkit", "scipy"):
            raise ImportError(f"{name} is blocked in this process")
        return None
sys.meta_path.insert(0, Block())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch could be imported")
import inspectkit_runtime as ikr
model = ikr.load(sys.argv[1])
doc = model.predict_json(sys.argv[2:])
blocked = sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "inspectkit", "scipy")
)
print(json.dumps({"doc": doc, "blocked_modules": blocked}))
"""


def test_the_runtime_predicts_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from deploy_support import detector_pipeline, png

    from inspectkit.cli.predict import prediction_rows
    from inspectkit.records import ImageSet, SampleMeta

    pipe = detector_pipeline("padim", n=16)
    pipe.export(tmp_path / "line.onnx")
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (50 + 3 * i, 70), dtype=np.uint8) for i in range(3)]
    paths = []
    for i, a in enumerate(arrays):
        (tmp_path / f"part{i}.png").write_bytes(png(a))
        paths.append(str(tmp_path / f"part{i}.png"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(tmp_path / "line.onnx"), *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blocked_modules"] == []
    doc = out["doc"]
    assert doc["schema"] == "inspectkit.predict/1" and doc["task"] == "anomaly"
    data = ImageSet.build(
        images=[torch.from_numpy(a)[None] for a in arrays],
        samples=[SampleMeta(id=p, source=p) for p in paths],
    )
    expected = prediction_rows(pipe.run(data), "anomaly")
    for got, want in zip(doc["predictions"], expected):
        assert got["id"] == want["id"] and got["anomalous"] == want["anomalous"]
        assert got["score"] == pytest.approx(want["score"], rel=1e-4)
        assert got["normalized"] == pytest.approx(want["normalized"], abs=1e-4)
        # region boxes in each (ragged) image's own pixels; a map pixel within float
        # rounding of the region line may fall either side, so an edge may move a pixel
        assert len(got["regions"]) == len(want["regions"])
        for a, b in zip(got["regions"], want["regions"]):
            assert np.abs(np.subtract(a, b)).max() <= 2, (a, b)
