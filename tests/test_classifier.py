"""Classifier stage: learning, probabilities, rejection, persistence, determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import inspectkit as ik
from inspectkit.errors import ConfigError, DataError, InspectkitError, NotFittedError
from inspectkit.metrics import classification_report
from inspectkit.records import ImageSet, Predictions, SampleMeta
from inspectkit.stages import Classifier, Wrangle

PATTERNS = ("blob", "ring", "line", "none")


def make_patterns(
    n: int, *, size: int = 16, seed: int = 0, kind: str = "wafer", prefix: str = ""
) -> ImageSet:
    """A learnable set of wafer-like maps: a blob, a ring, a straight line, or noise only.

    Every pattern keeps its class under flips and quarter turns, like WM-811K's.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2).sqrt()
    labels = torch.arange(n) % len(PATTERNS)
    centers = torch.randint(3, size - 3, (n, 2), generator=g)
    horizontal = torch.rand(n, generator=g) < 0.5
    fail = torch.rand(n, size, size, generator=g) < 0.04
    for i in range(n):
        cy, cx = int(centers[i, 0]), int(centers[i, 1])
        c = int(labels[i])
        if c == 0:
            fail[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 4
        elif c == 1:
            fail[i] |= (r > size / 2 - 3) & (r <= size / 2 - 1)
        elif c == 2:
            fail[i] |= (yy == cy) if bool(horizontal[i]) else (xx == cx)
    maps = torch.ones(n, 1, size, size, dtype=torch.uint8)
    maps[fail.unsqueeze(1)] = 2
    if kind == "image":
        maps = maps * 100
    samples = [
        SampleMeta(id=f"{prefix}{seed}-{i}", label=PATTERNS[int(c)]) for i, c in enumerate(labels)
    ]
    return ImageSet(images=maps, samples=samples, classes=list(PATTERNS), kind=kind)  # type: ignore[arg-type]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = {
    "epochs": 12,
    "batch_size": 16,
    "max_params": 6_000,
    "lr": 1e-2,
    "progress": False,
    "seed": 0,
}


@pytest.fixture(scope="module")
def train_set() -> ImageSet:
    return make_patterns(160, seed=1)


@pytest.fixture(scope="module")
def test_set() -> ImageSet:
    return make_patterns(80, seed=2, prefix="t")


@pytest.fixture(scope="module")
def fitted(train_set: ImageSet) -> Classifier:
    return Classifier(**FAST).fit(train_set)


def accuracy(p: Predictions) -> float:
    return float((p.predicted_indices() == p.targets()).float().mean())


def test_learns_a_learnable_set(fitted: Classifier, test_set: ImageSet) -> None:
    pred = fitted.run(test_set)
    assert isinstance(pred, Predictions)
    assert accuracy(pred) >= 0.9
    report = classification_report(pred)
    assert report.metrics["macro_f1"] >= 0.9
    # training history with validation macro-F1, best epoch restored
    assert fitted.history and "val" in fitted.history[0]
    assert fitted.train_result is not None and 0 <= fitted.train_result.best_epoch < FAST["epochs"]


def test_probabilities_for_every_class(fitted: Classifier, test_set: ImageSet) -> None:
    pred = fitted.run(test_set)
    assert pred.probs.shape == (len(test_set), len(PATTERNS))
    assert torch.allclose(pred.probs.sum(1), torch.ones(len(test_set)), atol=1e-5)
    assert pred.classes == list(PATTERNS)
    top = pred.probs.argmax(1)
    assert [PATTERNS[int(i)] for i in top] == pred.predicted
    assert torch.equal(fitted.predict_proba(test_set), pred.probs)


