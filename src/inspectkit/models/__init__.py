"""Network builders shared by stages: compact CNNs, torchvision backbones, training loop.

``from inspectkit.models import build_classifier, count_parameters, train_epochs``

Names are imported on first use, so ``import inspectkit.models`` stays cheap.
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # classifiers (classifier issue)
    "ARCHITECTURES": "inspectkit.models.classifiers",
    "ClassifierNet": "inspectkit.models.classifiers",
    "build_classifier": "inspectkit.models.classifiers",
    "build_compact": "inspectkit.models.classifiers",
    "count_parameters": "inspectkit.models.classifiers",
    # training loop and distributed helpers
    "TrainResult": "inspectkit.models.training",
    "train_epochs": "inspectkit.models.training",
    "predict_logits": "inspectkit.models.training",
    "dihedral_augment": "inspectkit.models.training",
    "flip_augment": "inspectkit.models.training",
    "DistInfo": "inspectkit.models.distributed",
    "setup_distributed": "inspectkit.models.distributed",
    "is_main_process": "inspectkit.models.distributed",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
