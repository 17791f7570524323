"""Threshold calibration and score normalisation, as one :class:`Calibration` object.

Without defect samples, a threshold is set on held-out good images so that a chosen
share of them would be flagged (the false-alarm rate a line can afford, e.g. 0.5 %).
With some labelled defects, the threshold that maximises F1 on them is taken instead.
Normalised scores map the raw score range to [0, 1] piecewise linearly with 0.5 exactly
at the threshold, so "above 0.5" means "anomalous" whatever the detector. The one rule
for a verdict is :func:`verdict`: ``score > threshold``.

Example:
    >>> import torch
    >>> good = torch.arange(1000, dtype=torch.float32)
    >>> thr = threshold_at_false_alarm_rate(good, 0.01)
    >>> round(float((good > thr).float().mean()), 4)
    0.01
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

from inspectkit.errors import ConfigError, DataError


def check_rate(rate: float) -> float:
    """Refuse a false-alarm rate outside (0, 1)."""
    if not isinstance(rate, int | float) or not 0 < float(rate) < 1:
        raise ConfigError(
            f"target false-alarm rate must lie strictly between 0 and 1 (e.g. 0.005), got {rate!r}"
        )
    return float(rate)


def threshold_at_false_alarm_rate(good_scores: torch.Tensor, rate: float) -> float:
    """Smallest threshold above which at most ``rate`` of ``good_scores`` lie.

    ``score > threshold`` is anomalous. With ``n`` good scores the achievable rates are
    multiples of ``1/n``; the threshold is the ``⌊rate·n⌋``-th largest score (so the
    measured rate never exceeds ``rate`` on these scores; fewer than ``1/rate`` images
    give the maximum).
    """
    rate = check_rate(rate)
    s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise DataError("no good scores to calibrate a threshold on; hold out some good images")
    if not bool(torch.isfinite(s).all()):
        raise DataError("calibration scores contain NaN/inf")
    ordered = s.sort(descending=True).values
    k = int(np.floor(rate * s.numel() + 1e-9))
    return float(ordered[min(k, s.numel() - 1)])


def f1_optimal_threshold(scores: torch.Tensor, is_defective: torch.Tensor) -> float:
    """Threshold with the best F1 on labelled scores (needs both good and defective)."""
    y = torch.as_tensor(is_defective).bool().numpy()
    s = torch.as_tensor(scores, dtype=torch.float64).numpy()
    if y.all() or not y.any():
        raise DataError("F1-optimal calibration needs both good and defective samples")
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve flags score >= t; the stage flags score > threshold.
    t = float(thresholds[best])
    below = s[s < t]
    return float(below.max()) if below.size else float(np.nextafter(t, -np.inf))


def verdict(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Anomalous or not: ``score > threshold``, compared in float64 — the one rule.

    Example:
        >>> verdict(torch.tensor([0.2, 0.5, 0.7]), 0.5).tolist()
        [False, False, True]
    """
    return torch.as_tensor(scores).double() > float(threshold)


