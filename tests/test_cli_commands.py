"""The command line's shape: commands by registry, a torch-free start, ``spec-schema``,
``--spec`` validation and overrides, ``--method`` checked when ``train`` runs, and a
Pascal-VOC folder (NEU-DET) through ``train``/``predict``/``evaluate``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import ENV, TINY_CLASSIFIER, cli, make_tree, user_error

from inspectkit.cli import COMMANDS, build_parser, main
from inspectkit.cli.train import spec_pipeline
from inspectkit.pipeline import Pipeline


@pytest.fixture
def err(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    return lambda *argv: user_error(capsys, *argv)


BUILT_IN = ["demo", "evaluate", "explain", "generate", "predict", "spec-schema", "train"]

COLD_START = """
import json, sys
from inspectkit.cli import main
codes = []
for argv in (["--help"], ["--version"], ["train", "--help"], ["spec-schema", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
import inspectkit as ik
print(json.dumps({"codes": codes, "version": ik.__version__,
                  "heavy": sorted(m for m in ("torch", "torchvision", "pydantic", "numpy")
                                  if m in sys.modules)}))
"""


def test_help_and_version_do_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", COLD_START], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0, 0]
    assert result["heavy"] == []  # nor numpy or pydantic: the parser needs none of them
    assert f"inspectkit {result['version']}" in proc.stdout


def test_every_command_is_found_through_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(BUILT_IN) <= set(COMMANDS.names())
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert set(BUILT_IN) <= set(sub.choices)
    assert main([]) == 2
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[0] for line in lines if line.startswith(" " * 4) and line[4] != " "]
    assert listed[:7] == [
        "demo",
        "train",
        "predict",
        "evaluate",
        "explain",
        "generate",
        "spec-schema",
    ]


def test_spec_schema_prints_the_published_schema(capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["spec-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(Pipeline.spec_schema()))
    spec = json.loads(json.dumps(TINY_CLASSIFIER))
    spec["stages"][0]["config"]["size"] = [16, 16]
    jsonschema.validate(spec, schema)
    spec["stages"][1]["config"]["epochs"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema)
    assert main(["spec-schema", "--indent", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_spec_schema_accepts_a_square_size_as_one_number() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(TINY_CLASSIFIER, Pipeline.spec_schema())  # "size": 16


def test_spec_files_are_checked_with_one_line_naming_file_stage_and_setting(
    tmp_path: Path, err
) -> None:  # type: ignore[no-untyped-def]
    tree = make_tree(tmp_path / "tree", n=2)
    spec = tmp_path / "line-spec.json"

    def train_error(content: object, *extra: str) -> str:
        spec.write_text(json.dumps(content))
        args = ["train", "--data", str(tree), "--out", str(tmp_path / "m"), "--spec", str(spec)]
        return err(*args, *extra)

    bad = json.loads(json.dumps(TINY_CLASSIFIER))
    bad["stages"][1]["config"]["epochs"] = 0  # what the schema refuses, the command refuses
    text = train_error(bad)
    assert "line-spec.json" in text and "Classifier" in text and "epochs" in text
    bad["stages"][1]["config"] = {"epochz": 3}
    text = train_error(bad)
    assert "line-spec.json" in text and "Classifier" in text and "epochz" in text
    assert "line-spec.json" in train_error({"stages": {"name": "wrangle"}})
    assert "does the classify task, not anomaly" in train_error(
        TINY_CLASSIFIER, "--task", "anomaly"
    )
    # an override the stage refuses is named the same way
    assert "epochs" in train_error(TINY_CLASSIFIER, "--epochs", "0")
    assert not (tmp_path / "m").exists()  # nothing was trained or written


def test_epochs_seed_and_quiet_override_a_spec(tmp_path: Path) -> None:
    spec = json.loads(json.dumps(TINY_CLASSIFIER))
    spec["stages"][1]["config"]["seed"] = 5
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    kept = spec_pipeline(path, epochs=None, seed=None, progress=True).get_params()
    assert kept["classifier__epochs"] == 2 and kept["classifier__seed"] == 5  # the spec's own
    assert kept["classifier__progress"] is True
    changed = spec_pipeline(path, epochs=7, seed=11, progress=False).get_params()
    assert changed["classifier__epochs"] == 7 and "wrangle__epochs" not in changed
    assert changed["classifier__seed"] == changed["wrangle__seed"] == 11
    assert changed["classifier__progress"] is False


def test_unknown_detector_is_refused_when_train_runs_listing_the_names(tmp_path: Path, err) -> None:  # type: ignore[no-untyped-def]
    tree = make_tree(tmp_path / "tree", n=2)
    out = tmp_path / "m"
    text = err(
        "train", "--data", str(tree), "--task", "anomaly", "--method", "magic", "--out", str(out)
    )
    assert "inspectkit train: --method: unknown value 'magic'" in text
    for name in ("patchcore", "padim", "autoencoder", "selfsupervised", "ensemble"):
        assert name in text
    assert not out.exists()


@pytest.mark.realdata
def test_neu_voc_folder_through_train_predict_evaluate(neu_det_dir: Path, tmp_path: Path) -> None:
    """A real NEU-DET subset (4 images per class with their XML) as ``--data``."""
    subset = tmp_path / "neu"
    for sub in ("IMAGES", "ANNOTATIONS"):
        (subset / sub).mkdir(parents=True)
    classes = {p.stem.rsplit("_", 1)[0] for p in (neu_det_dir / "IMAGES").iterdir()}
    for cls in sorted(classes):
        for i in range(1, 5):
            shutil.copy(neu_det_dir / "IMAGES" / f"{cls}_{i}.jpg", subset / "IMAGES")
            shutil.copy(neu_det_dir / "ANNOTATIONS" / f"{cls}_{i}.xml", subset / "ANNOTATIONS")
    model = tmp_path / "steel"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_CLASSIFIER))
    proc = cli(
        "train", "--data", str(subset), "--out", str(model), "--spec", str(spec), "--json", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    assert card["layout"] == "voc" and card["samples"] == 24 and card["channels"] == 3
    assert card["class_counts"] == dict.fromkeys(card["classes"], 4) and len(card["classes"]) == 6
    proc = cli("predict", "--model", str(model), str(subset), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["predictions"]
    assert len(rows) == 24 and all(Path(r["input"]).parent.name == "IMAGES" for r in rows)
    proc = cli("evaluate", "--model", str(model), "--data", str(subset), "--json")
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    assert ev["counts"]["total"] == 24 and ev["classes"] == card["classes"]


def test_the_readme_spec_example_is_a_valid_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", readme, re.S)
    specs = [json.loads(b) for b in blocks if '"stages"' in b]
    assert specs
    for spec in specs:
        jsonschema.validate(spec, Pipeline.spec_schema())
        assert len(Pipeline.from_spec(spec).stages) == len(spec["stages"])


def test_card_is_saved_with_the_model_and_the_previous_model_is_kept(
    tmp_path: Path, err, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    tree = make_tree(tmp_path / "tree", n=3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_CLASSIFIER))
    model = tmp_path / "models" / "line"
    train = ["train", "--data", str(tree), "--out", str(model), "--spec", str(spec), "-q"]
    assert main([*train, "--json", "--seed", "1"]) == 0
    card = json.loads(capsys.readouterr().out)
    saved = Pipeline.load(model)
    stored = json.loads(saved.attachments["inspectkit-model.json"])
    assert stored == {k: v for k, v in card.items() if k != "model"}
    assert stored["seed"] == 1 and stored["layout"] == "class-folders"
    assert main([*train, "--seed", "2"]) == 0
    assert sorted(p.name for p in model.parent.iterdir()) == ["line", "line.prev"]
    previous = json.loads(
        Pipeline.load(tmp_path / "models" / "line.prev").attachments["inspectkit-model.json"]
    )
    assert previous["seed"] == 1
    assert main([*train, "--keep", "0"]) == 0  # replaced in place: line.prev is still seed 1
    assert sorted(p.name for p in model.parent.iterdir()) == ["line", "line.prev"]
    assert (
        json.loads((model.parent / "line.prev" / "inspectkit-model.json").read_text())["seed"] == 1
    )
    assert "--keep must be 0 or more" in err(*train, "--keep", "-1")
    # explain checks its method against the registered ones, naming them
    text = err(
        "explain",
        "--model",
        str(model),
        str(tree / "ok"),
        "--out",
        str(tmp_path / "e"),
        "--method",
        "lime",
    )
    assert "--method: unknown value 'lime'" in text and "gradcam" in text and "sise" in text
