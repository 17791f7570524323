"""inspectkit studio: the teachable-machine flow in the browser.

``inspectkit studio [--project DIR]`` serves a local web app over the command line's
project folders: classes and their images, generation, training with live curves, a test
screen, the evaluation report and the model download. Needs the ``studio`` extra
(``pip install "inspectkit[studio]"``: FastAPI and uvicorn).

Modules: :mod:`~inspectkit.studio.safety` (names, paths, upload limits),
:mod:`~inspectkit.studio.workspace` (projects on disk), :mod:`~inspectkit.studio.jobs`
(background jobs kept in the project folder), :mod:`~inspectkit.studio.work` (what the
screens do, through the library), :mod:`~inspectkit.studio.app` (the FastAPI app), and
``static/`` (the page: HTML, CSS and JS, no build step, nothing from the network).
"""

from __future__ import annotations

from inspectkit._lazy import lazy_exports

_LAZY = {
    "create_app": "inspectkit.studio.app",
    "JobRunner": "inspectkit.studio.jobs",
    "StudioError": "inspectkit.studio.safety",
    "UploadLimits": "inspectkit.studio.safety",
    "StudioProject": "inspectkit.studio.workspace",
    "Workspace": "inspectkit.studio.workspace",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
