"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO, F1 and false-alarm rate.

Ground truth per image comes from the samples (``meta["anomalous"]``, else the label:
unlabelled or a label in ``good_labels`` = good), per pixel from the masks (non-zero =
defect), resized with nearest neighbour to the anomaly maps' working size. Synthetic
samples are dropped first. scikit-learn computes the image curves; the pixel metrics read
the map values sorted once (:class:`PixelRanks`): the exact pixel AUROC, and AUPRO's
thresholds and false-positive rates; AUPRO follows Bergmann et
al. (MVTec AD, IJCV 2021): the mean per-region overlap integrated over false-positive
rates up to 0.3, divided by 0.3.

Example:
    >>> import torch
    >>> image_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import auc, f1_score, roc_auc_score

from inspectkit.errors import DataError
from inspectkit.ops import resize_images
from inspectkit.records import AnomalyScores, ImageSet, Report, SampleMeta

#: AUPRO's defaults: the false-positive rate it integrates up to, and its thresholds.
AUPRO_MAX_FPR = 0.3
AUPRO_THRESHOLDS = 1000
#: Labels that count as "good" (MVTec "good", magnetic tile "Free", WM-811K "none").
DEFAULT_GOOD_LABELS = ["good", "Free", "ok", "OK", "normal", "none"]


def is_defective(sample: SampleMeta, good_labels: Sequence[str] = DEFAULT_GOOD_LABELS) -> bool:
    """True when a sample is known to show a defect.

    ``meta["anomalous"]`` when a source set it, else the label: unlabelled samples and
    labels in ``good_labels`` are good, every other label is a defect.
    """
    flag = sample.meta.get("anomalous")
    if isinstance(flag, bool):
        return flag
    return sample.label is not None and sample.label not in good_labels


def anomaly_truth(data: ImageSet, good_labels: Sequence[str] | None = None) -> np.ndarray:
    """Per-sample ground truth (True = defect) by the rule of :func:`is_defective`."""
    good = DEFAULT_GOOD_LABELS if good_labels is None else good_labels
    return np.asarray([is_defective(s, good) for s in data.samples], dtype=bool)


def _scores_and_truth(
    scores: AnomalyScores | torch.Tensor | np.ndarray | Sequence[float],
    truth: torch.Tensor | np.ndarray | Sequence[int] | None,
    good_labels: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scores, AnomalyScores):
        real = scores.real()
        s = real.scores.double().numpy()
        y = anomaly_truth(real, good_labels) if truth is None else np.asarray(truth, dtype=bool)
    else:
        if truth is None:
            raise DataError("give the ground truth (1 = defective) with raw scores")
        s = np.asarray(torch.as_tensor(scores, dtype=torch.float64))
        y = np.asarray(torch.as_tensor(truth)).astype(bool)
    if s.shape != y.shape:
        raise DataError(f"{s.shape[0]} scores but {y.shape[0]} ground-truth values")
    return s, y


