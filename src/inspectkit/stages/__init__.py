"""Built-in pipeline stages, imported on first use.

``from inspectkit.stages import Wrangle, Augment, Generate, Classifier``
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inspectkit.stages' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
