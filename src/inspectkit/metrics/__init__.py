"""Metrics for classification, anomaly detection and explanations (scikit-learn underneath).

Every function here drops synthetic samples (``SampleMeta.synthetic``) before it
computes anything, so generated data never inflates a figure.
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # classification (classifier issue)
    "classification_report": "inspectkit.metrics.classification",
    # anomaly detection (anomaly issue)
    "image_auroc": "inspectkit.metrics.anomaly",
    "pixel_auroc": "inspectkit.metrics.anomaly",
    "aupro": "inspectkit.metrics.anomaly",
    "anomaly_report": "inspectkit.metrics.anomaly",
    "threshold_metrics": "inspectkit.metrics.anomaly",
    "defect_regions": "inspectkit.metrics.anomaly",
    "region_boxes": "inspectkit.metrics.anomaly",
    # explanations (xai issue)
    "energy_pointing_game": "inspectkit.xai.metrics",
    "mask_l1": "inspectkit.xai.metrics",
    "deletion_auc": "inspectkit.xai.metrics",
    "insertion_auc": "inspectkit.xai.metrics",
    "boxes_to_mask": "inspectkit.xai.metrics",
    "explanation_report": "inspectkit.xai.metrics",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
