"""Detectors by name and the settings every detector shares (issue #15: a detector is one
file)."""

from __future__ import annotations

import pytest
import torch
from anomaly_support import flat_parts

from inspectkit import Pipeline
from inspectkit.anomaly import (
    AnomalyDetector,
    AnomalyModel,
    AutoEncoder,
    DetectorSettings,
    PaDiM,
    available_detectors,
    build_detector,
    get_detector,
    register_detector,
)
from inspectkit.anomaly.registry import detector_name
from inspectkit.anomaly.stage import METHODS
from inspectkit.errors import ConfigError
from inspectkit.ops import to_float
from inspectkit.records import ImageSet

BUILTIN = ["autoencoder", "ensemble", "padim", "patchcore", "selfsupervised"]


class MeanImage(AnomalyModel):
    """Test detector: how far each pixel is from the good images' mean image (× gain)."""

    name = "test_mean_image"

    def __init__(self, *, gain: float = 1.0, **settings) -> None:
        super().__init__(**settings)
        self.gain = float(gain)
        self.register_buffer("mean_image", torch.zeros(0))

    def _fit(self, images: torch.Tensor) -> None:
        self.mean_image = to_float(images).mean(0).to(self.device)

    def _score_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = (x - self.mean_image).abs().mean(1) * self.gain
        return maps.flatten(1).amax(1), maps


register_detector(MeanImage)


@pytest.fixture(scope="module")
def data() -> dict[str, ImageSet]:
    return {
        "train": flat_parts(16, 0),
        "test": ImageSet.concat([flat_parts(4, 1), flat_parts(4, 2, defect=True)]),
    }


def small(method: str, **config) -> AnomalyDetector:
    return AnomalyDetector(method=method, size=32, progress=False, device="cpu", **config)


# ---------------------------------------------------------------------- registry
def test_builtin_detectors_are_found_by_name() -> None:
    names = available_detectors()
    assert set(BUILTIN) <= set(names)
    assert names == sorted(names)
    assert get_detector("padim") is PaDiM
    for name in BUILTIN:
        cls = get_detector(name)
        assert issubclass(cls, AnomalyModel) and cls.name == name
        assert detector_name(cls) == name
    assert detector_name(PaDiM(n_features=8, progress=False)) == "padim"
    # the stage module's METHODS is a read-only view of the same registry
    assert set(BUILTIN) <= set(METHODS) and METHODS["autoencoder"] is AutoEncoder
    assert len(METHODS) == len(names) and "knn" not in METHODS
    with pytest.raises(KeyError):
        METHODS["knn"]
    with pytest.raises(TypeError):
        METHODS["knn"] = PaDiM  # type: ignore[index]


def test_unknown_method_is_a_config_error_listing_the_detectors() -> None:
    for build in (
        lambda: AnomalyDetector(method="knn"),
        lambda: get_detector("knn"),
        lambda: build_detector("knn", DetectorSettings()),
        lambda: AnomalyDetector(method="ensemble", options={"members": [{"method": "knn"}, {}]}),
    ):
        with pytest.raises(ConfigError, match="unknown detector 'knn'") as err:
            build()
        for name in available_detectors():
            assert name in str(err.value)
    with pytest.raises(ConfigError, match="unknown detector 'knn'"):
        small("padim").set_params(method="knn")


def test_detector_registered_in_code_is_used_by_name(data, tmp_path) -> None:
    assert "test_mean_image" in available_detectors()
    det = small("test_mean_image", options={"gain": 3.0}, calibration_fraction=0.25)
    assert isinstance(det.detector, MeanImage) and det.detector.gain == 3.0
    res = det.fit(data["train"]).run(data["test"])
    assert float(res.scores[4:].min()) > float(res.scores[:4].max())
    Pipeline([det]).save(tmp_path / "model")
    again = Pipeline.load(tmp_path / "model").run(data["test"])
    assert torch.equal(again.scores, res.scores) and again.threshold == res.threshold


def test_detector_registered_in_code_is_an_ensemble_member(data) -> None:
    members = [{"method": "test_mean_image", "gain": 2.0}, {"method": "padim", "n_features": 16}]
    det = small("ensemble", options={"members": members, "holdout": 0.25, "sigma": 1.0})
    ens = det.detector
    assert [type(m).__name__ for m in ens.members] == ["MeanImage", "PaDiM"]
    assert ens.members[0].gain == 2.0
    assert all(m.sigma == 1.0 for m in ens.members)  # a shared setting reaches every member
    res = det.fit(data["train"]).run(data["test"])
    assert float(res.scores[4:].min()) > float(res.scores[:4].max())


