"""``inspectkit.recipes``: the pipelines the command line builds, reachable from Python."""

from __future__ import annotations

import pytest
from conftest import make_image_set

from inspectkit.errors import ConfigError, DataError
from inspectkit.pipeline import Pipeline
from inspectkit.recipes import (
    default_pipeline,
    default_size,
    generate_samples,
    generation_pipeline,
    override,
)
from inspectkit.stages import Classifier, Wrangle


def test_default_classifier_sizes_epochs_and_validation_split() -> None:
    wafer = default_pipeline("classify", kind="wafer", n_train=1000, seed=4, progress=False)
    params = wafer.get_params()
    assert params["wrangle__size"] == (48, 48) and params["classifier__arch"] == "compact"
    assert params["classifier__epochs"] == 30 and params["classifier__seed"] == 4
    assert params["classifier__val_fraction"] == 0.1 and params["classifier__progress"] is False
    photo = default_pipeline("classify", kind="image", n_train=49, size=32, epochs=2)
    params = photo.get_params()
    assert params["wrangle__size"] == (32, 32) and params["classifier__epochs"] == 2
    assert params["classifier__val_fraction"] == 0.0  # too few samples to hold some out
    assert default_size("classify", "image") == 64 and default_size("classify", "wafer") == 48


def test_default_detector() -> None:
    pipe = default_pipeline("anomaly", kind="image", n_train=20)
    params = pipe.get_params()
    assert [type(s).__name__ for s in pipe.stages] == ["AnomalyDetector"]
    # issue #17: the validated recipe (was PatchCore on random features at 128 px)
    assert params["anomaly_detector__method"] == "default"
    assert params["anomaly_detector__size"] == "auto" == default_size("anomaly", "wafer")
    assert params["anomaly_detector__backbone"] == params["anomaly_detector__weights"] == "auto"
    assert params["anomaly_detector__on_defective"] == "drop"
    padim = default_pipeline("anomaly", kind="image", n_train=20, method="padim", size=64)
    assert padim.get_params()["anomaly_detector__method"] == "padim"
    assert padim.get_params()["anomaly_detector__size"] == (64, 64)
    line = default_pipeline(
        "anomaly", kind="image", n_train=20, backbone="resnet18", weights=None,
        false_alarm_rate=0.01, review_rate=0.05, tile=128, group_by="group",
    ).get_params()  # fmt: skip
    assert line["anomaly_detector__backbone"] == "resnet18"
    assert line["anomaly_detector__target_false_alarm_rate"] == 0.01
    assert line["anomaly_detector__review_false_alarm_rate"] == 0.05
    assert line["anomaly_detector__tile"] == 128 and line["anomaly_detector__group_by"] == "group"
    fixed = default_pipeline("anomaly", kind="image", n_train=20, threshold=2.5).get_params()
    assert fixed["anomaly_detector__threshold"] == 2.5
    net = default_pipeline("classify", kind="image", n_train=20, backbone="resnet18")
    assert net.get_params()["classifier__arch"] == "resnet18"
    with pytest.raises(ConfigError, match="task must be"):
        default_size("segment", "image")


def test_override_sets_only_the_settings_stages_have() -> None:
    pipe = Pipeline([Wrangle(size=16), Classifier(epochs=5, seed=3)])
    override(pipe, epochs=2)
    params = pipe.get_params()
    assert params["classifier__epochs"] == 2 and "wrangle__epochs" not in params
    assert params["classifier__seed"] == 3  # None leaves a setting alone
    override(pipe, seed=9, progress=False)
    params = pipe.get_params()
    assert params["wrangle__seed"] == params["classifier__seed"] == 9
    assert params["classifier__progress"] is False
    with pytest.raises(ConfigError, match="epochs"):
        override(pipe, epochs=0)  # validated like any setting; nothing changed
    assert pipe.get_params()["classifier__epochs"] == 2


def test_generation_pipeline_and_samples() -> None:
    data = make_image_set(n=12, size=16)
    assert [type(s).__name__ for s in generation_pipeline(data, "a", 3).stages] == ["Augment"]
    wafer = make_image_set(n=12, size=16, kind="wafer")
    stages = generation_pipeline(wafer, "a", 3, method="vae", steps=5).stages
    assert [type(s).__name__ for s in stages] == ["Wrangle", "Generate"]
    assert stages[0].config.size == (64, 64) and stages[1].config.steps == 5
    more = generate_samples(data, "b", 5, seed=1)
    assert len(more) == 5 and set(more.labels) == {"b"}
    assert all(s.synthetic for s in more.samples)
    with pytest.raises(DataError, match="no class 'z'"):
        generation_pipeline(data, "z", 3)
    with pytest.raises(ConfigError, match="method must be"):
        generation_pipeline(data, "a", 3, method="gan")
    with pytest.raises(ConfigError, match="n must be at least 1"):
        generation_pipeline(data, "a", 0)
