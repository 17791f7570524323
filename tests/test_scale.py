"""Archive runs without Ray (``engine="local"``): listing, wafer archives read as the
loader reads them, Parquet rows, resume, error rows, exactly-once, digests, the command
line. The same chunks run on Ray in ``test_scale_ray.py``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("pyarrow", reason="archive runs write Parquet (pip install 'inspectkit[ray]')")

from scale_support import (
    WAFER_MODEL,
    assert_rows_equal,
    key_of,
    padim_model,
    part_rows,
    reference_rows,
    tile_subset,
)

from inspectkit.errors import DataError
from inspectkit.scale import (
    Listing,
    ModelInfo,
    ResultStore,
    ScaleError,
    Unit,
    WaferIndex,
    inspect_archive,
    model_digest,
    plan_chunks,
    read_results,
)
from inspectkit.scale.inputs import WaferArchives
from inspectkit.scale.model import load_scorer
from inspectkit.sources import load_inputs, load_wafer_npz
from inspectkit.sources.limits import SizeLimitError, use_limits


def _savez(path: Path, maps: list[np.ndarray], *, compressed: bool = True) -> Path:
    flat = np.concatenate([m.ravel() for m in maps])
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
    shapes = np.array([m.shape for m in maps], dtype=np.int32)
    labels = np.array(["none"] * len(maps))
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as fh:
        save(fh, flat=flat, shapes=shapes, offsets=offsets, failure_type=labels)
    return path


@pytest.fixture(scope="module")
def tiles(magnetic_tile_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiles")
    return {
        "model": padim_model(magnetic_tile_dir, root / "padim"),
        "data": tile_subset(magnetic_tile_dir, root / "data", per_class=6),
    }


# ---------------------------------------------------------------------- wafer archives
@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=12),
    seed=st.integers(0, 2**31 - 1),
    compressed=st.booleans(),
    data=st.data(),
)
def test_wafer_maps_read_by_index_equal_the_loaders(sizes, seed, compressed, data) -> None:
    """Any subset of maps, read in runs from the ``flat`` member, equals what
    ``load_wafer_npz`` gives, and the listing names them as it does."""
    rng = np.random.default_rng(seed)
    maps = [rng.integers(0, 3, size=s, dtype=np.uint8) for s in sizes]
    picked = sorted(data.draw(st.sets(st.integers(0, len(maps) - 1), min_size=1)))
    with tempfile.TemporaryDirectory() as tmp:
        path = _savez(Path(tmp) / "lot.npz", maps, compressed=compressed)
        loaded = load_wafer_npz(path)
        units = list(Listing([path], "wafer").units())
        assert [u.id for u in units] == [s.id for s in loaded.samples]
        assert len(WaferIndex.read(path)) == len(maps)
        archives = WaferArchives()
        got = archives.read(str(path), picked)
        archives.close()
        for i, (arr, err) in zip(picked, got):
            assert err is None
            assert arr.dtype == np.uint8
            np.testing.assert_array_equal(arr[None], loaded.images[i].numpy())


def test_wafer_index_checks_the_archive_before_any_pixel(tmp_path: Path) -> None:
    maps = [np.ones((4, 5), np.uint8), np.zeros((3, 3), np.uint8)]
    path = _savez(tmp_path / "ok.npz", maps)
    with use_limits({"max_archive_pixels": 10}), pytest.raises(SizeLimitError, match=r"ok\.npz"):
        WaferIndex.read(path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, flat=np.ones(20, np.uint8), shapes=np.array([[4, 5], [3, 3]], np.int32),
             offsets=np.array([0, 20, 29], np.int64), failure_type=np.array(["a", "b"]))  # fmt: skip
    with pytest.raises(DataError, match=r"bad\.npz.*offsets"):
        WaferIndex.read(bad)


def test_a_map_with_bad_codes_is_an_error_row_of_its_own(tmp_path: Path) -> None:
    maps = [np.ones((30, 30), np.uint8) for _ in range(4)]
    maps[1][3, 3] = 7
    path = _savez(tmp_path / "lot.npz", maps)
    summary = inspect_archive(WAFER_MODEL, path, tmp_path / "out", engine="local", progress=False)
    assert (summary.scored, summary.errors) == (4, 1)
    rows = {r["index"]: r for r in read_results(tmp_path / "out").to_pylist()}
    assert "map 1 holds wafer code 7" in rows[1]["error"] and rows[1]["verdict"] is None
    assert all(rows[i]["error"] is None and rows[i]["verdict"] for i in (0, 2, 3))


# ---------------------------------------------------------------------- chunks
@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(-1, 5)), max_size=40),
    done=st.sets(st.tuples(st.sampled_from("abcd"), st.integers(-1, 5))),
    size=st.integers(1, 7),
)
def test_chunks_hold_each_input_to_score_once(keys, done, size) -> None:
    """Every distinct input not done is in exactly one chunk, in listing order; chunks
    hold at most ``size``; the same inputs always give the same part names."""
    units = [Unit(p, i, f"{p}:{i}", p, 0) for p, i in keys]
    rows, listed = plan_chunks(iter(units), size, "f" * 64, done)
    wanted = [k for k in dict.fromkeys(keys) if k not in done]
    got = [(p, i) for r in rows for p, i in zip(r["path"], r["index"])]
    assert got == wanted and listed == len(set(keys))
    assert all(1 <= len(r["path"]) <= size for r in rows)
    again, _ = plan_chunks(iter(units), size, "f" * 64, done)
    assert [r["part"] for r in again] == [r["part"] for r in rows]
    assert len({r["part"] for r in rows}) == len(rows)
    other, _ = plan_chunks(iter(units), size, "e" * 64, done)
    assert not {r["part"] for r in other} & {r["part"] for r in rows}


# ---------------------------------------------------------------------- listing
def _png(path: Path, value: int = 100, size: tuple[int, int] = (20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def test_listing_names_what_predict_reads(tmp_path: Path, tiles: dict[str, Path]) -> None:
    """Folders (nested, hidden entries, other files), files, globs and data layouts give
    the inputs ``sources.load_inputs`` gives, with the same ids; masks are not inputs."""
    root = tmp_path / "archive"
    for name in ("2024/01/a.png", "2024/01/b.jpg", "2024/02/c.png", "2024/.hidden/d.png"):
        _png(root / name)
    (root / "2024/01/notes.txt").write_text("not an image")
    _png(root / "2024/01/.e.png")
    lone = _png(tmp_path / "lone.png")

    def listed(inputs: list) -> set[tuple[str, str]]:
        return {(u.path, u.id) for u in Listing(inputs, "image").units()}

    def predicted(inputs: list) -> set[tuple[str, str]]:
        data = load_inputs(inputs, kind="image")
        return {(os.path.abspath(s.source), s.id) for s in data.samples}

    # load_inputs does not recognise an archive root whose images sit two folders down
    assert listed([root]) == predicted([root / "2024/01", root / "2024/02"])
    assert len(listed([root])) == 3
    assert listed([tiles["data"]]) == predicted([tiles["data"]])
    assert all(p.endswith(".jpg") for p, _ in listed([tiles["data"]]))
    assert listed([lone]) == predicted([lone])
    assert {p for p, _ in listed([str(root / "**" / "*.png")])} == {
        str(root / "2024/01/a.png"),
        str(root / "2024/02/c.png"),
    }


def test_listing_refuses_paths_it_cannot_use(tmp_path: Path) -> None:
    img = _png(tmp_path / "a.png")
    npz = _savez(tmp_path / "w.npz", [np.ones((3, 3), np.uint8)])
    with pytest.raises(DataError, match="reads images, not wafer maps"):
        list(Listing([npz], "image").units())
    with pytest.raises(DataError, match="reads wafer maps"):
        list(Listing([img], "wafer").units())
    with pytest.raises(DataError, match="no such file"):
        list(Listing([tmp_path / "missing"], "image").units())
    with pytest.raises(DataError, match="no file or folder matches"):
        list(Listing([str(tmp_path / "*.tif")], "image").units())


# ---------------------------------------------------------------------- runs
@pytest.mark.realdata
def test_local_run_rows_equal_pipeline_run_and_resume_scores_nothing(
    wm811k_dir: Path, tmp_path: Path
) -> None:
    npz = wm811k_dir / "WM811K_train_1_split.npz"
    out = tmp_path / "out"
    first = inspect_archive(WAFER_MODEL, npz, out, engine="local", batch_size=100, progress=False)
    assert (first.listed, first.scored, first.errors) == (623, 623, 0)
    assert sum(first.verdicts.values()) == 623
    rows = read_results(out).to_pylist()
    assert_rows_equal(rows, reference_rows(WAFER_MODEL, [str(npz)], batch_size=100))
    assert {r["model_digest"] for r in rows} == {model_digest(WAFER_MODEL)}
    parts = part_rows(out)
    assert len(parts) == 7 and sum(parts.values()) == 623
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("part-*")}

    again = inspect_archive(WAFER_MODEL, [npz, npz], out, engine="local", progress=False)
    assert (again.listed, again.already_done, again.scored) == (623, 623, 0)
    assert {p: p.stat().st_mtime_ns for p in out.glob("part-*")} == stamps


@pytest.mark.realdata
def test_corrupt_inputs_give_error_rows_and_retry_scores_them_again(
    tiles: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles["data"], data, symlinks=True)
    good = sorted((data / "MT_Free" / "Imgs").glob("*.jpg"))
    broken = data / "MT_Free" / "Imgs" / "zz-truncated.jpg"
    broken.write_bytes(good[0].read_bytes()[:300])
    fake = data / "MT_Free" / "Imgs" / "zz-text.jpg"
    fake.write_text("not a picture")
    out = tmp_path / "out"
    summary = inspect_archive(tiles["model"], data, out, engine="local", progress=False)
    assert summary.errors == 2 and summary.scored == summary.listed
    rows = {key_of(r): r for r in read_results(out).to_pylist()}
    for f in (broken, fake):
        row = rows.pop((str(f), -1))
        assert row["error"].startswith(str(f)) and row["verdict"] is None
    # the other inputs score as on the clean set (their batch lost two inputs: not bitwise)
    expected = reference_rows(tiles["model"], [str(tiles["data"])], batch_size=16)
    assert len(rows) == len(expected)
    for (path, index), ref in expected.items():
        row = rows[(str(data / Path(path).relative_to(tiles["data"])), index)]
        assert row["error"] is None and row["score"] == pytest.approx(ref["score"], rel=1e-5)
        assert (row["verdict"] == "defect") == ref["anomalous"]

    shutil.copyfile(good[0], broken)  # fixed on disk: only a retry scores it again
    plain = inspect_archive(tiles["model"], data, out, engine="local", progress=False)
    assert plain.scored == 0
    retry = inspect_archive(
        tiles["model"], data, out, engine="local", retry_errors=True, progress=False
    )
    assert (retry.scored, retry.errors) == (2, 1)
    final = read_results(out).to_pylist()
    assert len({key_of(r) for r in final}) == len(final) == summary.listed
    by_key = {key_of(r): r for r in final}
    assert by_key[(str(broken), -1)]["error"] is None
    assert by_key[(str(fake), -1)]["error"] is not None


def test_deduplicate_keeps_the_first_row_of_each_input(tmp_path: Path) -> None:
    maps = [np.ones((12, 12), np.uint8) for _ in range(5)]
    path = _savez(tmp_path / "lot.npz", maps)
    out = tmp_path / "out"
    inspect_archive(WAFER_MODEL, path, out, engine="local", batch_size=2, progress=False)
    parts = sorted(out.glob("part-*.parquet"))  # named by hashes: any order
    import pyarrow.parquet as pq

    sizes = {p: pq.ParquetFile(p).metadata.num_rows for p in parts}
    assert sorted(sizes.values()) == [1, 2, 2]
    first = next(p for p in parts if sizes[p] == 2)
    late = first.with_name(first.name[:-8] + "zz.parquet")  # a late writer's copy
    shutil.copyfile(first, late)
    assert read_results(out).num_rows == 7
    digest = model_digest(WAFER_MODEL)
    assert ResultStore(out).deduplicate(digest) == 2
    rows = read_results(out).to_pylist()
    assert len(rows) == 5 and not late.exists()
    assert ResultStore(out).deduplicate(digest) == 0


def test_results_go_to_a_pyarrow_uri(tmp_path: Path) -> None:
    path = _savez(tmp_path / "lot.npz", [np.ones((9, 9), np.uint8)] * 3)
    uri = (tmp_path / "by-uri").as_uri()
    summary = inspect_archive(WAFER_MODEL, path, uri, engine="local", progress=False)
    assert summary.scored == 3 and summary.out == uri
    assert read_results(uri).num_rows == 3 == read_results(tmp_path / "by-uri").num_rows
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ScaleError, match="is a file"):
        inspect_archive(WAFER_MODEL, path, tmp_path / "a-file", engine="local", progress=False)


# ---------------------------------------------------------------------- models
def test_model_digest_names_the_model_exactly(tmp_path: Path) -> None:
    """Format 1 folders (no digests in the spec) hash their state files; a worker refuses
    a model that changed since the run started."""
    legacy = tmp_path / "legacy"
    shutil.copytree(WAFER_MODEL, legacy)
    info = ModelInfo.read(legacy)
    assert info.digest == model_digest(WAFER_MODEL) and info.backend == "torch"
    assert (info.task, info.kind) == ("classify", "wafer")
    state = legacy / "stage-01-classifier.pt"
    state.write_bytes(state.read_bytes()[:-1] + bytes([state.read_bytes()[-1] ^ 1]))
    assert model_digest(legacy) != info.digest
    with pytest.raises(ScaleError, match="changed since the run started"):
        load_scorer(info)

    import inspectkit as ik

    current = tmp_path / "current"
    ik.Pipeline.load(WAFER_MODEL).save(current)
    spec = (current / "pipeline.json").read_bytes()
    assert model_digest(current) == hashlib.sha256(spec).hexdigest()


@pytest.mark.realdata
def test_an_exported_model_scores_in_onnx_runtime(tiles: dict[str, Path], tmp_path: Path) -> None:
    """A ``.onnx`` model runs in ONNX Runtime, its inputs decoded by the runtime's decoder:
    rows equal ``InspectionModel.run_arrays`` on the same images; the digest is the
    sidecar's."""
    pytest.importorskip("onnxruntime", reason="pip install 'inspectkit[onnx]'")
    import inspectkit as ik
    import inspectkit_runtime as ikr
    from inspectkit_runtime.images import decode_image

    exported = tmp_path / "deploy" / "line.onnx"
    ik.Pipeline.load(tiles["model"]).export(exported)
    info = ModelInfo.read(exported)
    assert (info.backend, info.task, info.channels) == ("onnx", "anomaly", 1)
    assert info.digest == hashlib.sha256(exported.with_suffix(".json").read_bytes()).hexdigest()
    out = tmp_path / "out"
    summary = inspect_archive(exported, tiles["data"], out, engine="local", progress=False)
    files = [u.path for u in Listing([tiles["data"]], "image").units()]
    assert (summary.scored, summary.errors) == (len(files), 0)
    model = ikr.load(exported)
    ref = model.run_arrays([decode_image(f, 1) for f in files])
    rows = {r["path"]: r for r in read_results(out).to_pylist()}
    for i, f in enumerate(files):
        assert rows[f]["score"] == float(ref["score"][i])
        assert (rows[f]["verdict"] == "defect") == bool(ref["anomalous"][i])
        assert rows[f]["threshold"] == model.threshold
    # the runtime's region boxes, in each file's pixels
    sizes = [decode_image(f, 1).shape[:2] for f in files]
    for f, boxes in zip(files, model.regions(ref, sizes)):
        assert rows[f]["regions"] == boxes
        assert bool(boxes) == (rows[f]["verdict"] != "good")


