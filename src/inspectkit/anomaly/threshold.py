"""Threshold calibration and score normalisation, as one :class:`Calibration` object.

Without defect samples, a threshold is set on held-out good images so that a chosen
share of them would be flagged (the false-alarm rate a line can afford, e.g. 0.5 %).
With some labelled defects, the threshold that maximises F1 on them is taken instead.
Normalised scores map the raw score range to [0, 1] piecewise linearly with 0.5 exactly
at the threshold, so "above 0.5" means "anomalous" whatever the detector. The one rule
for a verdict is :func:`verdict`: ``score > threshold``.

How a threshold at a false-alarm rate is estimated from ``n`` held-out goods
(:meth:`Calibration.estimate`):

* ``n × rate ≥ 1``: the order statistic (:func:`threshold_at_false_alarm_rate`), with a
  95 % interval from the binomial distribution of the order statistics;
* ``n × rate < 1`` (the empirical quantile would be the single highest good score, so
  one odd good part sets the threshold): the upper tail is fitted instead
  (:func:`tail_threshold`: peaks over the 80th percentile, exponential excesses — the
  tail of a maximum of many roughly Gaussian patch scores — their winsorised mean as the
  scale),
  with the interval of the scale estimate;
* below ``MIN_EXPECTED_ALARMS`` expected false alarms among the goods a warning says how
  many goods it would take to measure the rate.

A ``review`` band is a second, lower threshold: scores in ``(review_threshold,
threshold]`` go to a person, those above are defects (:meth:`Calibration.verdicts`).

Where a flagged part's defect lies is its *region*: the anomaly-map pixels above the
``region_threshold``, set on the held-out goods' maps so that a share
``region_false_alarm_rate`` of their pixels would lie in a region (:class:`PixelTail`,
:meth:`Calibration.with_region`). The image threshold rests on each good image's highest
map value, so the map above it shows only the strongest spot of a part with several
defects; the region threshold is a pixel-level one, as low as the goods' maps allow.
Regions are drawn for parts flagged or sent to review, never for good ones
(:func:`region_masks`, at :attr:`Calibration.region_line`).

Example:
    >>> import torch
    >>> good = torch.arange(1000, dtype=torch.float32)
    >>> thr = threshold_at_false_alarm_rate(good, 0.01)
    >>> round(float((good > thr).float().mean()), 4)
    0.01
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

from inspectkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Expected false alarms among the calibration goods (``n × rate``) below which the
#: measured rate is too uncertain to trust (±30 % at 10); a warning says so.
MIN_EXPECTED_ALARMS = 10
#: Share of the calibration goods whose excesses form the fitted tail (at least 10).
TAIL_SHARE = 0.2
#: The three verdicts of a detector with a review band.
VERDICTS = ("good", "review", "defect")
#: Share of the calibration goods' map pixels a :class:`PixelTail` keeps (its highest):
#: the largest region false-alarm rate it can serve.
REGION_TAIL_SHARE = 0.01
#: At most this many pixel values are kept, so a tail of many large maps stays small (a
#: rate then needs ``rate × pixels`` within it).
REGION_TAIL_MAX = 2_000_000


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


def tail_threshold(good_scores: torch.Tensor, rate: float) -> tuple[float, float, float]:
    """Threshold exceeded by a share ``rate`` of goods, from a fit of the upper tail.

    Peaks over threshold: ``u`` is the score below the top ``k = max(10, ⌈TAIL_SHARE·n⌉)``
    goods; their excesses over ``u`` are taken as exponential with scale ``β`` = their
    mean (maximum likelihood) after winsorising them at their 90th percentile, so
    ``P(score > t) = (k/n)·exp(−(t−u)/β)`` and ``t = u + β·ln(k / (n·rate))``. An odd
    good part neither becomes the threshold nor sets the scale. Returns ``(t, low,
    high)``, the 95 % interval from the scale's standard error ``β/√k``. (Simulated with
    190 goods at 0.5 %: 0.3 % of fresh Gaussian, 0.6 % of Gumbel and 0.8 % of log-normal
    goods flagged, median of 30 draws; BENCHMARKS.md, session 6.)

    Example:
        >>> g = torch.randn(190, generator=torch.Generator().manual_seed(0))
        >>> t, lo, hi = tail_threshold(torch.cat([g, torch.tensor([9.0])]), 0.005)
        >>> lo < t < hi < 9.0  # the odd score at 9 is not the threshold
        True
    """
    rate = check_rate(rate)
    s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
    n = s.numel()
    if n < 10:
        raise DataError(f"a tail fit needs at least 10 good scores, got {n}")
    ordered = s.sort(descending=True).values
    k = min(n - 1, max(10, math.ceil(TAIL_SHARE * n)))
    u = float(ordered[k])
    excess = ordered[:k] - u
    # winsorised at the excesses' 90th percentile: a few odd goods cannot set the scale
    capped = excess.clamp(max=float(torch.quantile(excess, 0.9)))
    beta = max(float(capped.mean()), 1e-12 * max(abs(u), 1.0))
    reach = math.log(k / (n * rate))
    if reach <= 0:  # the rate lies inside the body: nothing to extrapolate
        t = threshold_at_false_alarm_rate(s, rate)
        return t, t, t
    spread = 1.96 / math.sqrt(k)
    t = u + beta * reach
    return t, u + beta * max(0.0, 1 - spread) * reach, u + beta * (1 + spread) * reach


def order_statistic_interval(good_scores: torch.Tensor, rate: float) -> tuple[float, float]:
    """95 % interval of the score exceeded by a share ``rate`` of goods: the order
    statistics at the 2.5 % and 97.5 % quantiles of Binomial(n, rate) exceedances."""
    from scipy.stats import binom

    s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
    n = s.numel()
    ordered = s.sort(descending=True).values
    lo_k = int(binom.ppf(0.975, n, rate))  # more exceedances: a lower threshold
    hi_k = int(binom.ppf(0.025, n, rate))
    return float(ordered[min(lo_k, n - 1)]), float(ordered[min(max(hi_k - 1, 0), n - 1)])


def goods_needed(rate: float) -> int:
    """Calibration goods for :data:`MIN_EXPECTED_ALARMS` expected false alarms at ``rate``."""
    return math.ceil(MIN_EXPECTED_ALARMS / check_rate(rate) - 1e-9)


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


@dataclass(frozen=True)
class PixelTail:
    """The highest map values of the calibration goods, enough to place a region threshold
    at any pixel false-alarm rate up to :data:`REGION_TAIL_SHARE` without keeping the maps.

    Attributes:
        values: The highest ``⌊REGION_TAIL_SHARE · pixels⌋ + 1`` values (at most
            :data:`REGION_TAIL_MAX`), descending, float64: the order statistic at every
            rate up to the share.
        pixels: How many map pixels they were taken from.

    Example:
        >>> tail = PixelTail.of(torch.arange(10_000.0).reshape(1, 100, 100))
        >>> tail.threshold(0.001)  # 10 of the 10,000 pixels lie above it
        9989.0
    """

    values: torch.Tensor
    pixels: int

    @classmethod
    def of(cls, maps: torch.Tensor) -> PixelTail:
        """The tail of ``maps`` (``N×H×W``, the calibration goods' anomaly maps)."""
        flat = torch.as_tensor(maps).detach().flatten()
        n = flat.numel()
        if n == 0:
            raise DataError("no calibration maps to set a region threshold on")
        if not bool(torch.isfinite(flat).all()):
            raise DataError("calibration maps contain NaN/inf")
        k = min(n, REGION_TAIL_MAX, math.floor(REGION_TAIL_SHARE * n + 1e-9) + 1)
        return cls(flat.float().topk(k).values.double(), n)

    @property
    def max_rate(self) -> float:
        """The largest rate :meth:`threshold` can serve from the kept values."""
        return 1.0 if self.values.numel() == self.pixels else self.values.numel() / self.pixels

    def threshold(self, rate: float) -> float:
        """Smallest map value above which at most ``rate`` of the pixels lie (the order
        statistic, as :func:`threshold_at_false_alarm_rate` for images)."""
        rate = check_rate(rate)
        k = int(np.floor(rate * self.pixels + 1e-9))
        if k >= self.values.numel() and self.values.numel() < self.pixels:
            raise ConfigError(
                f"a region false-alarm rate of {rate:g} is above the {self.max_rate:g} this "
                "calibration kept; choose a smaller rate"
            )
        return float(self.values[min(k, self.values.numel() - 1)])


def verdict(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Anomalous or not: ``score > threshold``, compared in float64 — the one rule.

    Example:
        >>> verdict(torch.tensor([0.2, 0.5, 0.7]), 0.5).tolist()
        [False, False, True]
    """
    return torch.as_tensor(scores).double() > float(threshold)


def region_masks(
    maps: torch.Tensor, lines: torch.Tensor, shown: torch.Tensor, *, peak: bool = True
) -> torch.Tensor:
    """Per part, the map pixels above its ``lines`` value, for the parts ``shown`` (flagged
    or in review; the rest get none). With ``peak``, a shown part with no pixel above its
    line gets its highest pixel. The one rule for regions, shared with the torch-free
    runtime (:func:`inspectkit_runtime.regions.region_masks`).

    Example:
        >>> m = torch.tensor([[[0.5, 1.5, 3.0]], [[0.5, 1.5, 1.8]], [[0.1, 0.2, 0.3]]])
        >>> shown = torch.tensor([True, True, False])
        >>> region_masks(m, torch.tensor([1.0, 2.0, 0.0]), shown).int().tolist()
        [[[0, 1, 1]], [[0, 0, 1]], [[0, 0, 0]]]
    """
    from inspectkit_runtime.regions import region_masks as masks_np

    m = torch.as_tensor(maps).detach().cpu().numpy()
    lines_np = torch.as_tensor(lines, dtype=torch.float64).cpu().numpy()
    shown_np = torch.as_tensor(shown, dtype=torch.bool).cpu().numpy()
    return torch.from_numpy(masks_np(m, lines_np, shown_np, peak=peak))


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
#: labelled ones, a threshold the line gave, or unknown (states saved by inspectkit 0.1.0).
RULES = ("false_alarm_rate", "f1", "fixed", "unrecorded")
#: How a threshold at a rate was estimated (see the module notes).
ESTIMATORS = ("order_statistic", "tail", None)


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
        estimator: ``"order_statistic"`` or ``"tail"`` for the rate rule (module notes).
        interval: 95 % interval ``(low, high)`` of the threshold estimate, or ``None``.
        review_threshold: Scores above it and at most ``threshold`` get the verdict
            ``"review"`` (``None``: no review band).
        region_threshold: Map pixels above it form the defect region of a flagged part
            (:meth:`regions`; ``None``: the image threshold draws it).
        region_false_alarm_rate: The share of calibration goods' map pixels above
            ``region_threshold`` (``None`` when set by hand or not set).

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
    estimator: str | None = None
    interval: tuple[float, float] | None = None
    review_threshold: float | None = None
    region_threshold: float | None = None
    region_false_alarm_rate: float | None = None

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
        if self.estimator not in ESTIMATORS:
            raise DataError(f"calibration estimator must be one of {ESTIMATORS[:-1]}")
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise DataError(
                    f"calibration interval must be finite (low, high), got {self.interval}"
                )
            object.__setattr__(self, "interval", (lo, hi))
        r = self.review_threshold
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r):
                raise DataError(f"review threshold must be a finite number, got {r!r}")
            if r > self.threshold:
                raise DataError(
                    f"review threshold {r} lies above the defect threshold {self.threshold}; "
                    "the review band sits below it"
                )
            object.__setattr__(self, "review_threshold", float(r))
        r = self.region_threshold
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r):
                raise DataError(f"region threshold must be a finite number, got {r!r}")
            object.__setattr__(self, "region_threshold", float(r))
        if self.region_false_alarm_rate is not None:
            rate = check_rate(self.region_false_alarm_rate)
            object.__setattr__(self, "region_false_alarm_rate", rate)

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
    def estimate(cls, good_scores: torch.Tensor, rate: float, *, warn: bool = True) -> Calibration:
        """A threshold at ``rate`` estimated as the module notes say: the order statistic
        when ``n × rate ≥ 1``, a tail fit below (:func:`tail_threshold`; the order
        statistic when fewer than 10 goods), each with its 95 % interval; with ``warn``, a
        warning when ``n × rate`` < :data:`MIN_EXPECTED_ALARMS`.

        Example:
            >>> cal = Calibration.estimate(torch.arange(1000.0), 0.05)
            >>> cal.estimator, cal.threshold, cal.interval[0] < 950 < cal.interval[1]
            ('order_statistic', 949.0, True)
        """
        rate = check_rate(rate)
        s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
        n = s.numel()
        if n == 0:
            raise DataError("no good scores to calibrate on; hold out some good images")
        if not bool(torch.isfinite(s).all()):
            raise DataError("calibration scores contain NaN/inf")
        expected = n * rate
        if warn and expected < MIN_EXPECTED_ALARMS:
            log.warning(
                "%d calibration goods × false-alarm rate %g = %.2g expected false alarms: too "
                "few to measure the rate (the threshold %s); about %d good images would be "
                "needed",
                n,
                rate,
                expected,
                "extrapolates a fit of the score tail"
                if expected < 1 and n >= 10
                else "is uncertain",
                goods_needed(rate),
            )
        if expected < 1 and n >= 10:
            t, lo, hi = tail_threshold(s, rate)
            low, high = _span(s, t)
            return cls(t, low, high, "false_alarm_rate", rate, n, "tail", (lo, hi))
        cal = cls.at_false_alarm_rate(s, rate)
        return replace(cal, estimator="order_statistic", interval=order_statistic_interval(s, rate))

    @classmethod
    def fixed(cls, threshold: float, good_scores: torch.Tensor | None = None) -> Calibration:
        """The threshold a line chose; normalisation from ``good_scores`` when given."""
        if good_scores is None or torch.as_tensor(good_scores).numel() == 0:
            spread = max(abs(float(threshold)), 1.0)
            return cls(threshold, threshold - spread, threshold + spread, "fixed")
        s = torch.as_tensor(good_scores, dtype=torch.float64).flatten()
        low, high = _span(s, float(threshold))
        return cls(threshold, low, high, "fixed", None, int(s.numel()))

    def with_review(
        self,
        *,
        threshold: float | None = None,
        rate: float | None = None,
        good_scores: torch.Tensor | None = None,
    ) -> Calibration:
        """This calibration with a review band below its threshold: at ``threshold``, or
        at the score that flags ``rate`` of ``good_scores`` for review (estimated like
        :meth:`estimate`; ``rate`` must exceed the defect rate)."""
        if threshold is None and rate is None:
            return replace(self, review_threshold=None)
        if threshold is None:
            assert rate is not None
            if good_scores is None:
                raise DataError("a review band at a rate needs the calibration goods' scores")
            if self.false_alarm_rate is not None and rate <= self.false_alarm_rate:
                raise ConfigError(
                    f"the review rate ({rate}) must exceed the false-alarm rate of the "
                    f"defect threshold ({self.false_alarm_rate})"
                )
            threshold = min(
                Calibration.estimate(good_scores, rate, warn=False).threshold, self.threshold
            )
        return replace(self, review_threshold=float(threshold))

    def with_region(
        self,
        *,
        threshold: float | None = None,
        rate: float | None = None,
        tail: PixelTail | None = None,
    ) -> Calibration:
        """This calibration with a region threshold: at ``threshold``, or at the map value
        that a share ``rate`` of the calibration goods' pixels exceed (``tail``:
        :meth:`PixelTail.of` their maps). Neither: no region threshold (the image
        threshold draws regions)."""
        if threshold is not None:
            return replace(self, region_threshold=float(threshold), region_false_alarm_rate=None)
        if rate is None:
            return replace(self, region_threshold=None, region_false_alarm_rate=None)
        if tail is None:
            raise DataError("a region threshold at a rate needs the calibration goods' maps")
        return replace(self, region_threshold=tail.threshold(rate), region_false_alarm_rate=rate)

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

    def in_review(self, scores: torch.Tensor) -> torch.Tensor:
        """``review_threshold < score <= threshold`` (all ``False`` without a band)."""
        s = torch.as_tensor(scores).double()
        if self.review_threshold is None:
            return torch.zeros(s.shape, dtype=torch.bool)
        return (s > self.review_threshold) & ~verdict(s, self.threshold)

    @property
    def region_line(self) -> float:
        """The map value regions are drawn above: ``region_threshold``, else the image
        threshold (:func:`region_masks`)."""
        return self.threshold if self.region_threshold is None else self.region_threshold

    def verdicts(self, scores: torch.Tensor) -> list[str]:
        """``"good"``, ``"review"`` or ``"defect"`` per score (:data:`VERDICTS`)."""
        bad, review = self.verdict(scores).tolist(), self.in_review(scores).tolist()
        return ["defect" if b else "review" if r else "good" for b, r in zip(bad, review)]

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain values for a saved state (``torch.load(weights_only=True)`` safe)."""
        state = asdict(self)
        state["interval"] = None if self.interval is None else list(self.interval)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibration:
        """The calibration :meth:`to_state` described."""
        if not isinstance(state, dict):
            raise DataError(f"a saved calibration is a dict, got {type(state).__name__}")
        fields = {"threshold", "low", "high", "rule", "false_alarm_rate", "n_good"}
        missing = sorted(fields - set(state))
        if missing:
            raise DataError(f"the saved calibration lacks {', '.join(missing)}")
        optional = {
            k: state[k]
            for k in (
                "estimator",
                "review_threshold",
                "region_threshold",
                "region_false_alarm_rate",
            )
            if k in state
        }
        if state.get("interval") is not None:
            interval = state["interval"]
            if not isinstance(interval, list | tuple) or len(interval) != 2:
                raise DataError(f"the saved calibration interval is not a pair: {interval!r}")
            optional["interval"] = tuple(interval)
        return cls(**{k: state[k] for k in fields}, **optional)

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
    "ESTIMATORS",
    "MIN_EXPECTED_ALARMS",
    "REGION_TAIL_MAX",
    "REGION_TAIL_SHARE",
    "RULES",
    "VERDICTS",
    "Calibration",
    "PixelTail",
    "check_rate",
    "f1_optimal_threshold",
    "goods_needed",
    "normalize",
    "order_statistic_interval",
    "region_masks",
    "tail_threshold",
    "threshold_at_false_alarm_rate",
    "verdict",
]