def test_published_spec_schema_lists_the_detectors() -> None:
    schema = AnomalyDetector.Config.model_json_schema()["properties"]["method"]
    assert schema["enum"] == available_detectors()
    assert "test_mean_image" in schema["enum"]  # registered in code, listed too


def test_register_detector_refuses_non_detectors_and_name_clashes() -> None:
    with pytest.raises(ConfigError, match="not an AnomalyModel"):
        register_detector(dict)  # type: ignore[arg-type]

    class Other(MeanImage):
        pass

    register_detector(MeanImage)  # idempotent
    with pytest.raises(ConfigError, match="already registered"):
        register_detector(Other)  # inherits the name "test_mean_image"
    assert detector_name(Other) is None  # an unregistered subclass has no name
    register_detector(Other, name="test_mean_image_other")
    assert get_detector("test_mean_image_other") is Other


# ---------------------------------------------------------------------- settings
BAD_SETTINGS = [
    ("batch_size", 0, "batch_size must be a whole number of at least 1"),
    ("batch_size", 2.5, "batch_size must be a whole number"),
    ("seed", "one", "seed must be a whole number from 0 to 2"),
    ("seed", -1, "seed must be a whole number from 0 to 2"),
    ("seed", 2**63, "seed must be a whole number from 0 to 2"),
    ("feature_dtype", "float16", "feature_dtype must be 'float32' or 'bfloat16'"),
    ("sigma", -1.0, "sigma must be a number of pixels, 0 or more"),
    ("sigma", float("inf"), "sigma must be finite"),
    ("progress", "yes", "progress must be True or False"),
    ("device", "tpu", "unknown device 'tpu'"),
]


@pytest.mark.parametrize("key,value,message", BAD_SETTINGS)
def test_a_wrong_shared_setting_is_refused_once_the_same_way_for_every_detector(
    key, value, message
) -> None:
    with pytest.raises(ConfigError, match=message) as direct:
        DetectorSettings(**{key: value})
    expected = str(direct.value)
    for name in BUILTIN:
        with pytest.raises(ConfigError) as built:
            build_detector(name, DetectorSettings(), options={key: value})
        assert str(built.value) == expected, name
        with pytest.raises(ConfigError) as staged:
            AnomalyDetector(method=name, options={key: value})
        assert str(staged.value).endswith(expected), name
        members = ([MeanImage(), MeanImage()],) if name == "ensemble" else ()
        with pytest.raises(ConfigError) as kw:  # and as a keyword of the class itself
            get_detector(name)(*members, **{key: value})
        assert str(kw.value) == expected, name


def test_shared_settings_reach_every_detector_through_one_path() -> None:
    settings = DetectorSettings(seed=3, batch_size=5, device="cpu", progress=False, sigma=2.0)
    for name in BUILTIN:
        cls = get_detector(name)
        # declared once: no detector re-declares a shared setting as its own option
        assert not set(cls.option_names()) & set(DetectorSettings.names()), name
        det = build_detector(name, settings)
        assert det.settings == settings, name
        assert (det.seed, det.batch_size, det.sigma, det.show_progress) == (3, 5, 2.0, False)
        assert det.device == torch.device("cpu")
        for sub in det.modules():  # ensemble members, self-supervised heads
            if isinstance(sub, AnomalyModel):
                assert sub.settings == settings, (name, type(sub).__name__)
    stage = AnomalyDetector(method="padim", seed=3, batch_size=5, device="cpu", progress=False)
    assert stage.detector.settings == DetectorSettings(
        seed=3, batch_size=5, device="cpu", progress=False
    )
    # options override the stage's shared settings (e.g. a smaller batch for one detector)
    stage = AnomalyDetector(method="autoencoder", batch_size=32, options={"batch_size": 8})
    assert stage.detector.batch_size == 8


def test_detectors_keep_their_keyword_settings_and_defaults() -> None:
    ae = AutoEncoder(epochs=1, progress=False)
    assert ae.batch_size == 16 and ae.settings.batch_size == 16  # its own default
    pd = PaDiM(n_features=8, seed=4, batch_size=2, sigma=0.0, progress=False, device="cpu")
    assert (pd.seed, pd.batch_size, pd.sigma) == (4, 2, 0.0)
    pd.batch_size = 7  # assigning a setting replaces it with a checked copy
    assert pd.settings.batch_size == 7
    with pytest.raises(ConfigError, match="batch_size"):
        pd.batch_size = 0
    with pytest.raises(ConfigError, match=r"no option 'coreset_rate'.*coreset_ratio"):
        get_detector("patchcore")(coreset_rate=0.1)
    with pytest.raises(ConfigError, match="DetectorSettings"):
        PaDiM(settings={"seed": 1})  # type: ignore[arg-type]
