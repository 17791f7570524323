"""Detectors by name: ``AnomalyDetector(method="patchcore")`` looks the class up here.

A detector is usable by name once it is registered, from any of three places (see
:class:`inspectkit.registry.Registry`):

1. ``@register_detector`` on a class in code that has been imported;
2. a module of ``inspectkit.anomaly`` itself: the package's modules are imported the
   first time a name is missing, so a built-in detector is one file;
3. an installed package's entry point under ``inspectkit.detectors``::

       [project.entry-points."inspectkit.detectors"]
       pixel_gaussian = "my_line.pixel_gaussian:PixelGaussian"

:func:`build_detector` is the one path from a name, the shared settings and options to a
detector object; the stage and the ensemble's members go through it.

Example:
    >>> "patchcore" in available_detectors() and "ensemble" in available_detectors()
    True
    >>> get_detector("padim").__name__
    'PaDiM'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

from torch import nn

from inspectkit.anomaly.base import AnomalyModel, DetectorSettings
from inspectkit.errors import ConfigError
from inspectkit.registry import Registry

ENTRY_POINT_GROUP = "inspectkit.detectors"

D = TypeVar("D", bound=type[AnomalyModel])


def _is_detector(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, AnomalyModel)


DETECTORS: Registry[type[AnomalyModel]] = Registry(
    "detector",
    ENTRY_POINT_GROUP,
    check=_is_detector,
    scan="inspectkit.anomaly",
    error=ConfigError,
)


@overload
def register_detector(cls: D, *, name: str | None = None) -> D: ...


@overload
def register_detector(cls: None = None, *, name: str | None = None) -> Callable[[D], D]: ...


def register_detector(cls: Any = None, *, name: str | None = None) -> Any:
    """Register a detector class under ``name`` (default: its ``name`` attribute).

    Use as ``@register_detector``, ``@register_detector(name="x")`` or
    ``register_detector(MyDetector)``; a class that is not an
    :class:`~inspectkit.anomaly.base.AnomalyModel`, or a second class under a taken name,
    is refused with a :class:`~inspectkit.errors.ConfigError`.
    """
    if cls is None:
        return lambda c: register_detector(c, name=name)
    if not _is_detector(cls):
        raise ConfigError(f"{cls!r} is not an AnomalyModel subclass and cannot be registered")
    return DETECTORS.register(cls, name=name or cls.name)


def get_detector(name: str) -> type[AnomalyModel]:
    """The detector class registered as ``name``; a ``ConfigError`` lists the known names."""
    if not isinstance(name, str):
        raise ConfigError(f"a detector name is a string, got {name!r}")
    return DETECTORS.get(name)


def available_detectors() -> list[str]:
    """Names of every detector :func:`get_detector` can resolve (built-in and installed)."""
    return DETECTORS.names()


def detector_name(detector: AnomalyModel | type[AnomalyModel]) -> str | None:
    """The name under which ``detector`` (an object or a class) is registered, if any."""
    cls = detector if isinstance(detector, type) else type(detector)
    return DETECTORS.name_of(cls)


def check_method(name: Any) -> str:
    """``name`` if a detector is registered under it, else a ``ConfigError`` naming the
    known detectors."""
    if not isinstance(name, str) or name not in DETECTORS:
        raise ConfigError(
            f"unknown detector {name!r}; known detectors: {', '.join(available_detectors())}"
        )
    return name


def build_detector(
    method: str,
    settings: DetectorSettings,
    *,
    options: dict[str, Any] | None = None,
    backbone: str | nn.Module | None = None,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    in_channels: int | None = None,
) -> AnomalyModel:
    """A detector of ``method`` built through its :meth:`~AnomalyModel.from_settings`.

    Shared settings among ``options`` (e.g. ``{"batch_size": 8}``) replace those of
    ``settings``; the other options are the detector's own. Without ``layers``, a backbone
    listed in :data:`~inspectkit.models.backbones.DEFAULT_LAYERS` (EfficientNet-Lite0)
    gets its layers for ``method`` from there, any other the detector's own default.

    Example:
        >>> det = build_detector("padim", DetectorSettings(device="cpu"),
        ...                      options={"n_features": 20, "batch_size": 4})
        >>> type(det).__name__, det.batch_size
        ('PaDiM', 4)
    """
    cls = get_detector(check_method(method))
    shared, own = DetectorSettings.split(dict(options or {}))
    if shared:
        settings = settings.replace(**shared)
    context: dict[str, Any] = {
        "backbone": backbone,
        "weights": weights,
        "layers": layers,
        "in_channels": in_channels,
    }
    for key in context:  # an option of the same name wins over the stage's value
        if key in own:
            context[key] = own.pop(key)
    if context["layers"] is None and isinstance(context["backbone"], str):
        # backbones whose layer names differ from ResNet's bring their own defaults
        from inspectkit.models.backbones import DEFAULT_LAYERS

        found = DEFAULT_LAYERS.get(context["backbone"], {}).get(method)
        context["layers"] = list(found) if found else None
    try:
        return cls.from_settings(settings, **context, **own)
    except TypeError as exc:
        raise ConfigError(f"options {sorted(own)} do not fit detector {method!r}: {exc}") from None


class DetectorNames(Mapping[str, type[AnomalyModel]]):
    """A read-only ``name -> class`` view of the registered detectors (what
    ``inspectkit.anomaly.stage.METHODS`` is); it follows registrations as they happen."""

    def __getitem__(self, name: str) -> type[AnomalyModel]:
        if not isinstance(name, str) or name not in DETECTORS:
            raise KeyError(name)
        return DETECTORS.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(DETECTORS.names())

    def __len__(self) -> int:
        return len(DETECTORS.names())

    def __contains__(self, name: object) -> bool:
        return name in DETECTORS

    def __repr__(self) -> str:
        return f"DetectorNames({DETECTORS.names()!r})"


__all__ = [
    "DETECTORS",
    "ENTRY_POINT_GROUP",
    "DetectorNames",
    "available_detectors",
    "build_detector",
    "check_method",
    "detector_name",
    "get_detector",
    "register_detector",
]