def test_tta_averages_the_probabilities_of_the_flipped_views(
    fitted: Classifier, test_set: ImageSet
) -> None:
    from inspectkit.stages.classify import ViewAverage

    plain = fitted.predict_proba(test_set)
    flipped = fitted.predict_proba(test_set.replace(images=test_set.image_tensor().flip(-1)))
    tta = Classifier(**{**FAST, "tta": "flip"})
    tta.set_state(fitted.get_state())
    both = tta.predict_proba(test_set)
    assert torch.allclose(both, (plain + flipped) / 2, atol=1e-5)
    assert accuracy(tta.run(test_set)) >= 0.9
    # the 8 views of the dihedral group: a flipped or turned input gets the same answer
    eight = Classifier(**{**FAST, "tta": "dihedral"})
    eight.set_state(fitted.get_state())
    turned = test_set.replace(images=torch.rot90(test_set.image_tensor(), 1, dims=(-2, -1)))
    assert torch.allclose(eight.predict_proba(turned), eight.predict_proba(test_set), atol=1e-5)
    with pytest.raises(ConfigError, match="tta"):
        ViewAverage(torch.nn.Identity(), "none")


def test_predict_batch_size_does_not_change_probabilities(
    fitted: Classifier, test_set: ImageSet
) -> None:
    # views and batches are separate passes: the split of the input must not matter
    small = Classifier(**{**FAST, "tta": "flip", "batch_size_predict": 3})
    small.set_state(fitted.get_state())
    large = Classifier(**{**FAST, "tta": "flip", "batch_size_predict": 1024})
    large.set_state(fitted.get_state())
    assert torch.allclose(small.predict_proba(test_set), large.predict_proba(test_set), atol=1e-5)


def test_preprocess_feeds_the_model(fitted: Classifier, test_set: ImageSet) -> None:
    x = fitted.preprocess(test_set.image_tensor()[:5])
    assert x.dtype == torch.float32 and x.shape == (5, 3, 16, 16)
    assert fitted.model is not None
    with torch.no_grad():
        probs = torch.softmax(fitted.model.eval()(x), 1)
    assert torch.allclose(probs, fitted.predict_proba(test_set.subset(range(5))), atol=1e-5)
    assert isinstance(fitted.model.last_conv, torch.nn.Conv2d)
    assert fitted.model.embed(x).shape == (5, fitted.model.embed_dim)


def test_reject_below_sends_unsure_parts_to_review(fitted: Classifier, test_set: ImageSet) -> None:
    probs = fitted.predict_proba(test_set)
    top = probs.max(1).values
    threshold = float(top.median())
    strict = Classifier(**{**FAST, "reject_below": threshold})
    strict.set_state(fitted.get_state())
    pred = strict.run(test_set)
    rejected = [p is None for p in pred.predicted]
    assert rejected == [bool(t < threshold) for t in top]
    assert 0 < sum(rejected) < len(test_set)
    report = classification_report(pred)
    assert report.counts["review"] == sum(rejected)
    assert report.counts["decided"] == len(test_set) - sum(rejected)
    assert math.isclose(report.metrics["coverage"], 1 - sum(rejected) / len(test_set))


def test_pipeline_save_load_gives_identical_probabilities(
    train_set: ImageSet, test_set: ImageSet, tmp_path
) -> None:
    raw = make_patterns(60, size=20, seed=3)
    pipe = ik.Pipeline([Wrangle(size=16), Classifier(**{**FAST, "epochs": 2})])
    pipe.fit(raw)
    before = pipe.run(test_set)
    pipe.save(tmp_path / "model")
    loaded = ik.Pipeline.load(tmp_path / "model")
    after = loaded.run(test_set)
    assert torch.equal(before.probs, after.probs)
    assert before.predicted == after.predicted
    clf = loaded["classifier"]
    assert isinstance(clf, Classifier) and clf.classes == list(PATTERNS)


def test_same_seed_same_model_on_cpu(train_set: ImageSet, test_set: ImageSet) -> None:
    cfg = {**FAST, "epochs": 2, "device": "cpu", "imbalance": "both", "seed": 5}
    a = Classifier(**cfg).fit(train_set).predict_proba(test_set)
    b = Classifier(**cfg).fit(train_set).predict_proba(test_set)
    assert torch.equal(a, b)
    c = Classifier(**{**cfg, "seed": 6}).fit(train_set).predict_proba(test_set)
    assert not torch.equal(a, c)


