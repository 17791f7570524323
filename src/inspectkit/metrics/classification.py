"""Classification metrics: accuracy, macro-F1, per-class figures, confusion matrix.

scikit-learn computes every figure. Synthetic samples and samples without a true label
are dropped first; samples the classifier sent to human review (``predicted=None``) are
counted apart and left out of accuracy, F1 and the confusion matrix (``coverage`` says
which share was decided automatically).

Example:
    >>> import torch
    >>> from inspectkit.records import Predictions, SampleMeta
    >>> from inspectkit.metrics import classification_report
    >>> p = Predictions(
    ...     images=torch.zeros(3, 1, 4, 4), classes=["bad", "ok"],
    ...     samples=[SampleMeta(id=str(i), label=lab) for i, lab in enumerate(["bad", "ok", "ok"])],
    ...     probs=torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
    ...     predicted=["bad", "ok", None],
    ... )
    >>> r = classification_report(p)
    >>> r.metrics["accuracy"], r.counts["review"]
    (1.0, 1)
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from inspectkit.errors import DataError
from inspectkit.records import Predictions, Report


def classification_report(predictions: Predictions, *, title: str = "classification") -> Report:
    """Score predictions against their true labels.

    Args:
        predictions: Output of a classifier (``Predictions`` or ``Explained``) whose
            samples carry true labels.
        title: Title of the report.

    Returns:
        A :class:`Report` with ``metrics`` (``accuracy``, ``macro_f1``, ``weighted_f1``,
        ``balanced_accuracy``, ``coverage``), ``per_class`` (``precision``, ``recall``,
        ``f1``, ``support``, ``review``), the confusion matrix (rows = true class,
        columns = predicted, decided samples only) and ``counts`` (``total``, ``scored``,
        ``decided``, ``review``, ``synthetic_dropped``, ``unlabelled_dropped``).

    Raises:
        DataError: Not a ``Predictions`` record, or no real labelled sample to score.
    """
    if not isinstance(predictions, Predictions):
        raise DataError(
            f"classification_report needs Predictions (a Classifier's output), got {type(predictions).__name__}"
        )
    classes = list(predictions.classes)
    index = {c: i for i, c in enumerate(classes)}
    n_total = len(predictions)
    synthetic = sum(s.synthetic for s in predictions.samples)
    keep = [i for i, s in enumerate(predictions.samples) if not s.synthetic and s.label is not None]
    unlabelled = n_total - synthetic - len(keep)
    if not keep:
        raise DataError(
            "no real, labelled sample to score: every sample is synthetic or has no true label"
        )
    y_true_all = np.array([index[predictions.samples[i].label] for i in keep])  # type: ignore[index]
    pred_all = [predictions.predicted[i] for i in keep]
    decided = np.array([p is not None for p in pred_all])
    y_true = y_true_all[decided]
    y_pred = np.array([index[p] for p in pred_all if p is not None], dtype=int)
    labels = list(range(len(classes)))
    notes: list[str] = []
    metrics: dict[str, float] = {"coverage": float(decided.mean())}
    per_class: dict[str, dict[str, float]] = {}
    review_per_class = np.bincount(y_true_all[~decided], minlength=len(classes))
    if y_true.size:
        metrics["accuracy"] = float(accuracy_score(y_true, y_pred))
        metrics["macro_f1"] = float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        )
        metrics["weighted_f1"] = float(
            f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        )
        present = sorted(set(y_true.tolist()))
        metrics["balanced_accuracy"] = float(
            balanced_accuracy_score(y_true, y_pred) if len(present) > 0 else math.nan
        )
        prec, rec, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
        absent = [classes[i] for i in labels if support[i] == 0]
        if absent:
            notes.append(
                f"classes without true samples among decided ones: {absent}; macro-F1 averages over "
                "all classes, counting those as 0 when predicted"
            )
        for i, c in enumerate(classes):
            per_class[c] = {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": float(support[i]),
                "review": float(review_per_class[i]),
            }
        confusion = confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist()
    else:
        for key in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"):
            metrics[key] = math.nan
        notes.append("every sample was sent to human review; nothing decided to score")
        confusion = [[0] * len(classes) for _ in classes]
    if synthetic:
        notes.append(f"{synthetic} synthetic samples left out")
    if unlabelled:
        notes.append(f"{unlabelled} samples without a true label left out")
    counts = {
        "total": n_total,
        "scored": len(keep),
        "decided": int(decided.sum()),
        "review": int((~decided).sum()),
        "synthetic_dropped": synthetic,
        "unlabelled_dropped": unlabelled,
    }
    return Report(
        title=title,
        metrics=metrics,
        classes=classes,
        confusion=confusion,
        per_class=per_class,
        counts=counts,
        notes=notes,
    )


__all__ = ["classification_report"]