def _need_both(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def image_auroc(
    scores: AnomalyScores | torch.Tensor | np.ndarray | Sequence[float],
    truth: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    *,
    good_labels: Sequence[str] = DEFAULT_GOOD_LABELS,
) -> float:
    """Area under the ROC curve of image scores vs. defective/good; NaN if one class is absent."""
    s, y = _scores_and_truth(scores, truth, good_labels)
    if not _need_both(y):
        return float("nan")
    return float(roc_auc_score(y, s))


def _pixel_arrays(
    maps: AnomalyScores | torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(maps, AnomalyScores):
        real = maps.real()
        if real.maps is None:
            raise DataError("these AnomalyScores carry no anomaly maps")
        if masks is None:
            if real.masks is None:
                raise DataError("pixel metrics need defect masks; the set has none")
            masks = real.masks if not real.is_lazy else list(real.masks)
        m = real.maps
    else:
        m = torch.as_tensor(maps)
        if masks is None:
            raise DataError("pixel metrics need defect masks")
    if m.ndim != 3:
        raise DataError(f"anomaly maps must be N×H×W, got {tuple(m.shape)}")
    if isinstance(masks, torch.Tensor) and masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if len(masks) != m.shape[0]:
        raise DataError(f"{len(masks)} masks but {m.shape[0]} maps")
    gt = resize_images(
        masks if isinstance(masks, torch.Tensor) else list(masks), tuple(m.shape[-2:]), "nearest"
    )
    return m.float(), gt[:, 0] > 0


class PixelRanks:
    """Anomaly-map pixel values sorted once (all of them, and the defect pixels apart):
    what the exact pixel AUROC and AUPRO's thresholds and false-positive rates read,
    by binary search instead of a sort each (or a histogram over every pixel).

    Args:
        values: Pixel values (any shape; flattened), finite.
        defect: Bool per value (same number), True = defect pixel.

    Example:
        >>> r = PixelRanks(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
        >>> r.auroc(), int(r.good_at_or_above(np.array([0.35]))[0])
        (0.75, 1)
    """

    def __init__(self, values: np.ndarray, defect: np.ndarray) -> None:
        v = np.asarray(values).reshape(-1)
        y = np.asarray(defect, dtype=bool).reshape(-1)
        if v.shape != y.shape:
            raise DataError(f"{v.size} map values but {y.size} mask values")
        if not bool(np.isfinite(v).all()):
            raise DataError("anomaly maps hold NaN or infinite values; cannot rank them")
        self.all = np.sort(v)  # numpy's vectorised sort: ~4× torch.sort with indices
        self.defect = np.sort(v[y])
        self.n_defect = int(self.defect.size)
        self.n_good = int(self.all.size) - self.n_defect

    def good_below(self, x: np.ndarray, side: str = "left") -> np.ndarray:
        """Good pixels ``< x`` (``side="left"``) or ``<= x`` (``"right"``), per ``x``."""
        below = np.searchsorted(self.all, x, side) - np.searchsorted(self.defect, x, side)
        return below.astype(np.int64)

    def auroc(self) -> float:
        """Exact ROC AUC of defect vs good pixels, ties counted half (Mann-Whitney: per
        defect pixel, the good pixels below it plus half those equal to it)."""
        if not (self.n_defect and self.n_good):
            return float("nan")
        below = self.good_below(self.defect, "left")
        equal = self.good_below(self.defect, "right") - below
        wins = float(below.sum()) + 0.5 * float(equal.sum())
        return wins / (self.n_defect * self.n_good)

    def quantiles(self, qs: np.ndarray) -> np.ndarray:
        """The ``qs`` quantiles by linear interpolation between order statistics, in
        float64 (``np.quantile`` of the values as float64; numpy interpolates float32
        input in float32, whose positions are inexact beyond 2**24 values), read off the
        sorted values."""
        a = self.all
        virtual = np.asarray(qs, dtype=np.float64) * (a.size - 1)
        prev = np.floor(virtual).astype(np.int64)
        nxt = np.minimum(prev + 1, a.size - 1)
        gamma = virtual - prev
        lo, hi = a[prev].astype(np.float64), a[nxt].astype(np.float64)
        diff = hi - lo
        return np.where(gamma >= 0.5, hi - diff * (1 - gamma), lo + diff * gamma)

    def good_at_or_above(self, thresholds: np.ndarray) -> np.ndarray:
        """Good pixels ``>= t`` per threshold ``t``."""
        return self.n_good - self.good_below(self._as_values(thresholds), "left")

    def _as_values(self, t: np.ndarray) -> np.ndarray:
        """``t`` in the values' dtype with ``v < t`` unchanged for every value ``v``: each
        threshold rounded up to the nearest representable one (a float64 threshold
        against float32 values would make ``searchsorted`` cast all of them)."""
        t = np.asarray(t, dtype=np.float64)
        dtype = self.all.dtype
        if dtype == t.dtype or not np.issubdtype(dtype, np.floating):
            return t
        low = t.astype(dtype)
        up = low.astype(np.float64) < t
        low[up] = np.nextafter(low[up], dtype.type(np.inf))
        return low


def _ranks(m: torch.Tensor, gt: torch.Tensor) -> PixelRanks:
    return PixelRanks(m.detach().float().numpy(), gt.numpy())


def pixel_auroc(
    maps: AnomalyScores | torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None
) -> float:
    """ROC AUC of every pixel's anomaly value vs. its mask (masks resized to the maps)."""
    return _ranks(*_pixel_arrays(maps, masks)).auroc()


def ranked_auroc(y: np.ndarray, scores: torch.Tensor) -> float:
    """Exact ROC AUC of ``scores`` against the boolean ``y``, ties counted half, from one
    sort of all the values and one of the positives (:class:`PixelRanks`).

    Equal to ``sklearn.metrics.roc_auc_score`` (which sorts twice and builds the whole
    curve: 85 % of ``evaluate``'s metric time on 100 M pixels of magnetic tiles).
    """
    values = scores.detach().reshape(-1).float().numpy()
    return PixelRanks(values, np.asarray(y, dtype=bool).reshape(-1)).auroc()


def aupro(
    maps: AnomalyScores | torch.Tensor,
    masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    max_fpr: float = AUPRO_MAX_FPR,
    num_thresholds: int = AUPRO_THRESHOLDS,
) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    Each connected defect region counts equally, so small defects weigh as much as large
    ones. Thresholds are ``num_thresholds`` quantiles of the map values; the share of
    good pixels at or above each comes from the sorted values (:class:`PixelRanks`).
    """
    if not 0 < max_fpr <= 1:
        raise DataError(f"max_fpr must be in (0, 1], got {max_fpr}")
    m, gt = _pixel_arrays(maps, masks)
    return _aupro(m, gt, None, max_fpr, num_thresholds)


def _aupro(
    m: torch.Tensor,
    gt: torch.Tensor,
    ranks: PixelRanks | None,
    max_fpr: float = AUPRO_MAX_FPR,
    num_thresholds: int = AUPRO_THRESHOLDS,
) -> float:
    """:func:`aupro` of maps and masks already at one size; ``ranks`` when built."""
    values = m.numpy()
    gt_np = gt.numpy()
    if not _need_both(gt_np.flatten()):
        return float("nan")
    if ranks is None:
        ranks = _ranks(m, gt)
    qs = np.linspace(0, 1, num_thresholds)
    thresholds = np.unique(ranks.quantiles(qs))
    edges = np.concatenate([thresholds, [np.inf]])
    # share of good pixels at or above each threshold
    fpr = ranks.good_at_or_above(thresholds) / max(1, ranks.n_good)
    pros = []
    for i in range(values.shape[0]):
        labelled, n_regions = ndimage.label(gt_np[i])
        for r in range(1, n_regions + 1):
            region = values[i][labelled == r]
            hist = np.histogram(region, bins=edges)[0]
            pros.append(hist[::-1].cumsum()[::-1] / region.size)
    pro = np.mean(pros, axis=0)
    order = np.argsort(fpr)
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= max_fpr
    x = np.concatenate([fpr[keep], [max_fpr]])
    y = np.concatenate([pro[keep], [np.interp(max_fpr, fpr, pro)]])
    if x.size < 2:
        return float("nan")
    return float(auc(x, y) / max_fpr)


def flagged(result: AnomalyScores) -> np.ndarray:
    """Per sample, whether the detector flags it: its own verdicts (``is_anomalous``), else
    the one verdict rule (:func:`inspectkit.anomaly.threshold.verdict`, ``score >
    threshold``) on the scores. Metrics and reports count flags through this only.

    Raises:
        DataError: the scores carry no threshold.
    """
    if result.is_anomalous is not None:
        return result.is_anomalous.numpy().astype(bool)
    if result.threshold is None:
        raise DataError("these scores have no threshold; calibrate the detector first")
    from inspectkit.anomaly.threshold import verdict  # the package imports this module

    return verdict(result.scores, result.threshold).numpy()


def sent_to_review(result: AnomalyScores, flags: np.ndarray) -> np.ndarray | None:
    """Per sample, whether it goes to review: in the detector's review band and not
    flagged (``flags``, from :func:`flagged`); ``None`` without a review band."""
    if result.review is None:
        return None
    return result.review.numpy().astype(bool) & ~flags


def defect_regions(result: AnomalyScores, *, peak: bool = True) -> torch.Tensor:
    """Per sample, its defect region on ``result.maps``: pixels above its region threshold
    (``result.region_threshold``, else the image threshold), for the parts flagged or sent
    to review; empty for the rest (:func:`inspectkit.anomaly.threshold.region_masks`).

    Raises:
        DataError: no maps, or no threshold.
    """
    if result.maps is None:
        raise DataError("this anomaly model produces no anomaly maps to find regions on")
    flags = flagged(result)
    review = sent_to_review(result, flags)
    shown = flags if review is None else flags | review
    if result.region_threshold is not None:
        lines = result.region_threshold.double()
    else:
        assert result.threshold is not None  # flagged() refused scores without one
        lines = torch.full((len(result),), float(result.threshold), dtype=torch.float64)
    shown &= ~torch.isnan(lines).numpy()
    from inspectkit.anomaly.threshold import region_masks  # the package imports this module

    return region_masks(result.maps, lines.nan_to_num(0.0), torch.from_numpy(shown), peak=peak)


def region_boxes(region: torch.Tensor, image_size: Sequence[int] | None = None) -> list[list[int]]:
    """Bounding boxes ``[xmin, ymin, xmax, ymax]`` (inclusive pixels) of the connected
    parts (8-connected) of one ``H×W`` region, largest first, at most
    :data:`inspectkit_runtime.regions.MAX_REGIONS` (the boxes ``predict`` rows carry);
    scaled to ``image_size`` ``(H, W)`` when the map has another size.

    Example:
        >>> r = torch.zeros(4, 6, dtype=torch.bool)
        >>> r[0, 0] = r[1, 1] = True; r[2:4, 3:6] = True
        >>> region_boxes(r)
        [[3, 2, 5, 3], [0, 0, 1, 1]]
    """
    from inspectkit_runtime.regions import region_boxes as boxes_np

    return boxes_np(torch.as_tensor(region).bool().cpu().numpy(), image_size)


def part_regions(result: AnomalyScores) -> list[list[list[int]]] | None:
    """Per part, the boxes of its defect region (:func:`region_boxes`) in its image's
    pixels, empty for a part without one: what ``predict`` rows and archive rows carry as
    ``regions``. ``None`` without maps or a threshold."""
    if result.maps is None or result.threshold is None:
        return None
    regions = defect_regions(result)
    return [
        region_boxes(regions[i], tuple(result.images[i].shape[-2:])) if regions[i].any() else []
        for i in range(len(result))
    ]


def _defect_parts(real: AnomalyScores, size: tuple[int, int]) -> Iterator[np.ndarray] | None:
    """Per sample, its defects as an ``H×W`` int array at the maps' ``size`` (0 = none,
    ``k`` = defect ``k``; overlapping boxes: the later box): the connected parts of its
    mask, else its boxes; ``None`` when the set says neither."""
    if real.masks is not None:
        _, gt = _pixel_arrays(real, None)
        eight = np.ones((3, 3), dtype=bool)
        return (ndimage.label(g.numpy(), structure=eight)[0] for g in gt)
    if real.boxes is None:
        return None

    def boxes() -> Iterator[np.ndarray]:
        for i, image_boxes in enumerate(real.boxes or []):
            h, w = real.size or tuple(real.images[i].shape[-2:])
            sy, sx = size[0] / h, size[1] / w
            out = np.zeros(size, dtype=np.int64)
            for k, b in enumerate(image_boxes, start=1):
                y0, x0 = max(0, math.floor(b.ymin * sy)), max(0, math.floor(b.xmin * sx))
                y1 = min(size[0], max(math.ceil(b.ymax * sy), y0 + 1))
                x1 = min(size[1], max(math.ceil(b.xmax * sx), x0 + 1))
                out[y0:y1, x0:x1] = k
            yield out

    return boxes()


def region_metrics(
    result: AnomalyScores, *, good_labels: Sequence[str] = DEFAULT_GOOD_LABELS
) -> dict[str, float]:
    """How well the defect regions (:func:`defect_regions`) say where the defects are,
    where masks or boxes tell it: ``defects_touched``, the share of the defective parts'
    defects (the connected parts of a mask, else each box) that a region touches (a
    missed part's count as untouched), and ``region_precision``, the share of all region
    pixels that lie on a defect. Empty without maps, a threshold, or masks and boxes."""
    real = result.real()
    if real.maps is None or (real.threshold is None and real.is_anomalous is None):
        return {}
    parts = _defect_parts(real, tuple(real.maps.shape[-2:]))
    if parts is None:
        return {}
    region = defect_regions(real).numpy()
    y = anomaly_truth(real, good_labels)
    touched = total = inside = 0
    for i, labelled in enumerate(parts):
        inside += int((region[i] & (labelled > 0)).sum())
        if y[i]:
            defects = np.setdiff1d(np.unique(labelled), [0])
            touched += len(np.intersect1d(defects, labelled[region[i]]))
            total += len(defects)
    shown = int(region.sum())
    return {
        "defects_touched": touched / total if total else float("nan"),
        "region_precision": inside / shown if shown else float("nan"),
    }


def threshold_metrics(
    result: AnomalyScores, *, good_labels: Sequence[str] = DEFAULT_GOOD_LABELS
) -> dict[str, float]:
    """F1 (defect = positive), false-alarm rate (good flagged) and miss rate at the threshold.

    With a review band (``result.review``) also the share of good and of defective parts
    sent to review (``review_rate_good``, ``review_rate_defective``) and the share of
    defective parts judged good, neither flagged nor sent to review
    (``miss_rate_after_review``): what escapes a line whose review station checks the band.
    """
    real = result.real()
    if real.is_anomalous is None and real.threshold is None:
        raise DataError("these scores have no threshold; calibrate the detector first")
    y = anomaly_truth(real, good_labels)
    pred = flagged(real)
    nan = float("nan")
    out = {
        "f1": float(f1_score(y, pred, zero_division=0)) if y.any() else nan,
        "false_alarm_rate": float(pred[~y].mean()) if (~y).any() else nan,
        "miss_rate": float((~pred[y]).mean()) if y.any() else nan,
    }
    review = sent_to_review(real, pred)
    if review is not None:
        out["review_rate_good"] = float(review[~y].mean()) if (~y).any() else nan
        out["review_rate_defective"] = float(review[y].mean()) if y.any() else nan
        out["miss_rate_after_review"] = float((~(pred | review))[y].mean()) if y.any() else nan
    return out


def anomaly_report(
    result: AnomalyScores,
    *,
    good_labels: Sequence[str] = DEFAULT_GOOD_LABELS,
    title: str = "anomaly detection",
) -> Report:
    """Every anomaly metric the record supports, as a :class:`~inspectkit.records.Report`.

    Example:
        >>> report = anomaly_report(scores)  # doctest: +SKIP
        >>> report.metrics["image_auroc"]  # doctest: +SKIP
    """
    real = result.real()
    y = anomaly_truth(real, good_labels)
    metrics: dict[str, float] = {"image_auroc": image_auroc(real, good_labels=good_labels)}
    notes: list[str] = []
    if real.maps is not None and real.masks is not None:
        m, gt = _pixel_arrays(real, None)
        ranks = _ranks(m, gt)  # one sort serves both pixel metrics
        metrics["pixel_auroc"] = ranks.auroc()
        metrics["aupro"] = _aupro(m, gt, ranks)
    else:
        notes.append("no masks or maps: pixel metrics not computed")
    if real.is_anomalous is not None:
        metrics.update(threshold_metrics(real, good_labels=good_labels))
        assert real.threshold is not None
        metrics["threshold"] = float(real.threshold)
        metrics.update(region_metrics(real, good_labels=good_labels))
    else:
        notes.append("no threshold: F1 and false-alarm rate not computed")
    counts = {"good": int((~y).sum()), "defective": int(y.sum())}
    if real.is_anomalous is not None:
        pred = flagged(real)
        counts["flagged"] = int(pred.sum())
        review = sent_to_review(real, pred)
        if review is not None:
            counts["review"] = int(review.sum())
    return Report(
        title=title,
        metrics={k: (v if math.isfinite(v) else float("nan")) for k, v in metrics.items()},
        counts=counts,
        notes=notes,
    )


__all__ = [
    "DEFAULT_GOOD_LABELS",
    "PixelRanks",
    "anomaly_report",
    "anomaly_truth",
    "aupro",
    "defect_regions",
    "flagged",
    "image_auroc",
    "is_defective",
    "part_regions",
    "pixel_auroc",
    "ranked_auroc",
    "region_boxes",
    "region_metrics",
    "sent_to_review",
    "threshold_metrics",
]