def normalize(scores: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    """Map raw scores to [0, 1]: ``low``→0, ``threshold``→0.5, ``high``→1, clipped.

    Monotone, and exact at the boundary after rounding to float32: a score is above 0.5
    exactly when :func:`verdict` flags it.

    Example:
        >>> normalize(torch.tensor([0.0, 5.0, 10.0, 99.0]), 5.0, 0.0, 10.0).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    lo, hi = min(low, threshold), max(high, threshold)
    # a range collapsed onto the threshold (e.g. one calibration score) maps to 0, 0.5, 1
    if threshold > lo:
        below = 0.5 * (s - lo) / (threshold - lo)
    else:
        below = torch.where(s < threshold, 0.0, 0.5).double()
    if hi > threshold:
        above = 0.5 + 0.5 * (s - threshold) / (hi - threshold)
    else:
        above = torch.where(s > threshold, 1.0, 0.5).double()
    out = torch.where(s <= threshold, below, above).clamp(0, 1).float()
    # float32 rounding may land a score just above the threshold on 0.5
    just_above = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)).item()
    flagged = s > threshold
    return torch.where(flagged, out.clamp_min(just_above), out.clamp_max(0.5))


#: How a :class:`Calibration` was set: at a false-alarm rate on good images, F1-optimal on
#: labelled ones, or unknown (states saved by inspectkit 0.1.0).
RULES = ("false_alarm_rate", "f1", "unrecorded")


@dataclass(frozen=True)
class Calibration:
    """A detector's threshold and score normalisation, and what they rest on.

    Build one with :meth:`at_false_alarm_rate` (good images only) or :meth:`f1_optimal`
    (good and labelled defective images); it is saved with the model
    (:meth:`to_state` / :meth:`from_state`).

    Attributes:
        threshold: ``score > threshold`` is anomalous (:func:`verdict`).
        low: Score normalised to 0 (the smallest calibration score of a good image).
        high: Score normalised to 1 (at least one threshold-to-low spread above the
            threshold, so a normalised 1 is clearly anomalous).
        rule: ``"false_alarm_rate"``, ``"f1"`` or ``"unrecorded"`` (see :data:`RULES`).
        false_alarm_rate: The rate the threshold was set at (rule ``"false_alarm_rate"``;
            ``None`` otherwise).
        n_good: Good images the calibration rests on (``None`` when unrecorded).

    Example:
        >>> cal = Calibration.at_false_alarm_rate(torch.arange(100.0), 0.05)
        >>> cal.threshold, cal.verdict(torch.tensor([94.0, 95.0])).tolist()
        (94.0, [False, True])
        >>> Calibration.from_state(cal.to_state()) == cal
        True
    """

    threshold: float
    low: float
    high: float
    rule: str = "false_alarm_rate"
    false_alarm_rate: float | None = None
    n_good: int | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"calibration {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise DataError(f"calibration {name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.rule not in RULES:
            raise DataError(f"calibration rule must be one of {RULES}, got {self.rule!r}")
        if self.false_alarm_rate is not None:
            object.__setattr__(self, "false_alarm_rate", check_rate(self.false_alarm_rate))
        if self.n_good is not None:
            if isinstance(self.n_good, bool) or not isinstance(self.n_good, int):
                raise DataError(f"calibration n_good must be a count, got {self.n_good!r}")
            if self.n_good < 0:
                raise DataError(f"calibration n_good must not be negative, got {self.n_good}")

    # ------------------------------------------------------------------ building
    @classmethod
    def at_false_alarm_rate(cls, good_scores: torch.Tensor, rate: float) -> Calibration:
        """Threshold flagging at most ``rate`` of ``good_scores``
        (:func:`threshold_at_false_alarm_rate`), normalisation spanning them."""
        rate = check_rate(rate)
        threshold = threshold_at_false_alarm_rate(good_scores, rate)
        low, high = _span(good_scores, threshold)
        n = int(torch.as_tensor(good_scores).numel())
        return cls(threshold, low, high, "false_alarm_rate", rate, n)

    @classmethod
    def f1_optimal(cls, scores: torch.Tensor, is_defective: torch.Tensor) -> Calibration:
        """F1-optimal threshold on labelled ``scores`` (:func:`f1_optimal_threshold`);
        normalisation from the good scores, reaching up to the highest score."""
        s = torch.as_tensor(scores, dtype=torch.float64).flatten()
        bad = torch.as_tensor(is_defective).bool().flatten()
        if bad.shape != s.shape:
            raise DataError(f"{s.numel()} scores but {bad.numel()} defect labels")
        threshold = f1_optimal_threshold(s, bad)
        low, high = _span(s[~bad], threshold)
        high = max(high, float(s.max()))
        return cls(threshold, low, high, "f1", None, int((~bad).sum()))

    # ------------------------------------------------------------------ use
    def verdict(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores > threshold`` (bool tensor)."""
        return verdict(scores, self.threshold)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores mapped to [0, 1] with the threshold at 0.5 (:func:`normalize`)."""
        return normalize(scores, self.threshold, self.low, self.high)

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain values for a saved state (``torch.load(weights_only=True)`` safe)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibration:
        """The calibration :meth:`to_state` described."""
        if not isinstance(state, dict):
            raise DataError(f"a saved calibration is a dict, got {type(state).__name__}")
        fields = {"threshold", "low", "high", "rule", "false_alarm_rate", "n_good"}
        missing = sorted(fields - set(state))
        if missing:
            raise DataError(f"the saved calibration lacks {', '.join(missing)}")
        return cls(**{k: state[k] for k in fields})

    @classmethod
    def from_legacy(cls, values: torch.Tensor) -> Calibration:
        """From the ``[threshold, low, high]`` float64 tensor inspectkit 0.1.0 saved."""
        threshold, low, high = (float(v) for v in torch.as_tensor(values).tolist())
        return cls(threshold, low, high, "unrecorded", None, None)


def _span(good_scores: torch.Tensor, threshold: float) -> tuple[float, float]:
    """``(low, high)`` of the normalisation: the good scores' minimum, and their maximum
    but at least one threshold-to-low spread above the threshold."""
    s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise DataError("no good scores to calibrate on; hold out some good images")
    low = float(s.min())
    spread = max(threshold - low, 1e-6)
    return low, max(float(s.max()), threshold + spread)


__all__ = [
    "RULES",
    "Calibration",
    "check_rate",
    "f1_optimal_threshold",
    "normalize",
    "threshold_at_false_alarm_rate",
    "verdict",
]
