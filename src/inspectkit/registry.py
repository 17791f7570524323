"""Plugins by name: stages, detectors, data layouts and commands share one mechanism.

A :class:`Registry` knows the plugins of one kind from three places, in this order:

1. classes registered in code (``@registry.register`` or ``registry.register(obj)``);
2. the package's own modules: a registry with ``scan="inspectkit.anomaly"`` imports every
   public module of that package the first time a name is missing, and the modules
   register their plugins as they are imported; so a new built-in plugin is one file;
3. entry points of installed packages, under the registry's group, e.g.::

       [project.entry-points."inspectkit.stages"]
       denoise = "my_line.stages:Denoise"

Stages keep their own functions (:func:`register_stage`, :func:`get_stage`,
:func:`name_of`): ``Pipeline.from_spec({"stages": [{"name": "denoise", ...}]})`` builds a
plugin stage, and pipelines that contain it save and load like built-in ones.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, overload

from inspectkit.errors import InspectkitError, PipelineError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plugins of one kind.

    Args:
        kind: What the plugins are, for messages (``"stage"``, ``"detector"`` ...).
        group: Entry-point group that installed packages register under.
        check: Predicate a plugin must satisfy (e.g. "is a Stage subclass").
        scan: Package whose public modules are imported to find built-in plugins.
        builtins: ``name -> "module:attribute"`` targets imported on first use.
        error: Exception class raised for unknown or broken plugins.

    Example:
        >>> shapes = Registry("shape", "example.shapes", check=callable)
        >>> @shapes.register(name="square")
        ... def square(x):
        ...     return x * x
        >>> shapes.get("square")(3), shapes.names()
        (9, ['square'])
    """

    def __init__(
        self,
        kind: str,
        group: str,
        *,
        check: Callable[[Any], bool] | None = None,
        scan: str | None = None,
        builtins: dict[str, str] | None = None,
        error: type[InspectkitError] = PipelineError,
    ) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._scan = scan
        self._scanned = scan is None
        self.builtins: dict[str, str] = dict(builtins or {})
        self._error = error
        self._registered: dict[str, T] = {}

    # ------------------------------------------------------------------ adding
    @overload
    def register(self, obj: T, *, name: str | None = None) -> T: ...

    @overload
    def register(self, obj: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute); a decorator
        when called without ``obj``. Registering another object under a taken name fails."""
        if obj is None:
            return lambda o: self.register(o, name=name)
        key = name or _default_name(obj)
        if not key:
            raise self._error(f"{obj!r} has no name to be registered as a {self.kind} under")
        if self._check is not None and not self._check(obj):
            raise self._error(f"{obj!r} is not a valid {self.kind} and cannot be registered")
        existing = self._registered.get(key)
        if existing is not None and existing is not obj:
            raise self._error(
                f"a different {self.kind} is already registered as {key!r}: {existing!r}"
            )
        self._registered[key] = obj
        return obj

    # ------------------------------------------------------------------ finding
    def _scan_package(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        assert self._scan is not None
        package = importlib.import_module(self._scan)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._scan}.{info.name}")

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def _accept(self, obj: Any, origin: str) -> T:
        if self._check is not None and not self._check(obj):
            raise self._error(f"{self.kind} {origin} is not a valid {self.kind}: {obj!r}")
        return obj  # type: ignore[no-any-return]

    def get(self, name: str) -> T:
        """The plugin registered as ``name``; an error lists the known names otherwise."""
        if name in self._registered:
            return self._registered[name]
        if name in self.builtins:
            target = self.builtins[name]
            module_name, _, attr = target.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise self._error(
                    f"{self.kind} {name!r} points to {target!r}, which cannot be imported: {exc}"
                ) from exc
            self._registered[name] = self._accept(obj, f"{name!r} ({target})")
            return self._registered[name]
        self._scan_package()
        if name in self._registered:
            return self._registered[name]
        eps = self._entry_points()
        if name in eps:
            try:
                obj = eps[name].load()
            except Exception as exc:
                raise self._error(
                    f"plugin {self.kind} {name!r} ({eps[name].value}) failed to load: {exc}"
                ) from exc
            self._registered[name] = self._accept(obj, f"{name!r} ({eps[name].value})")
            return self._registered[name]
        raise self._error(
            f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
        )

    def names(self) -> list[str]:
        """Every name :meth:`get` can resolve (built-in, registered and installed)."""
        self._scan_package()
        return sorted(set(self._registered) | set(self.builtins) | set(self._entry_points()))

    def items(self) -> list[tuple[str, T]]:
        """``(name, plugin)`` for every plugin, loading each one."""
        return [(n, self.get(n)) for n in self.names()]

    def name_of(self, obj: Any) -> str | None:
        """The name under which ``obj`` can be found again, or ``None``."""
        for key, registered in self._registered.items():
            if registered is obj:
                return key
        where = _where(obj)
        for key, target in self.builtins.items():
            if target == where:
                return key
        for key, ep in self._entry_points().items():
            if ep.value == where:
                return key
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()


def _default_name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    registry_name = getattr(obj, "registry_name", None)
    if callable(registry_name):
        return str(registry_name())
    return ""


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


# ---------------------------------------------------------------------- stages
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


def _is_stage(obj: Any) -> bool:
    from inspectkit.stage import Stage

    return isinstance(obj, type) and issubclass(obj, Stage)


STAGES: Registry[Any] = Registry(
    "stage", ENTRY_POINT_GROUP, check=_is_stage, builtins=BUILTIN_STAGES
)


def register_stage(cls: type[Any], name: str | None = None) -> type[Any]:
    """Register ``cls`` under ``name`` (default: its ``name`` attribute); usable as decorator."""
    if not _is_stage(cls):
        raise PipelineError(f"{cls!r} is not a Stage subclass and cannot be registered")
    return STAGES.register(cls, name=name or cls.registry_name())


def get_stage(name: str) -> type[Any]:
    """The stage class registered as ``name``: registered, built-in, or plugin."""
    return STAGES.get(name)


def available_stages() -> list[str]:
    """Names of every stage that :func:`get_stage` can resolve."""
    return STAGES.names()


def name_of(stage: Any) -> str:
    """The name under which ``stage``'s class can be found again when loading."""
    cls = type(stage)
    key = STAGES.name_of(cls)
    if key is not None:
        return key
    raise PipelineError(
        f"stage {cls.__name__} is not registered; call inspectkit.register_stage({cls.__name__}) "
        f"or declare it under the entry point group {ENTRY_POINT_GROUP!r} so that a saved "
        f"pipeline can be loaded again (tried name {cls.registry_name()!r})"
    )


__all__ = [
    "BUILTIN_STAGES",
    "ENTRY_POINT_GROUP",
    "STAGES",
    "Registry",
    "available_stages",
    "get_stage",
    "name_of",
    "register_stage",
]
