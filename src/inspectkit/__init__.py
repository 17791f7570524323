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
from inspectkit.pipeline import Pipeline
from inspectkit.records import (
    AnomalyScores,
    Box,
    Explained,
    ImageSet,
    LazyImages,
    Predictions,
    Report,
    SampleMeta,
)
from inspectkit.registry import available_stages, get_stage, register_stage
from inspectkit.stage import Stage, StageConfig

logging.getLogger(__name__).addHandler(logging.NullHandler())

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
