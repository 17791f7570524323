"""Anomaly detection from good-only images.

Detectors are plain torch modules with ``fit(images)`` / ``score(images)``:
:class:`PatchCore` (memory bank), :class:`PaDiM` (Gaussian per position),
:class:`AutoEncoder` (reconstruction), :class:`SelfSupervised` (CutPaste) and
:class:`Ensemble` (several of them on one scale). The :class:`AnomalyDetector` stage
wraps any of them for a pipeline, with threshold calibration from held-out good images.

Example:
    >>> from inspectkit.anomaly import AnomalyDetector
    >>> AnomalyDetector(method="padim", size=128).config.method
    'padim'
"""

from inspectkit.anomaly.autoencoder import AutoEncoder
from inspectkit.anomaly.base import AnomalyModel
from inspectkit.anomaly.ensemble import Ensemble
from inspectkit.anomaly.padim import PaDiM
from inspectkit.anomaly.patchcore import PatchCore, greedy_coreset
from inspectkit.anomaly.selfsupervised import SelfSupervised, cutpaste
from inspectkit.anomaly.stage import DEFAULT_GOOD_LABELS, AnomalyDetector, is_defective
from inspectkit.anomaly.threshold import (
    f1_optimal_threshold,
    normalize,
    threshold_at_false_alarm_rate,
)

__all__ = [
    "DEFAULT_GOOD_LABELS",
    "AnomalyDetector",
    "AnomalyModel",
    "AutoEncoder",
    "Ensemble",
    "PaDiM",
    "PatchCore",
    "SelfSupervised",
    "cutpaste",
    "f1_optimal_threshold",
    "greedy_coreset",
    "is_defective",
    "normalize",
    "threshold_at_false_alarm_rate",
]
