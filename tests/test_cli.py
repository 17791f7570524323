"""The ``inspectkit`` command: every subcommand through a subprocess, bad input included.

Each command runs at least once as a real process (``python -m inspectkit.cli``) on its
happy path and once on a bad input (exit code 2, one line on stderr naming the file, no
traceback). Further cases call ``inspectkit.cli.main`` in-process to save the ~3 s that
importing torch costs every new process. Training is kept to one or two epochs: these
tests check the command line's contract, not model quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inspectkit.cli import EVALUATE_SCHEMA, PREDICT_SCHEMA, demo_data_path, detect_layout, main

ENV = {
    **os.environ,
    "INSPECTKIT_PROGRESS": "0",
    "OMP_NUM_THREADS": "1",  # tiny models: one thread is as fast and never fights for cores
    "PYTHONWARNINGS": "ignore",
}
EVALUATE_KEYS = {
    "schema",
    "task",
    "model",
    "data",
    "title",
    "metrics",
    "classes",
    "confusion",
    "per_class",
    "counts",
    "notes",
    "report_html",
}
TINY_CLASSIFIER = {
    "stages": [
        {"name": "wrangle", "config": {"size": 16}},
        {
            "name": "classifier",
            "config": {"max_params": 2000, "batch_size": 8, "epochs": 2, "val_fraction": 0},
        },
    ]
}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspectkit.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def assert_user_error(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("inspectkit")
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in lines[0]


# ---------------------------------------------------------------------- fixtures
def make_tree(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for cls, base in (("ok", 30), ("scratch", 140)):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 60, (24, 24)).astype(np.uint8) + base
            if cls == "scratch":
                a[10:12, 2:22] = 255
            Image.fromarray(a).save(d / f"{cls}_{i}.png")
    return root


def make_wafer_npz(path: Path, per_class: int = 10) -> Path:
    z = np.load(demo_data_path("wm811k_demo_train.npz"))
    ft, offsets = z["failure_type"], z["offsets"]
    idx = [i for c in ("Center", "Edge-Ring", "none") for i in np.flatnonzero(ft == c)[:per_class]]
    maps = [z["flat"][offsets[i] : offsets[i + 1]] for i in idx]
    np.savez(
        path,
        flat=np.concatenate(maps),
        shapes=z["shapes"][idx],
        offsets=np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64),
        failure_type=ft[idx],
    )
    return path


def make_mvtec(root: Path) -> Path:
    rng = np.random.default_rng(1)

    def good() -> np.ndarray:
        return rng.integers(90, 140, (32, 32)).astype(np.uint8)

    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True)
    for i in range(10):
        Image.fromarray(good()).save(root / f"train/good/{i:03d}.png")
    for i in range(3):
        Image.fromarray(good()).save(root / f"test/good/{i:03d}.png")
        a = good()
        a[10:20, 10:20] = 255
        Image.fromarray(a).save(root / f"test/spot/{i:03d}.png")
        m = np.zeros((32, 32), np.uint8)
        m[10:20, 10:20] = 255
        Image.fromarray(m).save(root / f"ground_truth/spot/{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def tree(work: Path) -> Path:
    return make_tree(work / "tree")


@pytest.fixture(scope="module")
def tree_model(work: Path, tree: Path) -> Path:
    spec = work / "spec.json"
    spec.write_text(json.dumps(TINY_CLASSIFIER))
    out = work / "models" / "tree"
    proc = cli("train", "--data", str(tree), "--out", str(out), "--spec", str(spec), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "model saved to" in proc.stdout
    return out


# ---------------------------------------------------------------------- classify: class folders
def test_train_writes_model_and_card(tree_model: Path) -> None:
    assert (tree_model / "pipeline.json").is_file()
    card = json.loads((tree_model / "inspectkit-model.json").read_text())
    assert card["task"] == "classify" and card["kind"] == "image"
    assert card["classes"] == ["ok", "scratch"] and card["channels"] == 1
    assert card["class_counts"] == {"ok": 8, "scratch": 8} and card["layout"] == "class-folders"


def test_predict_and_evaluate_agree(tree: Path, tree_model: Path, work: Path) -> None:
    proc = cli("predict", "--model", str(tree_model), str(tree), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["schema"] == PREDICT_SCHEMA and out["task"] == "classify"
    rows = out["predictions"]
    assert len(rows) == 16
    for r in rows:
        assert set(r["probs"]) == {"ok", "scratch"}
        assert abs(sum(r["probs"].values()) - 1) < 1e-4
        assert r["predicted"] == max(r["probs"], key=r["probs"].get)
        assert Path(r["input"]).is_file()
    right = sum(Path(r["input"]).parent.name == r["predicted"] for r in rows)

    report_dir = work / "reports" / "tree"
    proc = cli(
        "evaluate",
        "--model",
        str(tree_model),
        "--data",
        str(tree),
        "--json",
        "--report",
        str(report_dir),
    )
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    assert set(ev) == EVALUATE_KEYS and ev["schema"] == EVALUATE_SCHEMA
    assert ev["task"] == "classify" and ev["classes"] == ["ok", "scratch"]
    assert ev["metrics"]["accuracy"] == pytest.approx(right / 16)
    assert sum(map(sum, ev["confusion"])) == 16 and ev["counts"]["total"] == 16
    assert ev["report_html"] == str(report_dir / "report.html")
    assert (report_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert json.loads((report_dir / "report.json").read_text())["metrics"] == ev["metrics"]


def test_predict_text_output_and_evaluate_table(
    tree: Path, tree_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tree / "ok" / "ok_0.png"
    assert main(["predict", "--model", str(tree_model), str(img)]) == 0
    line = capsys.readouterr().out.strip()
    name, predicted, prob, _alts = line.split("\t")
    assert name == str(img) and predicted in ("ok", "scratch") and 0.5 <= float(prob) <= 1
    assert main(["evaluate", "--model", str(tree_model), "--data", str(tree)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "scratch" in text and "precision" in text


def test_explain_writes_overlays(tree: Path, tree_model: Path, work: Path) -> None:
    out = work / "overlays"
    proc = cli(
        "explain",
        "--model",
        str(tree_model),
        str(tree / "scratch"),
        str(tree / "ok" / "ok_1.png"),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 9 and "9 overlays written" in proc.stdout
    index = json.loads((out / "overlays.json").read_text())
    assert index["method"] == "gradcam" and len(index["overlays"]) == 9
    im = Image.open(pngs[0])
    assert im.mode == "RGB" and im.size == (16, 16)


def test_generate_augment_pngs(tree: Path, work: Path) -> None:
    out = work / "generated"
    proc = cli(
        "generate",
        "--data",
        str(tree),
        "--class",
        "scratch",
        "--n",
        "5",
        "--method",
        "augment",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("scratch-*.png"))
    assert len(files) == 5
    arr = np.asarray(Image.open(files[0]))
    assert arr.shape == (24, 24) and arr.dtype == np.uint8
    assert arr.max() == 255  # the scratch (pure white) survives augmentation somewhere


def test_project_folder_convention(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = work / "project"
    make_tree(project / "data", n=6)
    assert main(["generate", "--project", str(project), "--class", "ok", "--n", "4", "-q"]) == 0
    assert len(list((project / "generated" / "ok").glob("*.png"))) == 4
    assert main(["train", "--project", str(project), "--epochs", "1", "--size", "16", "-q"]) == 0
    card = json.loads((project / "models" / "model" / "inspectkit-model.json").read_text())
    assert card["samples"] == 16  # 12 real + 4 generated
    assert card["class_counts"] == {"ok": 6, "scratch": 6}  # synthetic samples not counted
    capsys.readouterr()
    assert main(["evaluate", "--project", str(project), "--json", "-q"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["counts"]["total"] == 12  # evaluation reads data/ only, never generated/
    assert (project / "reports" / "model" / "report.html").is_file()


# ---------------------------------------------------------------------- classify: wafer maps
def test_wafer_npz_round_trip(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = make_wafer_npz(work / "wafers.npz")
    model = work / "models" / "wafer"
    proc = cli(
        "train",
        "--data",
        str(npz),
        "--out",
        str(model),
        "--epochs",
        "1",
        "--size",
        "16",
        "--seed",
        "3",
        "--json",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    assert card["kind"] == "wafer" and card["layout"] == "wafer-npz" and card["seed"] == 3
    assert {"Center", "Edge-Ring", "none"} <= set(card["classes"])
    assert main(["predict", "--model", str(model), str(npz), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["id"] for r in rows] == [f"wafers:{i}" for i in range(30)]
    assert main(["evaluate", "--model", str(model), "--data", str(npz), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["counts"]["total"] == 30
    right = sum(
        r["predicted"] == lab
        for r, lab in zip(rows, ["Center"] * 10 + ["Edge-Ring"] * 10 + ["none"] * 10)
    )
    assert ev["metrics"]["accuracy"] == pytest.approx(right / 30)
    # a wafer model refuses photos, naming the file
    assert main(["predict", "--model", str(model), str(demo_data_path("WM811K_NOTICE.txt"))]) == 2
    assert "WM811K_NOTICE.txt" in capsys.readouterr().err


def test_generate_wafer_npz_loads_back(work: Path) -> None:
    from inspectkit.sources import load_wafer_maps

    npz = make_wafer_npz(work / "wafers-gen.npz", per_class=6)
    out = work / "wafer-generated"
    assert (
        main(
            [
                "generate",
                "--data",
                str(npz),
                "--class",
                "Center",
                "--n",
                "7",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    files = list(out.glob("Center-*.npz"))
    assert len(files) == 1
    maps = load_wafer_maps(files[0])
    assert len(maps) == 7 and set(maps.labels) == {"Center"} and maps.kind == "wafer"
    assert len(list((out / "previews").glob("*.png"))) == 7


def test_lswmd_pickle_round_trip(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    n = 12
    labels = ["Center", "none", "", "Scratch"]  # "" = unlabelled, as in the original file
    df = pd.DataFrame(
        {
            "waferMap": [rng.integers(0, 3, (20 + i, 18 + i)).astype(np.uint8) for i in range(n)],
            "dieSize": [1000.0 + i for i in range(n)],
            "lotName": [f"lot{i // 3}" for i in range(n)],
            "waferIndex": [float(i + 1) for i in range(n)],
            "trianTestLabel": [np.array([["Training"]])] * n,
            "failureType": [
                np.array([[labels[i % 4]]]) if labels[i % 4] else np.zeros((0, 0)) for i in range(n)
            ],
        }
    )
    pkl = work / "LSWMD.pkl"
    df.to_pickle(pkl)
    model = work / "models" / "lswmd"
    assert (
        main(
            [
                "train",
                "--data",
                str(pkl),
                "--out",
                str(model),
                "--epochs",
                "1",
                "--size",
                "16",
                "-q",
            ]
        )
        == 0
    )
    card = json.loads((model / "inspectkit-model.json").read_text())
    assert card["layout"] == "lswmd" and card["samples"] == 9  # unlabelled rows skipped
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(pkl), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["total"] == 9


# ---------------------------------------------------------------------- anomaly: MVTec layout
def test_anomaly_train_predict_evaluate_explain(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_mvtec(work / "mvtec")
    model = work / "models" / "anomaly"
    proc = cli(
        "train",
        "--data",
        str(root),
        "--task",
        "anomaly",
        "--method",
        "ensemble",  # PatchCore + PaDiM on one scale
        "--size",
        "32",
        "--out",
        str(model),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads((model / "inspectkit-model.json").read_text())
    assert card["task"] == "anomaly" and card["samples"] == 10 and card["layout"] == "mvtec"
    files = [str(root / "test/spot/000.png"), str(root / "test/good/000.png")]
    assert main(["predict", "--model", str(model), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["input"] for r in rows] == files
    for r in rows:
        assert r["anomalous"] == (r["score"] > r["threshold"])
        assert 0 <= r["normalized"] <= 1
    assert rows[0]["score"] > rows[1]["score"]  # a white square on noise is anomalous
    assert main(["evaluate", "--model", str(model), "--data", str(root), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert set(ev) == EVALUATE_KEYS and ev["task"] == "anomaly"
    assert ev["counts"]["good"] == 3 and ev["counts"]["defective"] == 3  # the test split
    assert 0 <= ev["metrics"]["image_auroc"] <= 1
    out = work / "anomaly-maps"
    assert (
        main(["explain", "--model", str(model), str(root / "test"), "--out", str(out), "-q"]) == 0
    )
    assert len(list(out.glob("*.png"))) == 6
    index = json.loads((out / "overlays.json").read_text())
    assert index["method"] == "anomaly_map" and len(index["overlays"]) == 6


# ---------------------------------------------------------------------- demo
def test_demo_runs_and_writes_html(work: Path) -> None:
    out = work / "demo"
    proc = cli("demo", "--epochs", "1", "--size", "24", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 <= res["metrics"]["accuracy"] <= 1
    assert Path(res["report_html"]).is_file() and (out / "model" / "pipeline.json").is_file()
    assert json.loads((out / "report.json").read_text())["counts"]["total"] == 650
    card = json.loads((out / "model" / "inspectkit-model.json").read_text())
    assert card["task"] == "classify" and card["kind"] == "wafer" and card["layout"] == "wafer-npz"


# ---------------------------------------------------------------------- bad input, as a process
def test_bad_input_each_command(work: Path, tree_model: Path, tree: Path) -> None:
    missing = work / "no-such-folder"
    assert_user_error(cli("train", "--data", str(missing), "--out", str(work / "x")), str(missing))

    broken = work / "broken.png"
    broken.write_text("not an image")
    assert_user_error(cli("predict", "--model", str(tree_model), str(broken)), str(broken))

    bad_npz = work / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 garbage")
    assert_user_error(
        cli("evaluate", "--model", str(tree_model), "--data", str(bad_npz)), "bad.npz"
    )

    assert_user_error(
        cli("explain", "--model", str(work / "nope"), str(broken), "--out", str(work / "e")), "nope"
    )

    assert_user_error(
        cli(
            "generate", "--data", str(tree), "--class", "dent", "--n", "3", "--out", str(work / "g")
        ),
        "dent",
        str(tree),
    )


# ---------------------------------------------------------------------- bad input, in-process
def user_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``inspectkit ARGV`` in-process; it must exit 2 with one line on stderr."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    text = capsys.readouterr().err.strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text
    return text


@pytest.fixture
def err(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    return lambda *argv: user_error(capsys, *argv)


def test_more_bad_inputs(work: Path, tree: Path, tree_model: Path, err) -> None:  # type: ignore[no-untyped-def]
    corrupt_tree = work / "corrupt-tree"
    make_tree(corrupt_tree, n=3)
    (corrupt_tree / "ok" / "bad.png").write_bytes(b"\x89PNG truncated")
    assert "bad.png" in err("train", "--data", str(corrupt_tree), "--out", str(work / "m1"), "-q")

    spec = work / "bad-spec.json"
    spec.write_text("{not json")
    assert "bad-spec.json" in err(
        "train", "--data", str(tree), "--out", str(work / "m2"), "--spec", str(spec)
    )
    spec.write_text(json.dumps({"stages": [{"name": "no_such_stage"}]}))
    assert "no_such_stage" in err(
        "train", "--data", str(tree), "--out", str(work / "m2"), "--spec", str(spec)
    )

    blocker = work / "a-file"
    blocker.write_text("x")
    assert "a-file" in err("train", "--data", str(tree), "--out", str(blocker))
    assert blocker.read_text() == "x"  # nothing overwritten

    assert "--model" in err("predict", str(tree))
    assert "at least one" in err("predict", "--model", str(tree_model))
    assert "not a model folder" in err("predict", "--model", str(tree), str(tree))
    assert "unrecognised file type" in err("predict", "--model", str(tree_model), str(spec))
    assert "--n" in err(
        "generate", "--data", str(tree), "--class", "ok", "--n", "0", "--out", str(work / "g")
    )
    flat = work / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "a.png")
    assert "no labels" in err("evaluate", "--model", str(tree_model), "--data", str(flat))
    assert "project folder not found" in err("train", "--project", str(work / "no-project"))
    assert "--bogus" in err("train", "--data", str(tree), "--bogus")
    assert "invalid choice" in err(
        "train", "--data", str(tree), "--out", str(work / "m3"), "--task", "segment"
    )


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_internal_error_exit_1_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    cli_mod = importlib.import_module("inspectkit.cli.main")  # the module, not the function

    def boom(args: object) -> int:
        raise RuntimeError("disk on fire")

    parser = cli_mod.build_parser()
    monkeypatch.setattr(cli_mod, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=boom)  # type: ignore[union-attr]
    assert main(["demo"]) == 1
    text = capsys.readouterr().err
    assert "internal error: RuntimeError: disk on fire" in text and "Traceback" not in text


def test_detect_layout(work: Path, tree: Path) -> None:
    # a deprecated alias of inspectkit.sources.detect, with the same layout names
    with pytest.deprecated_call():
        assert detect_layout(tree) == "class-folders"
        assert detect_layout(make_mvtec(work / "layout-mvtec")) == "mvtec"
        tiles = work / "tiles" / "MT_Free" / "Imgs"
        tiles.mkdir(parents=True)
        assert detect_layout(work / "tiles") == "magnetic-tile"
        assert detect_layout(demo_data_path("wm811k_demo_test.npz")) == "wafer-npz"
        assert detect_layout(tree / "ok" / "ok_0.png") == "images"


def test_predict_streams_batches_in_input_order(
    work: Path, tree: Path, tree_model: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    import inspectkit.cli.predict as predict_mod

    monkeypatch.setattr(predict_mod, "PREDICT_BATCH", 3)  # 16 files → 6 batches
    files = sorted(str(f) for f in tree.rglob("*.png"))
    assert main(["predict", "--model", str(tree_model), "--json", "-q", str(tree)]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["input"] for r in rows] == files
    assert main(["predict", "--model", str(tree_model), "-q", str(tree)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    assert [line.split("\t")[1] for line in lines] == [r["predicted"] for r in rows]

    # a corrupt file late in the stream: exit 2 naming it, earlier rows already printed
    mixed = work / "mixed"
    mixed.mkdir()
    for f in files[:4]:
        (mixed / Path(f).name).write_bytes(Path(f).read_bytes())
    (mixed / "zz_broken.png").write_bytes(b"\x89PNG truncated")
    assert main(["predict", "--model", str(tree_model), "-q", str(mixed)]) == 2
    captured = capsys.readouterr()
    assert "zz_broken.png" in captured.err
    assert len(captured.out.strip().splitlines()) == 3  # the first full batch
