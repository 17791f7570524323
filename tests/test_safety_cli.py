"""Issue #16 on the command line: nothing a user types deletes data or mixes models, file
names cannot forge output, and every refusal is one line with exit code 2 (items 1, 4,
9, 10, 12-15)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import ENV, TINY_CLASSIFIER, cli, make_tree, user_error

from inspectkit.cli import main
from inspectkit.cli.card import CARD_FILE, SAMPLES_FILE
from inspectkit.cli.command import SEED_MAX
from inspectkit.cli.project import SPLIT_FILE
from inspectkit.errors import ConfigError
from inspectkit.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def err(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    return lambda *argv: user_error(capsys, *argv)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("safety-cli")


@pytest.fixture(scope="module")
def spec(work: Path) -> Path:
    path = work / "spec.json"
    path.write_text(json.dumps(TINY_CLASSIFIER))
    return path


@pytest.fixture(scope="module")
def tree(work: Path) -> Path:
    return make_tree(work / "tree", n=4)


def _train(*argv: str) -> int:
    return main(["train", *argv, "-q"])


def _card(model: Path) -> dict:
    return json.loads(Pipeline.load(model).attachments[CARD_FILE])


# ---------------------------------------------------------------------- 1: --out
def test_a_project_folder_as_out_is_refused_before_training(
    work: Path, spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # inspectkit train --data proj/data --spec proj/pipeline.json --out proj
    proj = work / "proj"
    make_tree(proj / "data", n=3)
    shutil.copy(spec, proj / "pipeline.json")
    before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
    capsys.readouterr()
    assert main(["train", "--data", str(proj / "data"), "--spec", str(proj / "pipeline.json"),
                 "--out", str(proj), "--replace"]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1
    assert "holds no saved model" in captured.err and "choose another folder" in captured.err
    assert "training a" not in captured.out  # refused before any training
    assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before


def test_training_over_a_model_of_the_other_task_needs_replace(
    work: Path, tree: Path, spec: Path, err
) -> None:  # type: ignore[no-untyped-def]
    model = work / "models" / "line"
    assert _train("--data", str(tree), "--out", str(model), "--spec", str(spec)) == 0
    good = work / "good-only"
    make_tree(good, n=4)
    shutil.rmtree(good / "scratch")
    anomaly = ["--data", str(good), "--task", "anomaly", "--method", "padim", "--size", "16"]
    text = err("train", *anomaly, "--out", str(model))
    assert "holds a classify model" in text and "--replace" in text
    assert _card(model)["task"] == "classify"  # untouched
    assert _train(*anomaly, "--out", str(model), "--replace") == 0
    assert _card(model)["task"] == "anomaly"
    assert _card(model.with_name("line.prev"))["task"] == "classify"  # kept, as always


# ---------------------------------------------------------------------- 4: rollback
def test_rollback_puts_the_previous_model_back_with_its_card(
    work: Path, tree: Path, spec: Path, err, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    model = work / "models" / "rolled"
    train = ["--data", str(tree), "--out", str(model), "--spec", str(spec)]
    assert _train(*train, "--seed", "1") == 0
    assert "no previous version" in err("rollback", "--model", str(model))
    assert _train(*train, "--seed", "2") == 0
    assert _card(model)["seed"] == 2
    capsys.readouterr()
    assert main(["rollback", "--model", str(model), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rolled_back"] and out["seed"] == 1 and _card(model)["seed"] == 1
    assert _card(model.with_name("rolled.prev"))["seed"] == 2
    assert main(["rollback", "--model", str(model)]) == 0  # a second rollback undoes it
    assert "previous classify model is back" in capsys.readouterr().out
    assert _card(model)["seed"] == 2
    assert "no previous version" in err("rollback", "--model", str(work / "models" / "none"))


def test_rollback_through_a_project(work: Path, spec: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    project = work / "rb-project"
    make_tree(project / "data", n=3)
    args = ["--project", str(project), "--spec", str(spec)]
    assert _train(*args, "--seed", "3") == 0
    assert _train(*args, "--seed", "4") == 0
    assert main(["rollback", "--project", str(project), "-q"]) == 0
    assert _card(project / "models" / "model")["seed"] == 3


# ---------------------------------------------------------------------- 12: one-line refusals
def test_a_card_that_contradicts_its_pipeline_is_refused(work: Path, err) -> None:  # type: ignore[no-untyped-def]
    maps = str(REPO / "src" / "inspectkit" / "data" / "wm811k_demo_test.npz")
    legacy = work / "legacy"
    shutil.copytree(REPO / "tests" / "fixtures" / "legacy-0.1.0" / "wafer-classifier", legacy)
    card = json.loads((legacy / CARD_FILE).read_text())
    (legacy / CARD_FILE).write_text(json.dumps({**card, "task": "anomaly"}))
    # before: AttributeError on the scores a classifier does not have (exit 1)
    text = err("predict", "--model", str(legacy), maps)
    assert "says task 'anomaly' but its pipeline does 'classify'" in text
    # a current save whose card lies the same way (written as one unit, digests match)
    lying = work / "lying"
    Pipeline.load(legacy).save(lying, attachments={CARD_FILE: json.dumps({"task": "anomaly"})})
    assert "does not belong to this model" in err("evaluate", "--model", str(lying), "--data", maps)
    Pipeline.load(legacy).save(work / "bad-ch", attachments={CARD_FILE: '{"channels": 7}'})
    assert "channels 7" in err("predict", "--model", str(work / "bad-ch"), maps)


def test_train_on_a_pickle_that_would_run_code_is_one_line_and_no_model(work: Path, err) -> None:  # type: ignore[no-untyped-def]
    # before: f2py's main() ran and called sys.exit: `inspectkit train` exited 0, no model
    evil = work / "LSWMD.pkl"
    evil.write_bytes(b"cnumpy.f2py.__main__\nmain\n)R.")
    text = err("train", "--data", str(evil), "--out", str(work / "models" / "evil"))
    assert "LSWMD.pkl" in text and "numpy.f2py.__main__.main" in text and "refused" in text
    assert not (work / "models" / "evil").exists()


@pytest.mark.parametrize("command", ["train", "demo", "generate"])
def test_a_seed_out_of_range_is_refused_when_arguments_are_parsed(command: str, err) -> None:  # type: ignore[no-untyped-def]
    # before: --seed 2**70 reached numpy and torch (exit 1)
    extra = {"train": ["--data", "/no/such/data"], "generate": ["--class", "x", "--n", "1"]}
    text = err(command, *extra.get(command, []), "--seed", str(2**70))
    assert "--seed" in text and "2**63 - 1" in text and "/no/such" not in text
    assert "--seed" in err(command, *extra.get(command, []), "--seed", "-1")


def test_the_seed_range_is_the_stages_range() -> None:
    from inspectkit.stages import Wrangle

    Wrangle(seed=SEED_MAX)
    with pytest.raises(ConfigError):
        Wrangle(seed=SEED_MAX + 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dat", "x", "--out", "y"],
        ["train", "--data", "x", "--ou", "y"],
        ["predict", "--mod", "m", "x.png"],
        ["evaluate", "--model", "m", "--dat", "x"],
        ["--vers"],
        ["train", "--data", "x", "--out", "y", "--proj", "p"],
    ],
)
def test_abbreviated_options_are_refused(argv: list[str], err) -> None:  # type: ignore[no-untyped-def]
    # before: `inspectkit train --dat x` trained
    assert "unrecognized arguments" in err(*argv)


def test_a_full_disk_during_train_is_one_line_and_keeps_the_previous_model(
    work: Path, tree: Path, spec: Path
) -> None:
    model = work / "models" / "disk"
    assert _train("--data", str(tree), "--out", str(model), "--spec", str(spec)) == 0
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    siblings = sorted(p.name for p in model.parent.iterdir())

    def small_files() -> None:  # as on a full disk: writes fail with EFBIG, no signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000))

    proc = subprocess.run(
        [sys.executable, "-m", "inspectkit.cli", "train", "--data", str(tree), "--out",
         str(model), "--spec", str(spec), "-q"],
        capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=small_files,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("inspectkit")]
    assert len(errors) == 1 and errors[0].startswith(f"inspectkit: error: {model}: ")
    assert "previous model is untouched" in errors[0]
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert sorted(p.name for p in model.parent.iterdir()) == siblings


# ---------------------------------------------------------------------- 13: broken pipe
def test_predict_into_head_exits_quietly(work: Path, tree: Path, spec: Path) -> None:
    model = work / "models" / "pipe"
    assert _train("--data", str(tree), "--out", str(model), "--spec", str(spec)) == 0
    # 1,600 rows (about 150 kB, more than a pipe holds) so that head leaves mid-stream
    writer = subprocess.Popen(
        [sys.executable, "-m", "inspectkit.cli", "predict", "--model", str(model),
         *[str(tree)] * 200],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    assert writer.stdout is not None
    writer.stdout.close()
    first = head.communicate(timeout=300)[0].decode()
    stderr = writer.communicate(timeout=300)[1].decode()
    assert first.count("\n") == 1 and "\t" in first
    assert writer.returncode == 0 and stderr == ""


# ---------------------------------------------------------------------- 15: --on-error skip
@pytest.fixture(scope="module")
def tree_model(work: Path, tree: Path, spec: Path) -> Path:
    model = work / "models" / "skip"
    assert _train("--data", str(tree), "--out", str(model), "--spec", str(spec)) == 0
    return model


def test_predict_skips_unreadable_files_and_lists_them(
    work: Path, tree: Path, tree_model: Path, err, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    mixed = work / "mixed"
    shutil.copytree(tree / "ok", mixed)
    (mixed / "broken.png").write_bytes(b"\x89PNG truncated")
    assert "broken.png" in err("predict", "--model", str(tree_model), str(mixed))  # default
    capsys.readouterr()
    argv = ["predict", "--model", str(tree_model), str(mixed), "--on-error", "skip"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["predictions"]) == 4
    assert len(out["skipped"]) == 1 and "broken.png" in out["skipped"][0]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert [line.split("\t")[1] for line in lines].count("SKIPPED") == 1
    # nothing readable: the skipped list is still printed, but the exit code is 2
    only_bad = work / "only-bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"nope")
    capsys.readouterr()
    assert main(["predict", "--model", str(tree_model), str(only_bad), "--on-error", "skip",
                 "--json"]) == 2  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] and "nothing could be scored" in captured.err


def test_evaluate_skips_unreadable_files_and_says_so(
    work: Path, tree: Path, tree_model: Path, err, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    data = work / "eval-mixed"
    shutil.copytree(tree, data)
    (data / "ok" / "zz.png").write_bytes(b"\x89PNG truncated")
    assert "zz.png" in err("evaluate", "--model", str(tree_model), "--data", str(data))
    capsys.readouterr()
    argv = ["evaluate", "--model", str(tree_model), "--data", str(data), "--on-error", "skip"]
    assert main([*argv, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["counts"]["total"] == 8 and ev["counts"]["skipped"] == 1
    assert any(n.startswith("skipped ") and "zz.png" in n for n in ev["notes"])


# ---------------------------------------------------------------------- 9: file names
NAMES = [b"a\tb.png", b"LOT42_part7.png\nok 1.000\nx.png", b"c\xfe.png", b"plain.png"]


def test_file_names_cannot_forge_rows_or_break_a_command(work: Path, spec: Path) -> None:
    # before: a forged "LOT42_part7.png ok 1.000" row, or a ValidationError (exit 1)
    root = os.fsencode(work / "odd")
    for cls, base in ((b"ok", 30), (b"scr\xffatch", 150)):
        os.makedirs(root + b"/" + cls)
        for i, name in enumerate(NAMES * 2):
            a = np.full((24, 24), base + i, np.uint8)
            with open(root + b"/" + cls + b"/" + bytes([65 + i]) + name, "wb") as fh:
                Image.fromarray(a).save(fh, format="PNG")
    data = os.fsdecode(root)
    model = work / "models" / "odd"
    proc = cli("train", "--data", data, "--out", str(model), "--spec", str(spec), "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((model / CARD_FILE).read_text())["classes"] == ["ok", "scr\\xffatch"]
    text = cli("predict", "--model", str(model), data)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 16 and all(line.count("\t") == 3 for line in lines)
    assert not any(line.startswith("ok 1.000") for line in lines)
    assert sum("LOT42_part7.png\\nok 1.000\\nx.png" in line for line in lines) == 4
    js = cli("predict", "--model", str(model), data, "--json")
    rows = json.loads(js.stdout)["predictions"]
    assert len(rows) == 16 and all(r["input"].isprintable() for r in rows)
    assert sorted(r["input"] for r in rows) == sorted(line.split("\t")[0] for line in lines)
    ev = cli("evaluate", "--model", str(model), "--data", data)
    assert ev.returncode == 0 and "scr\\xffatch" in ev.stdout


# ---------------------------------------------------------------------- 10: held-out data
def test_a_project_holds_out_a_test_split_that_evaluate_uses(
    work: Path, spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # before: evaluate --project scored the project's training data with no note
    project = work / "held"
    make_tree(project / "data", n=10)
    args = ["--project", str(project), "--spec", str(spec), "--seed", "5"]
    assert _train(*args) == 0
    split = json.loads((project / SPLIT_FILE).read_text())
    assert len(split["test"]) == 4 and split["seed"] == 5  # 2 of each class of 10
    card = _card(project / "models" / "model")
    assert card["samples"] == 16 and card["held_out"]["test_samples"] == 4
    capsys.readouterr()
    assert main(["evaluate", "--project", str(project), "--json", "-q"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["counts"]["total"] == 4
    assert any("not trained on: 4 of 20" in n for n in ev["notes"])
    assert not any("used to train" in n for n in ev["notes"])
    # made once: a retrain with another seed keeps the same test samples
    assert _train("--project", str(project), "--spec", str(spec), "--seed", "6") == 0
    assert json.loads((project / SPLIT_FILE).read_text())["test"] == split["test"]
    # evaluating on the whole data folder says how much of it trained the model
    capsys.readouterr()
    assert main(["evaluate", "--project", str(project), "--data", str(project / "data"),
                 "--json", "-q"]) == 0  # fmt: skip
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("16 of the 20 evaluated samples were used to train") for n in notes)


def test_an_anomaly_evaluation_says_it_rescored_training_images(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # before: anomaly evaluate re-scored the good images used for training, no note
    data = make_tree(work / "goods-and-defects", n=6)
    model = work / "models" / "detector"
    assert _train("--data", str(data), "--task", "anomaly", "--method", "padim", "--size",
                  "16", "--out", str(model)) == 0  # fmt: skip
    assert len(Pipeline.load(model).attachments[SAMPLES_FILE]) == 8 * 6  # the 6 good ones
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", "-q"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("6 of the 12 evaluated samples were used to train") for n in notes)
