"""Score drift: are today's anomaly scores distributed as the calibration goods' were?

A line changes (lighting, material, a camera knocked out of focus) long before defects
pile up; the first sign is that good parts score differently. :class:`DriftMonitor`
keeps the scores of the last ``window`` inputs and compares them with reference scores of
good parts (the calibration goods, or any held-out good parts):

* **PSI** (population stability index) over ``bins`` bins cut at the reference's
  quantiles: ``Σ (q − p) · ln(q / p)``, shares floored at 1e-4. Rules of thumb: < 0.1
  stable, 0.1–0.25 moderate, > 0.25 a significant shift;
* **KS**: the largest gap between the two empirical distribution functions.

The alarm is raised when the PSI exceeds ``alarm`` with at least ``min_samples`` recent
scores. Recent scores of defective parts count too: a rising defect rate is drift a line
wants to see as well.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Default PSI above which the drift alarm is raised.
DEFAULT_ALARM = 0.25
SHARE_FLOOR = 1e-4


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference`` (bins at the
    reference's quantiles).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(size=5000)
        >>> psi(ref, rng.normal(size=2000)) < 0.05, psi(ref, rng.normal(1.0, size=2000)) > 0.25
        (True, True)
    """
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    new = np.asarray(recent, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, new, side="right"), minlength=edges.size + 1) / new.size
    p, q = np.maximum(p, SHARE_FLOOR), np.maximum(q, SHARE_FLOOR)
    return float(((q - p) * np.log(q / p)).sum())


def ks_statistic(reference: np.ndarray, recent: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical
    distribution functions.

    Example:
        >>> ks_statistic(np.array([0.0, 1.0]), np.array([5.0, 6.0]))
        1.0
    """
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(recent, dtype=np.float64))
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / a.size
    fb = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(fa - fb).max())


@dataclass(frozen=True)
class DriftStatus:
    """What :meth:`DriftMonitor.status` reports."""

    reference_size: int
    recent_size: int
    psi: float | None
    ks: float | None
    alarm: bool
    threshold: float


class DriftMonitor:
    """Recent scores against reference scores (see the module notes); thread-safe.

    Args:
        reference: Scores of good parts (at least 20); ``None`` = no reference yet.
        window: Recent scores kept.
        alarm: PSI above which the alarm is raised.
        min_samples: Recent scores needed before the alarm can be raised.
        bins: PSI bins.
    """

    def __init__(
        self,
        reference: Iterable[float] | None = None,
        *,
        window: int = 500,
        alarm: float = DEFAULT_ALARM,
        min_samples: int = 50,
        bins: int = 10,
    ) -> None:
        if window < 1 or min_samples < 1 or bins < 2 or not alarm > 0:
            raise ValueError("window, min_samples ≥ 1, bins ≥ 2 and alarm > 0 are required")
        self.window = int(window)
        self.alarm = float(alarm)
        self.min_samples = int(min_samples)
        self.bins = int(bins)
        self._recent: deque[float] = deque(maxlen=self.window)
        self._lock = threading.Lock()
        self.reference: np.ndarray | None = None
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, scores: Iterable[float]) -> None:
        ref = np.asarray(list(scores), dtype=np.float64)
        if ref.size < 20 or not np.isfinite(ref).all():
            raise ValueError(f"a drift reference needs at least 20 finite scores, got {ref.size}")
        with self._lock:
            self.reference = ref
            self._recent.clear()

    def add(self, scores: Iterable[float]) -> None:
        with self._lock:
            self._recent.extend(float(s) for s in scores)

    def status(self) -> DriftStatus:
        with self._lock:
            recent = np.asarray(self._recent, dtype=np.float64)
            ref = self.reference
        if ref is None or recent.size == 0:
            return DriftStatus(
                0 if ref is None else ref.size, recent.size, None, None, False, self.alarm
            )
        value = psi(ref, recent, self.bins)
        alarm = recent.size >= self.min_samples and value > self.alarm
        return DriftStatus(
            ref.size, recent.size, value, ks_statistic(ref, recent), alarm, self.alarm
        )


__all__ = ["DEFAULT_ALARM", "DriftMonitor", "DriftStatus", "ks_statistic", "psi"]
