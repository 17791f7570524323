"""Loaders of real inspection layouts, each returning an :class:`~inspectkit.records.ImageSet`.

:func:`detect` names the layout a path holds and :func:`load` loads it (every loader
module registers its :class:`Layout`; installed packages add theirs under the entry-point
group ``inspectkit.sources``). Imported on first use, so a missing optional dependency
(pandas for ``LSWMD.pkl``) only matters to the loader that needs it. What one file may
make a loader allocate is bounded by :class:`Limits` (:func:`set_limits`,
``INSPECTKIT_MAX_*`` environment variables, or ``limits=`` per call).

Example:
    >>> from inspectkit import sources
    >>> sources.detect("data/neu_det")  # doctest: +SKIP
    'voc'
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY = {
    "LAYOUTS": "inspectkit.sources.layout",
    "Layout": "inspectkit.sources.layout",
    "available_layouts": "inspectkit.sources.layout",
    "detect": "inspectkit.sources.layout",
    "get_layout": "inspectkit.sources.layout",
    "load": "inspectkit.sources.layout",
    "load_inputs": "inspectkit.sources.layout",
    "register_layout": "inspectkit.sources.layout",
    "save_wafer_npz": "inspectkit.sources.wafer",
    "load_image_files": "inspectkit.sources.folders",
    "WM811K_CLASSES": "inspectkit.sources.wafer",
    "load_wafer_maps": "inspectkit.sources.wafer",
    "load_wafer_npz": "inspectkit.sources.wafer",
    "load_lswmd": "inspectkit.sources.lswmd",
    "load_image_folder": "inspectkit.sources.folders",
    "load_mvtec": "inspectkit.sources.folders",
    "load_magnetic_tile": "inspectkit.sources.folders",
    "load_voc": "inspectkit.sources.voc",
    "attach_metadata": "inspectkit.sources.metadata",
    "Limits": "inspectkit.sources.limits",
    "SizeLimitError": "inspectkit.sources.limits",
    "get_limits": "inspectkit.sources.limits",
    "set_limits": "inspectkit.sources.limits",
    "use_limits": "inspectkit.sources.limits",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
