"""Pipeline assembly, fit/run order, spec round-trip and atomic persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_set

import inspectkit as ik
from inspectkit.errors import (
    ConfigError,
    DataError,
    NotFittedError,
    PersistenceError,
    PipelineError,
)
from inspectkit.records import ImageSet, Predictions
from inspectkit.stage import Stage, StageConfig
from inspectkit.stages import Wrangle


class MeanShift(Stage[ImageSet, ImageSet]):
    """Learns the mean pixel value and subtracts it (a tiny stateful stage)."""

    name = "test_mean_shift"
    preserves_type = True
    stateful = True

    class Config(StageConfig):
        scale: float = 1.0

    def fit(self, data: ImageSet) -> MeanShift:
        self.check_input(data)
        self.mean = data.image_tensor().float().mean()
        self.fitted = True
        return self

    def run(self, data: ImageSet) -> ImageSet:
        self.check_input(data)
        self.check_fitted()
        return data.replace(images=(data.image_tensor().float() - self.mean) * self.config.scale)

    def get_state(self) -> dict:
        return {"mean": self.mean, "note": "plain values are fine"}

    def set_state(self, state: dict) -> None:
        self.mean = state["mean"]
        self.fitted = True


class Majority(Stage[ImageSet, Predictions]):
    """Predicts the most frequent training class for every sample."""

    name = "test_majority"
    stateful = True

    def fit(self, data: ImageSet) -> Majority:
        self.check_input(data)
        counts = data.class_counts()
        self.classes = list(data.classes)
        self.winner = max(counts, key=counts.__getitem__)
        self.fitted = True
        return self

    def run(self, data: ImageSet) -> Predictions:
        self.check_fitted()
        k = self.classes.index(self.winner)
        probs = torch.zeros(len(data), len(self.classes))
        probs[:, k] = 1
        return Predictions.build(
            **{**data.base_fields(), "classes": self.classes},
            probs=probs,
            predicted=[self.winner] * len(data),
        )

    def get_state(self) -> dict:
        return {"classes": self.classes, "winner": self.winner}

    def set_state(self, state: dict) -> None:
        self.classes, self.winner = list(state["classes"]), state["winner"]
        self.fitted = True


class BrokenSave(MeanShift):
    name = "test_broken_save"

    def get_state(self) -> dict:
        raise RuntimeError("disk full while serialising")


for cls in (MeanShift, Majority, BrokenSave):
    ik.register_stage(cls)


def test_pipeline_fits_stages_in_order_and_runs() -> None:
    data = make_image_set(n=9, classes=("a", "b"))
    data = data.replace(
        samples=[
            s.model_copy(update={"label": "a" if i < 6 else "b"})
            for i, s in enumerate(data.samples)
        ]
    )
    pipe = ik.Pipeline([Wrangle(size=8), MeanShift(), Majority()])
    out = pipe.fit(data).run(data)
    assert isinstance(out, Predictions)
    assert out.predicted == ["a"] * 9
    assert out.image_tensor().shape == (9, 1, 8, 8)
    assert pipe.output_type is Predictions


def test_incompatible_stages_fail_at_construction_naming_both() -> None:
    class NeedsPredictions(Stage[Predictions, Predictions]):
        name = "test_needs_predictions"

    with pytest.raises(PipelineError) as err:
        ik.Pipeline([Wrangle(size=8), NeedsPredictions()])
    assert "Wrangle" in str(err.value) and "NeedsPredictions" in str(err.value)
    # a stage that accepts ImageSet also accepts the Predictions subclass
    ik.Pipeline([Majority(), Wrangle(size=8), NeedsPredictions()])


def test_pipeline_refuses_classes_and_non_stages() -> None:
    with pytest.raises(PipelineError, match="not a Stage instance"):
        ik.Pipeline([Wrangle])  # type: ignore[list-item]
    with pytest.raises(PipelineError):
        ik.Pipeline([])


def test_run_before_fit_is_a_clear_error(tiny_set: ImageSet) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        ik.Pipeline([MeanShift()]).run(tiny_set)


def test_wrong_record_type_and_empty_set_refused(tiny_set: ImageSet) -> None:
    pipe = ik.Pipeline([MeanShift()])
    with pytest.raises(DataError, match="accepts ImageSet"):
        pipe.fit({"images": []})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty"):
        pipe.fit(tiny_set.subset([]))


def test_config_is_validated_and_round_trips_through_spec() -> None:
    with pytest.raises(ConfigError, match="scale"):
        MeanShift(scale="big")
    with pytest.raises(ConfigError, match="Extra inputs"):
        Wrangle(sise=3)
    pipe = ik.Pipeline([Wrangle(size=(16, 24), channels=3), MeanShift(scale=2.0)])
    spec = json.loads(json.dumps(pipe.spec()))
    again = ik.Pipeline.from_spec(spec)
    assert again.spec() == pipe.spec()
    assert again[0].config.size == (16, 24)
    assert again["test_mean_shift"].config.scale == 2.0


def test_from_spec_unknown_stage_lists_known_ones() -> None:
    with pytest.raises(PipelineError, match=r"unknown stage 'nope'.*wrangle"):
        ik.Pipeline.from_spec({"stages": [{"name": "nope"}]})
    with pytest.raises(ConfigError):
        ik.Pipeline.from_spec({"steps": []})


def test_save_load_round_trip_gives_identical_output(tmp_path: Path, tiny_set: ImageSet) -> None:
    pipe = ik.Pipeline([Wrangle(size=8), MeanShift(scale=0.5)]).fit(tiny_set)
    pipe.save(tmp_path / "model")
    loaded = ik.Pipeline.load(tmp_path / "model")
    a = pipe.run(tiny_set).image_tensor()
    b = loaded.run(tiny_set).image_tensor()
    assert torch.equal(a, b)
    spec = json.loads((tmp_path / "model" / "pipeline.json").read_text())
    assert spec["inspectkit_version"] == ik.__version__
    assert [s["name"] for s in spec["stages"]] == ["wrangle", "test_mean_shift"]


def test_state_is_loaded_with_weights_only(tmp_path: Path, tiny_set: ImageSet) -> None:
    ik.Pipeline([MeanShift()]).fit(tiny_set).save(tmp_path / "m")
    state_file = next((tmp_path / "m").glob("stage-00-*.pt"))

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"mean": Evil()}, state_file)
    with pytest.raises(PersistenceError, match="cannot be read safely"):
        ik.Pipeline.load(tmp_path / "m")
    assert not (tmp_path / "pwned").exists()


def test_failed_save_leaves_previous_model_intact(tmp_path: Path, tiny_set: ImageSet) -> None:
    target = tmp_path / "line-model"
    good = ik.Pipeline([MeanShift(scale=3.0)]).fit(tiny_set)
    good.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    broken = ik.Pipeline([BrokenSave(scale=9.0)]).fit(tiny_set)
    with pytest.raises(RuntimeError, match="disk full"):
        broken.save(target)

    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line-model"]  # no temp leftovers
    assert ik.Pipeline.load(target)[0].config.scale == 3.0


def test_overwrite_replaces_model_and_refuses_foreign_folders(
    tmp_path: Path, tiny_set: ImageSet
) -> None:
    target = tmp_path / "m"
    ik.Pipeline([MeanShift(scale=1.0)]).fit(tiny_set).save(target)
    ik.Pipeline([MeanShift(scale=2.0)]).fit(tiny_set).save(target)
    assert ik.Pipeline.load(target)[0].config.scale == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"precious")
    with pytest.raises(PersistenceError, match="refusing"):
        ik.Pipeline([Wrangle(size=4)]).save(foreign)
    assert (foreign / "keep.jpg").read_bytes() == b"precious"


def test_state_with_objects_is_refused(tmp_path: Path, tiny_set: ImageSet) -> None:
    class Sneaky(MeanShift):
        name = "test_sneaky"

        def get_state(self) -> dict:
            return {"mean": self.mean, "fn": print}

    ik.register_stage(Sneaky)
    with pytest.raises(PersistenceError, match="tensors and plain values"):
        ik.Pipeline([Sneaky()]).fit(tiny_set).save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _tamper(path: Path, **changes: object) -> None:
    spec_path = path / "pipeline.json"
    spec = json.loads(spec_path.read_text())
    spec.update(changes)
    spec_path.write_text(json.dumps(spec))


def test_load_refuses_newer_major_unknown_stage_and_missing_state(
    tmp_path: Path, tiny_set: ImageSet
) -> None:
    pipe = ik.Pipeline([MeanShift()]).fit(tiny_set)
    for case in ("newer", "unknown", "missing", "garbage"):
        target = tmp_path / case
        pipe.save(target)
        if case == "newer":
            major = int(ik.__version__.split(".")[0]) + 1
            _tamper(target, inspectkit_version=f"{major}.0.0")
            match = "newer than this"
        elif case == "unknown":
            spec = json.loads((target / "pipeline.json").read_text())
            spec["stages"][0]["name"] = "stage_from_a_plugin_not_installed"
            (target / "pipeline.json").write_text(json.dumps(spec))
            match = "unknown stage"
        elif case == "missing":
            next(target.glob("*.pt")).unlink()
            match = "missing"
        else:
            (target / "pipeline.json").write_text("{not json")
            match = "not readable JSON"
        with pytest.raises(PersistenceError, match=match):
            ik.Pipeline.load(target)
    with pytest.raises(PersistenceError, match="no saved pipeline"):
        ik.Pipeline.load(tmp_path / "does-not-exist")


def test_unregistered_stage_cannot_be_saved(tmp_path: Path, tiny_set: ImageSet) -> None:
    class Local(Stage[ImageSet, ImageSet]):
        preserves_type = True

        def run(self, data: ImageSet) -> ImageSet:
            return data

    with pytest.raises(PipelineError, match="not registered"):
        ik.Pipeline([Local()]).save(tmp_path / "m")


def test_iter_run_streams_batches(tiny_set: ImageSet) -> None:
    pipe = ik.Pipeline([Wrangle(size=4)])
    outs = list(pipe.iter_run(tiny_set, batch_size=5))
    assert [len(o) for o in outs] == [5, 5, 2]
    assert [i for o in outs for i in o.ids] == tiny_set.ids
