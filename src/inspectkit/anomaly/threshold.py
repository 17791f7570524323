"""Threshold calibration and score normalisation.

Without defect samples, a threshold is set on held-out good images so that a chosen
share of them would be flagged (the false-alarm rate a line can afford, e.g. 0.5 %).
With some labelled defects, the threshold that maximises F1 on them is taken instead.
Normalised scores map the raw score range to [0, 1] piecewise linearly with 0.5 exactly
at the threshold, so "above 0.5" means "anomalous" whatever the detector.

Example:
    >>> import torch
    >>> good = torch.arange(1000, dtype=torch.float32)
    >>> thr = threshold_at_false_alarm_rate(good, 0.01)
    >>> round(float((good > thr).float().mean()), 4)
    0.01
"""

from __future__ import annotations

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


def normalize(scores: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    """Map raw scores to [0, 1]: ``low``→0, ``threshold``→0.5, ``high``→1, clipped.

    Example:
        >>> normalize(torch.tensor([0.0, 5.0, 10.0, 99.0]), 5.0, 0.0, 10.0).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    lo = min(low, threshold - 1e-12)
    hi = max(high, threshold + 1e-12)
    below = 0.5 * (s - lo) / (threshold - lo)
    above = 0.5 + 0.5 * (s - threshold) / (hi - threshold)
    return torch.where(s <= threshold, below, above).clamp(0, 1).float()


__all__ = ["check_rate", "f1_optimal_threshold", "normalize", "threshold_at_false_alarm_rate"]
