"""The exceptions the runtime raises (no dependency on the inspectkit library)."""

from __future__ import annotations


class RuntimeModelError(ValueError):
    """An exported model cannot be used: missing or tampered file, unknown format, a
    sidecar that does not describe its ONNX file."""


class InputError(ValueError):
    """An input cannot be read or does not fit the model: not an image, a corrupt file,
    wafer codes outside 0/1/2, the wrong kind of data. The message starts with the input."""


__all__ = ["InputError", "RuntimeModelError"]