def test_ray_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from inspectkit.cli import main

    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.setitem(sys.modules, name, None)  # also when a Ray test ran before
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ScaleError, match=r"pip install 'inspectkit\[ray\]'"):
        inspect_archive(WAFER_MODEL, tmp_path, tmp_path / "out", engine="ray")
    with pytest.raises(ScaleError, match="unknown engine 'dask'"):
        inspect_archive(WAFER_MODEL, tmp_path, tmp_path / "out", engine="dask")
    args = ["predict", "--model", str(WAFER_MODEL), "--engine", "ray", "--out", str(tmp_path)]
    assert main([*args, str(tmp_path)]) == 2


# ---------------------------------------------------------------------- command line
def test_predict_out_writes_parquet_and_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspectkit.cli import main

    path = _savez(tmp_path / "lot.npz", [np.ones((9, 9), np.uint8)] * 3)
    out = tmp_path / "out"
    base = ["predict", "--model", str(WAFER_MODEL), "-q"]
    assert main([*base, "--out", str(out), "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["schema"] == "inspectkit.predict-archive/1"
    assert (doc["scored"], doc["errors"], doc["model_digest"]) == (3, 0, model_digest(WAFER_MODEL))
    assert read_results(out).num_rows == 3
    assert main([*base, "--out", str(out), str(path)]) == 0
    assert "scored 0 inputs (3 already done of 3)" in capsys.readouterr().out
    assert main([*base, "--workers", "2", str(path)]) == 2
    assert "give --out DIR" in capsys.readouterr().err
