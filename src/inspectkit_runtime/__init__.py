"""inspectkit-runtime: run a model exported by inspectkit with ONNX Runtime, NumPy and
Pillow only (no torch).

Example:
    >>> import inspectkit_runtime as ikr                 # doctest: +SKIP
    >>> model = ikr.load("line3.onnx")                   # MODEL.json beside it
    >>> for row in model.predict(["parts/"]):            # files, folders, wafer .npz
    ...     print(row["id"], row["anomalous"], row["score"])
"""

from __future__ import annotations

from inspectkit_runtime.errors import InputError, RuntimeModelError
from inspectkit_runtime.images import collect_inputs, decode_image, read_wafer_npz
from inspectkit_runtime.model import InspectionModel, load
from inspectkit_runtime.preprocess import apply_steps
from inspectkit_runtime.sidecar import FORMAT, FORMAT_VERSION, PREDICT_SCHEMA, read_sidecar

__version__ = "0.1.0"

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PREDICT_SCHEMA",
    "InputError",
    "InspectionModel",
    "RuntimeModelError",
    "__version__",
    "apply_steps",
    "collect_inputs",
    "decode_image",
    "load",
    "read_sidecar",
    "read_wafer_npz",
]
