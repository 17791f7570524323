"""Stage plugins: the built-in stages plus those other packages register.

A third-party package registers a stage under the entry-point group
``inspectkit.stages`` in its ``pyproject.toml``::

    [project.entry-points."inspectkit.stages"]
    denoise = "my_line.stages:Denoise"

after which ``Pipeline.from_spec({"stages": [{"name": "denoise", "config": {...}}]})``
builds it. Code can also call :func:`register_stage` directly.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from inspectkit.errors import PipelineError
from inspectkit.stage import Stage

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "inspectkit.stages"

#: Built-in stages, imported only when first asked for.
BUILTIN_STAGES: dict[str, str] = {
    "wrangle": "inspectkit.stages.wrangle:Wrangle",
    "augment": "inspectkit.stages.augment:Augment",
    "generate": "inspectkit.stages.generate:Generate",
    "classifier": "inspectkit.stages.classify:Classifier",
    "anomaly_detector": "inspectkit.anomaly.stage:AnomalyDetector",
    "explain": "inspectkit.xai.stage:Explain",
    "gradcam": "inspectkit.xai.gradcam:GradCAM",
    "sise": "inspectkit.xai.sise:SISE",
    "continual_classifier": "inspectkit.continual.stage:ContinualClassifier",
}

_registered: dict[str, type[Stage[Any, Any]]] = {}


def register_stage(cls: type[Stage[Any, Any]], name: str | None = None) -> type[Stage[Any, Any]]:
    """Register ``cls`` under ``name`` (default: its ``name`` attribute); usable as decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise PipelineError(f"{cls!r} is not a Stage subclass and cannot be registered")
    key = name or cls.registry_name()
    existing = _registered.get(key)
    if existing is not None and existing is not cls:
        raise PipelineError(f"a different stage is already registered as {key!r}: {existing}")
    _registered[key] = cls
    return cls


def _load_target(target: str, origin: str) -> type[Stage[Any, Any]]:
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(
            f"stage {origin} points to {target!r}, which cannot be imported: {exc}"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        raise PipelineError(f"stage {origin} ({target}) is not a Stage subclass")
    return obj


def _plugin_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_stage(name: str) -> type[Stage[Any, Any]]:
    """The stage class registered as ``name``: registered, built-in, or plugin."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_STAGES:
        cls = _load_target(BUILTIN_STAGES[name], repr(name))
        _registered[name] = cls
        return cls
    eps = _plugin_entry_points()
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:
            raise PipelineError(
                f"plugin stage {name!r} ({eps[name].value}) failed to load: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise PipelineError(
                f"plugin stage {name!r} ({eps[name].value}) is not a Stage subclass"
            )
        _registered[name] = cls
        return cls
    known = sorted(set(_registered) | set(BUILTIN_STAGES) | set(eps))
    raise PipelineError(f"unknown stage {name!r}; known stages: {', '.join(known)}")


def available_stages() -> list[str]:
    """Names of every stage that :func:`get_stage` can resolve."""
    return sorted(set(_registered) | set(BUILTIN_STAGES) | set(_plugin_entry_points()))


def name_of(stage: Stage[Any, Any]) -> str:
    """The name under which ``stage``'s class can be found again when loading."""
    cls = type(stage)
    for key, registered in _registered.items():
        if registered is cls:
            return key
    for key, target in BUILTIN_STAGES.items():
        module_name, _, attr = target.partition(":")
        if cls.__module__ == module_name and cls.__name__ == attr:
            return key
    key = cls.registry_name()
    for ep_name, ep in _plugin_entry_points().items():
        module_name, _, attr = ep.value.partition(":")
        if cls.__module__ == module_name and cls.__qualname__ == attr:
            return ep_name
    raise PipelineError(
        f"stage {cls.__name__} is not registered; call inspectkit.register_stage({cls.__name__}) "
        f"or declare it under the entry point group {ENTRY_POINT_GROUP!r} so that a saved "
        f"pipeline can be loaded again (tried name {key!r})"
    )


__all__ = [
    "BUILTIN_STAGES",
    "ENTRY_POINT_GROUP",
    "available_stages",
    "get_stage",
    "name_of",
    "register_stage",
]
