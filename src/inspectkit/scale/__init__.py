"""Scale out: inspect an archive of millions of parts on Ray Data, resumably.

:func:`inspect_archive` lists the inputs lazily (folders, globs, files, wafer ``.npz``
archives), scores them with a pool of workers that each load the model once (a saved
pipeline in torch, or an exported model in ONNX Runtime) and writes one Parquet row per
input: ``path``, ``index``, ``id``, ``verdict``, the score or class probabilities, the
``model_digest`` and the ``error`` of an input that could not be scored. A rerun into
the same folder scores only what is missing for that model; a corrupt input gives an
error row; a worker that dies is replaced by Ray and its chunk written once.

Example:
    >>> from inspectkit.scale import inspect_archive, read_results
    >>> summary = inspect_archive("models/line3", ["archive/2024/"], "results/")  # doctest: +SKIP
    >>> read_results("results/").num_rows  # doctest: +SKIP
    1000000
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY = {
    "ChunkDone": "inspectkit.scale.engine",
    "DEFAULT_BATCH": "inspectkit.scale.engine",
    "ENGINES": "inspectkit.scale.engine",
    "ScaleSummary": "inspectkit.scale.engine",
    "inspect_archive": "inspectkit.scale.engine",
    "plan_chunks": "inspectkit.scale.engine",
    "Listing": "inspectkit.scale.inputs",
    "Unit": "inspectkit.scale.inputs",
    "WaferIndex": "inspectkit.scale.inputs",
    "ModelInfo": "inspectkit.scale.model",
    "model_digest": "inspectkit.scale.model",
    "COLUMNS": "inspectkit.scale.output",
    "ResultStore": "inspectkit.scale.output",
    "ScaleError": "inspectkit.scale.output",
    "read_results": "inspectkit.scale.output",
    "result_schema": "inspectkit.scale.output",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