def test_other_sizes_are_resized_and_photos_are_standardised(fitted: Classifier) -> None:
    big = make_patterns(12, size=32, seed=4)
    ragged = big.replace(images=[t for t in big.image_tensor()])
    p_tensor = fitted.predict_proba(big)
    p_ragged = fitted.predict_proba(ragged)
    assert p_tensor.shape == (12, 4)
    assert torch.allclose(p_tensor, p_ragged)

    photos = make_patterns(60, seed=7, kind="image")
    clf = Classifier(
        **{**FAST, "epochs": 1, "imbalance": "balanced_sampler", "val_fraction": 0}
    ).fit(photos)
    assert clf.mean is not None and clf.std is not None
    x = clf.preprocess(photos.image_tensor())
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_unlabelled_samples_are_ignored_and_synthetic_ones_never_validated(
    train_set: ImageSet,
) -> None:
    samples = [
        s.model_copy(update={"label": None})
        if i % 10 == 0
        else s.model_copy(update={"synthetic": i % 10 == 1})
        for i, s in enumerate(train_set.samples)
    ]
    mixed = train_set.replace(samples=samples)
    clf = Classifier(**{**FAST, "epochs": 1})
    clf.fit(mixed)
    assert clf.fitted and clf.classes == list(PATTERNS)


# ---------------------------------------------------------------------- bad input
def _labels(data: ImageSet, labels: list[str | None]) -> ImageSet:
    return data.replace(
        samples=[s.model_copy(update={"label": lab}) for s, lab in zip(data.samples, labels)]
    )


def test_fit_without_labels_is_refused(train_set: ImageSet) -> None:
    unlabelled = _labels(train_set, [None] * len(train_set))
    with pytest.raises(DataError, match="no labels"):
        Classifier(**FAST).fit(unlabelled)


def test_fit_on_a_single_class_is_refused(train_set: ImageSet) -> None:
    one = _labels(train_set, ["blob"] * len(train_set))
    with pytest.raises(DataError, match="single class"):
        Classifier(**FAST).fit(one)


def test_labels_missing_from_classes_are_refused(train_set: ImageSet) -> None:
    # the record itself refuses them ...
    with pytest.raises(InspectkitError, match="not in classes"):
        train_set.replace(classes=["blob", "ring"])
    # ... and so does the classifier when a record was built without validation
    sneaky = ImageSet.model_construct(**{**train_set.base_fields(), "classes": ["blob", "ring"]})
    with pytest.raises(DataError, match="missing from classes"):
        Classifier(**FAST).fit(sneaky)


def test_mixed_sizes_and_empty_sets_are_refused(train_set: ImageSet) -> None:
    ragged = make_patterns(8, size=16).image_tensor()
    imgs = [t if i % 2 else torch.ones(1, 20, 18, dtype=torch.uint8) for i, t in enumerate(ragged)]
    data = make_patterns(8).replace(images=imgs)
    with pytest.raises(DataError, match="Wrangle"):
        Classifier(**FAST).fit(data)
    with pytest.raises(DataError, match="empty"):
        Classifier(**FAST).fit(train_set.subset([]))


def test_predict_on_other_channels_or_kind_is_refused(fitted: Classifier) -> None:
    photos = make_patterns(6, kind="image")
    with pytest.raises(DataError, match="'wafer' images"):
        fitted.run(photos)
    rgb = ImageSet(
        images=torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
        samples=[SampleMeta(id="a"), SampleMeta(id="b")],
        classes=list(PATTERNS),
    )
    gray_clf = Classifier(**{**FAST, "epochs": 1, "val_fraction": 0}).fit(
        make_patterns(40, kind="image")
    )
    with pytest.raises(DataError, match="3-channel"):
        gray_clf.run(rgb)


def test_predict_before_fit_is_refused(test_set: ImageSet) -> None:
    with pytest.raises(NotFittedError):
        Classifier().run(test_set)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_reject_below_outside_unit_interval_is_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="reject_below"):
        Classifier(reject_below=value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "vgg99"},
        {"imbalance": "smote"},
        {"epochs": 0},
        {"val_fraction": 1.0},
        {"unknown": 1},
        {"tta": "rot45"},
        {"pool": "median"},
        {"ema": 1.0},
    ],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Classifier(**kwargs)


