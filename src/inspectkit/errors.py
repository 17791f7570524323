"""The exceptions inspectkit raises.

Every error a user can cause derives from :class:`InspectkitError`, so a process line can
catch one class and report the message, which says what was wrong and what to do.
"""

from __future__ import annotations


class InspectkitError(Exception):
    """Base class of every error inspectkit raises on purpose."""


class ConfigError(InspectkitError, ValueError):
    """A stage or pipeline was configured with an invalid value."""


class DataError(InspectkitError, ValueError):
    """Input data is malformed: corrupt file, wrong shape, unknown label, NaN, ..."""


class PipelineError(InspectkitError):
    """Stages do not fit together, or a pipeline was used in the wrong order."""


class NotFittedError(PipelineError):
    """A stage that learns state was asked to ``run`` before ``fit``."""


class PersistenceError(InspectkitError):
    """A saved pipeline could not be written or read back."""


class UnsafePickleError(DataError):
    """A pickle referenced a global outside the allowed list and was refused unread."""


__all__ = [
    "ConfigError",
    "DataError",
    "InspectkitError",
    "NotFittedError",
    "PersistenceError",
    "PipelineError",
    "UnsafePickleError",
]
