"""Anomaly detection from good-only images.

Detectors are plain torch modules with ``fit(images)`` / ``score(images)``:
:class:`PatchCore` (memory bank), :class:`PaDiM` (Gaussian per position),
:class:`AutoEncoder` (reconstruction), :class:`SelfSupervised` (CutPaste) and
:class:`Ensemble` (several of them on one scale). Each registers itself by name
(:func:`register_detector`; installed packages add more under the entry-point group
``inspectkit.detectors``). The :class:`AnomalyDetector` stage builds any of them by name
for a pipeline, with a :class:`Calibration` (threshold and normalisation) set on
held-out good images.

Example:
    >>> from inspectkit.anomaly import AnomalyDetector
    >>> AnomalyDetector(method="padim", size=128).config.method
    'padim'
"""

from inspectkit.anomaly.autoencoder import AutoEncoder
from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.anomaly.ensemble import Ensemble
from inspectkit.anomaly.padim import PaDiM
from inspectkit.anomaly.patchcore import PatchCore, greedy_coreset
from inspectkit.anomaly.registry import (
    available_detectors,
    build_detector,
    get_detector,
    register_detector,
)
from inspectkit.anomaly.selfsupervised import SelfSupervised, cutpaste
from inspectkit.anomaly.stage import DEFAULT_GOOD_LABELS, AnomalyDetector, is_defective
from inspectkit.anomaly.threshold import (
    Calibration,
    f1_optimal_threshold,
    normalize,
    threshold_at_false_alarm_rate,
    verdict,
)

__all__ = [
    "DEFAULT_GOOD_LABELS",
    "AnomalyDetector",
    "AnomalyModel",
    "AutoEncoder",
    "Calibration",
    "DetectorSettings",
    "Ensemble",
    "PaDiM",
    "PatchCore",
    "SelfSupervised",
    "available_detectors",
    "build_detector",
    "cutpaste",
    "f1_optimal_threshold",
    "get_detector",
    "greedy_coreset",
    "is_defective",
    "normalize",
    "register_detector",
    "threshold_at_false_alarm_rate",
    "verdict",
]
