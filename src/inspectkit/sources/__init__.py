"""Loaders of real inspection layouts, each returning an :class:`~inspectkit.records.ImageSet`.

Imported on first use, so a missing optional dependency (pandas for ``LSWMD.pkl``) only
matters to the loader that needs it.
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY = {
    "WM811K_CLASSES": "inspectkit.sources.wafer",
    "load_wafer_maps": "inspectkit.sources.wafer",
    "load_wafer_npz": "inspectkit.sources.wafer",
    "load_lswmd": "inspectkit.sources.lswmd",
    "load_image_folder": "inspectkit.sources.folders",
    "load_mvtec": "inspectkit.sources.folders",
    "load_magnetic_tile": "inspectkit.sources.folders",
    "load_voc": "inspectkit.sources.voc",
    "attach_metadata": "inspectkit.sources.metadata",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
