"""inspectkit: AI visual inspection for production lines.

A process line assembles a :class:`Pipeline` of pluggable :class:`Stage` objects that
pass pydantic-typed records (:mod:`inspectkit.records`) from one to the next.

Example:
    >>> import inspectkit as ik
    >>> from inspectkit.stages import Wrangle
    >>> pipe = ik.Pipeline([Wrangle(size=64)])
"""

from __future__ import annotations

import logging

from inspectkit._lazy import lazy_exports
from inspectkit._version import __version__
from inspectkit.errors import (
    ConfigError,
    DataError,
    InspectkitError,
    NotFittedError,
    PersistenceError,
    PipelineError,
    UnsafePickleError,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

# imported on first use: ``import inspectkit`` (and ``inspectkit --help``) stays free of torch
_LAZY = {
    "Pipeline": "inspectkit.pipeline",
    "AnomalyScores": "inspectkit.records",
    "Box": "inspectkit.records",
    "Explained": "inspectkit.records",
    "ImageSet": "inspectkit.records",
    "LazyImages": "inspectkit.records",
    "Predictions": "inspectkit.records",
    "Report": "inspectkit.records",
    "SampleMeta": "inspectkit.records",
    "available_stages": "inspectkit.registry",
    "get_stage": "inspectkit.registry",
    "register_stage": "inspectkit.registry",
    "Stage": "inspectkit.stage",
    "StageConfig": "inspectkit.stage",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "AnomalyScores",
    "Box",
    "ConfigError",
    "DataError",
    "Explained",
    "ImageSet",
    "InspectkitError",
    "LazyImages",
    "NotFittedError",
    "PersistenceError",
    "Pipeline",
    "PipelineError",
    "Predictions",
    "Report",
    "SampleMeta",
    "Stage",
    "StageConfig",
    "UnsafePickleError",
    "__version__",
    "available_stages",
    "get_stage",
    "register_stage",
]
