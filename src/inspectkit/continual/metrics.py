"""Continual-learning metrics from the accuracy matrix ``R``.

``R[t, i]`` is the accuracy on the test set of experience ``i`` after training on
experience ``t`` (``T × T``; entries for experiences not yet seen may be ``NaN``).

* final average accuracy: ``mean_i R[T-1, i]``;
* average forgetting (Chaudhry et al., ECCV 2018, "Riemannian Walk"):
  ``f_i = max_{t < T-1} R[t, i] - R[T-1, i]`` averaged over ``i < T-1``;
* backward transfer (Lopez-Paz & Ranzato, NeurIPS 2017, "Gradient Episodic Memory"):
  ``BWT = mean_{i < T-1} (R[T-1, i] - R[i, i])`` (negative = forgetting).

Example:
    >>> R = [[0.9, float("nan")], [0.6, 0.8]]
    >>> round(final_average_accuracy(R), 3), round(average_forgetting(R), 3), round(backward_transfer(R), 3)
    (0.7, 0.3, -0.3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from inspectkit.errors import DataError

MatrixLike = Sequence[Sequence[float]] | np.ndarray | torch.Tensor


def _matrix(R: MatrixLike) -> np.ndarray:
    if isinstance(R, torch.Tensor):
        R = R.detach().cpu().numpy()
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DataError(f"the accuracy matrix must be square T×T with T ≥ 1, got shape {m.shape}")
    seen = np.tril(np.ones_like(m, dtype=bool))
    if np.isnan(m[seen]).any():
        t, i = np.argwhere(np.isnan(m) & seen)[0]
        raise DataError(
            f"R[{t}, {i}] is NaN, but experience {i} was seen by step {t}; fill the lower triangle"
        )
    return m


def accuracy_matrix(accuracies: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack per-step accuracy rows into ``R`` (missing upper entries become ``NaN``).

    Example:
        >>> accuracy_matrix([[0.9], [0.6, 0.8]]).shape
        (2, 2)
    """
    t = len(accuracies)
    R = np.full((t, t), np.nan)
    for row, accs in enumerate(accuracies):
        if len(accs) > t:
            raise DataError(f"row {row} has {len(accs)} accuracies, more than the {t} experiences")
        R[row, : len(accs)] = accs
    return _matrix(R)


def final_average_accuracy(R: MatrixLike) -> float:
    """Mean accuracy over all experiences' test sets after the last experience."""
    m = _matrix(R)
    return float(m[-1].mean())


def average_forgetting(R: MatrixLike) -> float:
    """Chaudhry et al. (2018): mean over earlier experiences of best-ever minus final accuracy.

    ``0.0`` for a single experience (nothing to forget).
    """
    m = _matrix(R)
    t = m.shape[0]
    if t < 2:
        return 0.0
    best = m[: t - 1, : t - 1].max(
        axis=0, where=np.tril(np.ones((t - 1, t - 1), dtype=bool)), initial=-math.inf
    )
    return float((best - m[t - 1, : t - 1]).mean())


def backward_transfer(R: MatrixLike) -> float:
    """Lopez-Paz & Ranzato (2017): mean of ``R[T-1, i] - R[i, i]`` over ``i < T-1``."""
    m = _matrix(R)
    t = m.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([m[t - 1, i] - m[i, i] for i in range(t - 1)]))


def continual_summary(R: MatrixLike) -> dict[str, float]:
    """All three figures as a dict (``final_avg_accuracy``, ``forgetting``, ``bwt``)."""
    return {
        "final_avg_accuracy": final_average_accuracy(R),
        "forgetting": average_forgetting(R),
        "bwt": backward_transfer(R),
    }


__all__ = [
    "accuracy_matrix",
    "average_forgetting",
    "backward_transfer",
    "continual_summary",
    "final_average_accuracy",
]
