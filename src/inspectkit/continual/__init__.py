"""Continual learning: streams of experiences, replay buffers, replay training, metrics.

``from inspectkit.continual import ContinualClassifier, SNNLBuffer, class_incremental_stream``

Names are imported on first use, so ``import inspectkit.continual`` stays cheap.
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY: dict[str, str] = {
    # streams
    "Experience": "inspectkit.continual.streams",
    "class_incremental_stream": "inspectkit.continual.streams",
    "domain_incremental_stream": "inspectkit.continual.streams",
    "meta_key": "inspectkit.continual.streams",
    "size_bucket": "inspectkit.continual.streams",
    # buffers
    "BUFFERS": "inspectkit.continual.buffers",
    "ReplayBuffer": "inspectkit.continual.buffers",
    "ReservoirBuffer": "inspectkit.continual.buffers",
    "ClassBalancedBuffer": "inspectkit.continual.buffers",
    "SNNLBuffer": "inspectkit.continual.buffers",
    "HerdingBuffer": "inspectkit.continual.buffers",
    "buffer_from_state": "inspectkit.continual.buffers",
    "class_quotas": "inspectkit.continual.buffers",
    "herding_order": "inspectkit.continual.buffers",
    "make_buffer": "inspectkit.continual.buffers",
    "proportional_quotas": "inspectkit.continual.buffers",
    "snnl_per_sample": "inspectkit.continual.buffers",
    # training
    "ReplayTrainer": "inspectkit.continual.trainer",
    "expand_head": "inspectkit.continual.trainer",
    "embedding_fn": "inspectkit.continual.trainer",
    "model_input": "inspectkit.continual.trainer",
    # metrics
    "accuracy_matrix": "inspectkit.continual.metrics",
    "average_forgetting": "inspectkit.continual.metrics",
    "backward_transfer": "inspectkit.continual.metrics",
    "continual_summary": "inspectkit.continual.metrics",
    "final_average_accuracy": "inspectkit.continual.metrics",
    # stage
    "ContinualClassifier": "inspectkit.continual.stage",
    "merge_classes": "inspectkit.continual.stage",
    "update_pipeline": "inspectkit.continual.stage",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
