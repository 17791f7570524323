"""Built-in pipeline stages, imported on first use.

``from inspectkit.stages import Wrangle, Augment, Generate, Classifier``
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY = {
    "Wrangle": "inspectkit.stages.wrangle",
    "Augment": "inspectkit.stages.augment",
    "Generate": "inspectkit.stages.generate",
    "Classifier": "inspectkit.stages.classify",
    "AnomalyDetector": "inspectkit.anomaly.stage",
    "Explain": "inspectkit.xai.stage",
    "ContinualClassifier": "inspectkit.continual.stage",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