@pytest.mark.realdata
def test_wm811k_subset_beats_the_majority_baseline(wm811k_dir) -> None:
    from inspectkit.sources import load_wafer_maps

    wrangle = Wrangle(size=32)
    train = wrangle.run(load_wafer_maps(wm811k_dir / "WM811K_train_1_split.npz"))
    full_test = load_wafer_maps(wm811k_dir / "WM811K_test_data.npz")  # sorted by class
    test = wrangle.run(full_test.subset(range(0, len(full_test), 12)))
    clf = Classifier(epochs=15, batch_size=32, max_params=30_000, progress=False, seed=0)
    report = classification_report(clf.fit(train).run(test))
    majority = max(train.class_counts(), key=train.class_counts().get)  # type: ignore[arg-type]
    baseline = test.replace(samples=test.samples)  # predictions of the majority class
    probs = torch.zeros(len(test), len(test.classes))
    probs[:, test.classes.index(majority)] = 1
    base = classification_report(
        Predictions.build(**baseline.base_fields(), probs=probs, predicted=[majority] * len(test))
    )
    assert report.metrics["macro_f1"] > base.metrics["macro_f1"] + 0.1
    assert report.metrics["accuracy"] >= base.metrics["accuracy"] - 0.05


# ---------------------------------------------------------------------- the input contract
def test_size_setting_resizes_at_fit_and_at_predict_alike(train_set: ImageSet) -> None:
    """With ``size``, ragged or bigger training maps are resized as predict resizes them:
    a model trained on 24×24 maps at size 16 predicts those maps exactly as it predicts
    them after ``Wrangle(size=16)``."""
    big = make_patterns(80, size=24, seed=11)
    ragged = big.replace(
        images=[t if i % 3 else t[:, 1:, :] for i, t in enumerate(big.image_tensor())]
    )
    clf = Classifier(**{**FAST, "epochs": 3, "size": 16}).fit(ragged)
    assert clf.input_size == (16, 16) and clf.input_spec is not None
    assert clf.input_spec.size_policy == "resize"
    wrangled = Wrangle(size=16).run(ragged)
    assert torch.equal(clf.predict_proba(ragged), clf.predict_proba(wrangled))
    assert Classifier(size=20).config.size == (20, 20)
    with pytest.raises(ConfigError, match="size"):
        Classifier(size=0)


def test_ragged_training_maps_without_size_name_both_remedies(train_set: ImageSet) -> None:
    ragged = train_set.replace(
        images=[t if i % 2 else t[:, :12, :12] for i, t in enumerate(train_set.image_tensor())]
    )
    with pytest.raises(DataError, match=r"Classifier\(size=\.\.\.\).*Wrangle\(size=\.\.\.\)"):
        Classifier(**FAST).fit(ragged)


def test_state_carries_the_contract_and_0_1_states_still_load(
    fitted: Classifier, test_set: ImageSet
) -> None:
    from inspectkit.errors import PersistenceError
    from inspectkit.stages.classify import STATE_VERSION

    state = fitted.get_state()
    assert state["version"] == STATE_VERSION == 2 and state["input"]["kind"] == "wafer"
    spec = state["input"]
    old = {k: v for k, v in state.items() if k not in ("version", "input")}
    old.update(
        kind=spec["kind"],
        input_size=spec["size"],
        data_channels=spec["data_channels"],
        mean=spec["mean"],
        std=spec["std"],
    )  # the 0.1 layout
    back = Classifier(**FAST)
    back.set_state(old)
    assert torch.equal(back.predict_proba(test_set), fitted.predict_proba(test_set))
    with pytest.raises(PersistenceError, match="newer"):
        Classifier(**FAST).set_state({**state, "version": STATE_VERSION + 1})
    with pytest.raises(PersistenceError, match="input fields"):
        Classifier(**FAST).set_state({k: v for k, v in old.items() if k != "input_size"})


def test_preprocess_before_fit_is_refused() -> None:
    with pytest.raises(NotFittedError):
        Classifier().preprocess(torch.zeros(1, 1, 4, 4))
