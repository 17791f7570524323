"""Settings by name (``get_params``/``set_params``), the published spec schema, the
generic plugin registry, and the atomic file helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inspectkit as ik
from inspectkit.atomic import atomic_write, swap_folder, temp_folder_beside
from inspectkit.errors import ConfigError, PipelineError
from inspectkit.registry import Registry
from inspectkit.stages import Classifier, Wrangle


def test_get_params_lists_every_stage_setting_by_prefix() -> None:
    pipe = ik.Pipeline([Wrangle(size=32), Classifier(epochs=7)])
    params = pipe.get_params()
    assert params["wrangle__size"] == (32, 32)
    assert params["classifier__epochs"] == 7
    assert set(params) == {f"wrangle__{k}" for k in Wrangle().get_params()} | {
        f"classifier__{k}" for k in Classifier().get_params()
    }


def test_set_params_changes_one_setting_and_validates_all_first() -> None:
    pipe = ik.Pipeline([Wrangle(size=32), Classifier(epochs=7)])
    pipe.set_params(classifier__epochs=3, wrangle__size=48)
    assert pipe["classifier"].config.epochs == 3
    assert pipe["wrangle"].config.size == (48, 48)
    # one bad value: nothing changes, the error names the stage and the setting
    with pytest.raises(ConfigError, match="epochs"):
        pipe.set_params(wrangle__size=64, classifier__epochs=0)
    assert pipe["wrangle"].config.size == (48, 48)
    with pytest.raises(ConfigError, match="no setting 'epoch'"):
        pipe.set_params(classifier__epoch=3)
    with pytest.raises(ConfigError, match="no stage 'clasifier'"):
        pipe.set_params(clasifier__epochs=3)
    with pytest.raises(ConfigError, match="stage__setting"):
        pipe.set_params(epochs=3)


def test_set_params_reaches_into_dict_settings() -> None:
    from inspectkit.stages import AnomalyDetector

    det = AnomalyDetector(method="padim", options={"n_features": 50})
    pipe = ik.Pipeline([det])
    pipe.set_params(anomaly_detector__options__n_features=20)
    assert det.config.options == {"n_features": 20}
    with pytest.raises(ConfigError, match="not a dict"):
        pipe.set_params(anomaly_detector__size__x=3)


def test_duplicate_stages_get_numbered_keys() -> None:
    pipe = ik.Pipeline([Wrangle(size=32), Wrangle(size=16)])
    pipe.set_params(**{"wrangle-2__size": 8})
    assert [s.config.size for s in pipe.stages] == [(32, 32), (8, 8)]


@settings(max_examples=40, deadline=None)
@given(epochs=st.one_of(st.integers(-5, 500), st.floats(allow_nan=True), st.text(max_size=4)))
def test_set_params_accepts_exactly_what_the_constructor_accepts(epochs: object) -> None:
    try:
        Classifier(epochs=epochs)
        ok = True
    except ConfigError:
        ok = False
    pipe = ik.Pipeline([Classifier()])
    if ok:
        pipe.set_params(classifier__epochs=epochs)
        assert pipe["classifier"].config.epochs == Classifier(epochs=epochs).config.epochs
    else:
        with pytest.raises(ConfigError):
            pipe.set_params(classifier__epochs=epochs)
        assert pipe["classifier"].config.epochs == Classifier().config.epochs


def test_spec_schema_accepts_saved_specs_and_refuses_bad_ones(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = ik.Pipeline.spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    spec = ik.Pipeline([Wrangle(size=32), Classifier(epochs=2)]).spec()
    validator.validate(json.loads(json.dumps(spec)))
    bad = json.loads(json.dumps(spec))
    bad["stages"][1]["config"]["epochs"] = "many"
    assert not validator.is_valid(bad)
    bad = json.loads(json.dumps(spec))
    bad["stages"][0]["config"]["sise"] = 3
    assert not validator.is_valid(bad)
    assert not validator.is_valid({"stages": [{"name": "no-such-stage"}]})


def test_registry_finds_registered_builtin_and_scanned_plugins() -> None:
    reg: Registry[type] = Registry(
        "widget", "inspectkit.test-widgets", check=lambda o: isinstance(o, type)
    )

    @reg.register(name="round")
    class Round:
        pass

    assert reg.get("round") is Round
    assert reg.name_of(Round) == "round"
    assert "round" in reg and "square" not in reg
    with pytest.raises(PipelineError, match="unknown widget 'square'; known widgets: round"):
        reg.get("square")
    with pytest.raises(PipelineError, match="already registered"):
        reg.register(type("Other", (), {}), name="round")
    with pytest.raises(PipelineError, match="not a valid widget"):
        reg.register(42, name="answer")  # type: ignore[arg-type]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    atomic_write(target, "old")

    def boom(fh: object) -> None:
        fh.write(b"half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "v1.json"
    real.write_text("v1")
    link = tmp_path / "current.json"
    link.symlink_to(real)
    atomic_write(link, "v2")
    assert link.is_symlink() and real.read_text() == "v2"


def test_swap_folder_replaces_whole_folders(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    for version in ("a", "b"):
        tmp = temp_folder_beside(dest)
        (tmp / "file").write_text(version)
        swap_folder(tmp, dest)
        assert (dest / "file").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
