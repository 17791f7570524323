"""Defaults that cannot end in a one-class model, on real data (small subsets).

* Early stopping must not fire while the one-cycle schedule is still warming up (DeepPCB
  defect tiles: several epochs of one-class predictions while the loss falls).
* Small sets get enough optimizer steps per epoch (``batch_size="auto"``), and a model
  that still predicts one class is flagged loudly.
* The continual defaults learn: the README's continual example beats fine-tuning, and
  the stage trained jointly keeps up with the ``Classifier``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import inspectkit as ik
from inspectkit.continual import ContinualClassifier, class_incremental_stream, update_pipeline
from inspectkit.metrics import classification_report
from inspectkit.models.training import ONECYCLE_WARMUP
from inspectkit.records import ImageSet
from inspectkit.sources import load_wafer_maps
from inspectkit.stages import Classifier, Wrangle

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pcb_tiles(data_root: Path, per_type: int, skip_images: int = 0) -> tuple[ImageSet, int]:
    if not (data_root / "deeppcb").is_dir():
        pytest.skip(f"deeppcb not found under {data_root}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from bench_classifier import deeppcb_tiles
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return deeppcb_tiles(data_root, per_type, skip_images=skip_images)


@pytest.mark.realdata
def test_early_stopping_waits_for_the_warm_up_on_pcb_defect_tiles(data_root: Path) -> None:
    """``Classifier(arch="compact", epochs=40)`` on 96×96 DeepPCB tiles of six defect types:
    the first epochs predict one class while the learning rate still rises; training goes
    on past them and ends on a model that tells the types apart."""
    train, read = _pcb_tiles(data_root, 60)
    test, _ = _pcb_tiles(data_root, 40, skip_images=read)
    clf = Classifier(arch="compact", epochs=40, progress=False, seed=0).fit(train)
    result = clf.train_result
    assert result is not None
    warm = int(ONECYCLE_WARMUP * 40)
    patience = clf.config.patience
    assert patience is not None
    # patience only counts after the warm-up: no stop before warm-up + patience epochs
    assert result.epochs_run >= warm + patience + 1 or not result.stopped_early
    assert not result.one_class
    pred = clf.run(test)
    assert len(set(pred.predicted)) >= 5
    assert classification_report(pred).metrics["accuracy"] > 0.35  # six types: chance 0.17


@pytest.mark.realdata
def test_small_wafer_sets_get_enough_steps_and_one_class_models_are_flagged(
    wm811k_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """623 WM-811K maps, 5 epochs: at a batch of 128 (5 steps an epoch) every map gets
    one class — flagged with a warning; the default batch size gives the epochs enough
    steps to learn several classes."""
    wrangle = Wrangle(size=32)
    train = wrangle.run(load_wafer_maps(wm811k_dir / "WM811K_train_1_split.npz"))
    held = load_wafer_maps(wm811k_dir / "WM811K_train_20_split.npz")
    held = wrangle.run(held.subset(range(0, len(held), 20)))  # a training file, not the test
    with caplog.at_level("WARNING", logger="inspectkit"):
        big = Classifier(epochs=5, batch_size=128, progress=False).fit(train)
    assert big.train_result is not None and big.train_result.one_class
    assert "predicts class" in caplog.text and "for every one of" in caplog.text
    clf = Classifier(epochs=5, progress=False).fit(train)
    assert clf.train_result is not None and not clf.train_result.one_class
    pred = clf.run(held)
    assert len(set(pred.predicted)) >= 3
    majority = max(train.class_counts().values()) / len(train)
    assert classification_report(pred).metrics["accuracy"] > majority - 0.05


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_continual_defaults_learn_the_stream_and_match_joint_training(wm811k_dir: Path) -> None:
    """The README's continual example with the stage's defaults, on a small class-incremental
    WM-811K stream: it beats plain fine-tuning clearly, and the same stage trained jointly
    on all classes keeps up with a ``Classifier`` of the same network and epochs."""
    train = load_wafer_maps(wm811k_dir / "WM811K_train_10_split.npz")
    held = load_wafer_maps(wm811k_dir / "WM811K_train_20_split.npz")  # not the test file
    rng, by_class = random.Random(0), {}
    for i, s in enumerate(held.samples):
        by_class.setdefault(s.label, []).append(i)
    held = held.subset(sorted(i for v in by_class.values() for i in rng.sample(v, min(30, len(v)))))
    order = [["none", "Center", "Edge-Ring"], ["Edge-Loc", "Loc"], ["Scratch", "Random"]]
    stream = class_incremental_stream(train, held, order, max_train_per_class=60, seed=0)
    small = {"max_params": 30_000, "device": "cpu", "progress": False}

    def final_accuracy(**settings: object) -> float:
        pipe = ik.Pipeline([Wrangle(size=32), ContinualClassifier(**small, **settings)])
        for t, e in enumerate(stream):
            pipe.fit(e.train) if t == 0 else update_pipeline(pipe, e.train)
        accs = [classification_report(pipe.run(e.test)).metrics["accuracy"] for e in stream]
        return sum(accs) / len(accs)

    readme = final_accuracy(buffer="snnl", capacity=60, ensemble=True)
    finetune = final_accuracy(buffer="none")
    assert readme >= finetune + 0.15, (readme, finetune)

    wrangle = Wrangle(size=32)
    everything = wrangle.run(
        ImageSet.concat([e.train for e in stream]).replace(classes=list(stream[-1].seen_classes))
    )
    test = wrangle.run(
        ImageSet.concat([e.test for e in stream]).replace(classes=everything.classes)
    )
    joint = ContinualClassifier(**small, buffer="none").fit(everything)
    epochs = joint.config.epochs
    clf = Classifier(max_params=30_000, epochs=epochs, progress=False).fit(everything)
    joint_acc = float((joint.predict_proba(test).argmax(1) == test.targets()).float().mean())
    clf_acc = classification_report(clf.run(test)).metrics["accuracy"]
    assert joint_acc >= clf_acc - 0.05, (joint_acc, clf_acc)
    assert joint_acc > 0.45  # seven classes: chance 0.14
