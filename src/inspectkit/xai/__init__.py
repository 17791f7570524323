"""Explanations: Grad-CAM (via captum), SISE, metrics against ground truth, overlays.

``GradCAM`` and ``SISE`` are both attribution methods and pipeline stages:

* with a model, ``GradCAM(model).attribute(inputs, target=None)`` returns ``N×H×W``
  heatmaps in [0, 1] (captum style);
* without one, ``GradCAM()`` / ``SISE()`` (or ``Explain(method=...)``, which builds the
  registered method) go after a ``Classifier`` or ``ContinualClassifier`` in a
  :class:`~inspectkit.Pipeline` and turn its ``Predictions`` into ``Explained`` records.

Example:
    >>> import inspectkit as ik
    >>> from inspectkit.xai import GradCAM, energy_pointing_game
    >>> GradCAM().config.method
    'gradcam'
"""

from __future__ import annotations

from inspectkit.xai.gradcam import GradCAM, compute_gradcam
from inspectkit.xai.metrics import (
    boxes_to_mask,
    deletion_auc,
    energy_pointing_game,
    explanation_report,
    insertion_auc,
    mask_l1,
)
from inspectkit.xai.overlay import jet, overlay, write_overlays
from inspectkit.xai.sise import SISE, compute_sise, fuse_blocks, otsu_threshold
from inspectkit.xai.stage import Explain, available_methods

__all__ = [
    "SISE",
    "Explain",
    "GradCAM",
    "available_methods",
    "boxes_to_mask",
    "compute_gradcam",
    "compute_sise",
    "deletion_auc",
    "energy_pointing_game",
    "explanation_report",
    "fuse_blocks",
    "insertion_auc",
    "jet",
    "mask_l1",
    "otsu_threshold",
    "overlay",
    "write_overlays",
]
