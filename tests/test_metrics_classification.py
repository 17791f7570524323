"""classification_report: figures agree with scikit-learn; synthetic, unlabelled and review samples."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from inspectkit.errors import DataError
from inspectkit.metrics import classification_report
from inspectkit.records import ImageSet, Predictions, SampleMeta

CLASSES = ["Center", "Scratch", "none"]


def predictions(
    truth: list[str | None], predicted: list[str | None], synthetic: list[bool] | None = None
) -> Predictions:
    n = len(truth)
    synthetic = synthetic or [False] * n
    probs = torch.full((n, len(CLASSES)), 0.1)
    for i, p in enumerate(predicted):
        probs[i, CLASSES.index(p) if p is not None else 0] = 0.8
    return Predictions(
        images=torch.zeros(n, 1, 4, 4, dtype=torch.uint8),
        samples=[
            SampleMeta(id=str(i), label=t, synthetic=s)
            for i, (t, s) in enumerate(zip(truth, synthetic))
        ],
        classes=CLASSES,
        probs=probs,
        predicted=predicted,
    )


def test_figures_match_scikit_learn() -> None:
    truth = ["Center", "Center", "Scratch", "none", "none", "none", "Scratch"]
    pred = ["Center", "none", "Scratch", "none", "Scratch", "none", "Scratch"]
    r = classification_report(predictions(truth, pred), title="wafers")
    assert r.title == "wafers"
    assert math.isclose(r.metrics["accuracy"], accuracy_score(truth, pred))
    assert math.isclose(r.metrics["macro_f1"], f1_score(truth, pred, average="macro"))
    assert r.confusion == confusion_matrix(truth, pred, labels=CLASSES).tolist()
    assert r.per_class["Center"]["recall"] == 0.5
    assert r.per_class["Scratch"]["precision"] == pytest.approx(2 / 3)
    assert r.per_class["none"]["support"] == 3
    assert r.metrics["coverage"] == 1.0
    assert r.counts["review"] == 0
    assert '"macro_f1"' in r.to_json()


def test_synthetic_and_unlabelled_samples_are_dropped() -> None:
    truth = ["Center", "Scratch", None, "none", "Center"]
    pred = ["Center", "Scratch", "none", "Center", "none"]
    synthetic = [False, False, False, False, True]
    r = classification_report(predictions(truth, pred, synthetic))
    assert r.counts["synthetic_dropped"] == 1
    assert r.counts["unlabelled_dropped"] == 1
    assert r.counts["scored"] == 3
    assert r.metrics["accuracy"] == pytest.approx(2 / 3)
    assert sum(map(sum, r.confusion)) == 3
    assert any("synthetic" in n for n in r.notes)


def test_review_samples_are_counted_apart() -> None:
    truth = ["Center", "Scratch", "none", "none"]
    pred = ["Center", None, "none", None]
    r = classification_report(predictions(truth, pred))
    assert r.counts["review"] == 2 and r.counts["decided"] == 2
    assert r.metrics["coverage"] == 0.5
    assert r.metrics["accuracy"] == 1.0
    assert r.per_class["Scratch"]["review"] == 1
    everything_reviewed = classification_report(predictions(truth, [None] * 4))
    assert math.isnan(everything_reviewed.metrics["accuracy"])
    assert everything_reviewed.counts["review"] == 4


def test_nothing_to_score_or_wrong_record_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no real, labelled sample"):
        classification_report(predictions([None, None], ["Center", "none"]))
    plain = ImageSet(images=torch.zeros(1, 1, 2, 2), samples=[SampleMeta(id="a")])
    with pytest.raises(DataError, match="needs Predictions"):
        classification_report(plain)  # type: ignore[arg-type]
