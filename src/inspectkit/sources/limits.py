"""Size limits on what the loaders read, checked from headers before anything is allocated.

A small file can describe a huge object: an ``.npz`` of 1.85 MB that inflates to one
40000×50000 wafer map, a 45-byte pickle of ``list(range(30_000_000))``, a PNG header
claiming 60000×60000 pixels. Every loader reads the size a file *claims* (the ``.npy``
header of each archive member, an image's header, a pickle's size arguments, a bounded
read of an XML file) and refuses it with a :class:`SizeLimitError` naming the file, the
size, the limit and how to change it before it allocates anything.

The limits in effect are, in order: those given to the call (``sources.load(...,
limits=...)``, or any loader's ``limits=``), else the process-wide ones
(:func:`set_limits`), which start from the environment variables ``INSPECTKIT_MAX_*``
(one per field, e.g. ``INSPECTKIT_MAX_IMAGE_PIXELS=300000000``) or the defaults below.
Lazily decoded sets keep the limits in effect when they were loaded.

Example:
    >>> from inspectkit.sources.limits import Limits, get_limits, use_limits
    >>> with use_limits(Limits(max_image_pixels=1_000_000)):
    ...     get_limits().max_image_pixels
    1000000
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from inspectkit.errors import ConfigError, DataError

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable of each limit (``INSPECTKIT_`` + the field name in upper case).
ENV_PREFIX = "INSPECTKIT_"


class SizeLimitError(DataError):
    """A file claims a size over one of the :class:`Limits`; nothing was allocated."""


@dataclass(frozen=True)
class Limits:
    """How much one file may make a loader allocate.

    The defaults pass every public data set (WM-811K's largest map is 212×204, a DeepPCB
    image 640×640, the whole original ``LSWMD.pkl`` holds about 1.3·10⁹ map pixels) and
    refuse what no inspection image needs.

    Attributes:
        max_image_pixels: Height × width of one image or wafer map (100 MP; a 40000×50000
            map is refused). An 8-bit RGB image of this size takes 300 MB decoded.
        max_archive_pixels: Pixels of all maps in one wafer archive (``.npz``) together.
        max_file_bytes: Bytes of one file or archive member read whole into memory (an
            ``.npz`` member once inflated, an ``LSWMD.pkl``).
        max_pickle_items: Elements a pickle may ask to create from a size rather than
            from data it holds (``range``, ``bytes(n)``, an array shape, an index length),
            counted over the whole file.
        max_xml_bytes: Bytes of one annotation file (VOC XML is a few kB).
    """

    max_image_pixels: int = 100_000_000
    max_archive_pixels: int = 2_000_000_000
    max_file_bytes: int = 4 * 2**30
    max_pickle_items: int = 10_000_000
    max_xml_bytes: int = 2**20

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"limit {f.name} must be a whole number of at least 1, got {value!r}"
                )

    def replace(self, **changes: Any) -> Limits:
        """A copy with ``changes`` (names are the fields; unknown names are an error)."""
        unknown = sorted(set(changes) - set(names()))
        if unknown:
            raise ConfigError(f"unknown limit(s) {unknown}; the limits are {names()}")
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, changed by the ``INSPECTKIT_MAX_*`` environment variables."""
        env = os.environ if environ is None else environ
        changes: dict[str, int] = {}
        for name in names():
            var = env_var(name)
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                changes[name] = int(raw.strip().replace("_", ""))
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a whole number") from None
        try:
            return cls(**changes)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from the environment)") from None

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def names() -> list[str]:
    """The limit names, i.e. the fields of :class:`Limits`."""
    return [f.name for f in fields(Limits)]


def env_var(name: str) -> str:
    """The environment variable of limit ``name`` (``INSPECTKIT_MAX_IMAGE_PIXELS`` ...)."""
    return ENV_PREFIX + name.upper()


_process: Limits | None = None
_call: ContextVar[Limits | None] = ContextVar("inspectkit_source_limits", default=None)


def get_limits() -> Limits:
    """The limits in effect: the current call's (:func:`use_limits`), else the process's."""
    global _process
    given = _call.get()
    if given is not None:
        return given
    if _process is None:
        _process = Limits.from_env()
    return _process


def set_limits(limits: Limits | None = None, /, **changes: int) -> Limits:
    """Change the process-wide limits; returns the previous ones (to restore them).

    ``set_limits(max_image_pixels=300_000_000)`` changes one limit, ``set_limits(Limits())``
    sets all, ``set_limits(None)`` goes back to the environment / defaults.

    Example:
        >>> from inspectkit import sources
        >>> before = sources.set_limits(max_image_pixels=300_000_000)
        >>> _ = sources.set_limits(before)
    """
    global _process
    previous = get_process_limits()
    if limits is None and not changes:
        _process = Limits.from_env()
    else:
        _process = (limits if limits is not None else previous).replace(**changes)
    return previous


def get_process_limits() -> Limits:
    """The process-wide limits (what :func:`get_limits` gives outside a call's own)."""
    global _process
    if _process is None:
        _process = Limits.from_env()
    return _process


def as_limits(value: Limits | Mapping[str, int] | None) -> Limits | None:
    """``value`` as :class:`Limits`: a mapping changes the limits in effect."""
    if value is None or isinstance(value, Limits):
        return value
    if isinstance(value, Mapping):
        return get_limits().replace(**dict(value))
    raise ConfigError(f"limits must be a Limits or a mapping of limits, got {type(value).__name__}")


@contextlib.contextmanager
def use_limits(limits: Limits | Mapping[str, int] | None) -> Iterator[Limits]:
    """Apply ``limits`` to the loading done inside the block (``None``: leave them)."""
    chosen = as_limits(limits)
    if chosen is None:
        yield get_limits()
        return
    token = _call.set(chosen)
    try:
        yield chosen
    finally:
        _call.reset(token)


def applies_limits(func: F) -> F:
    """Decorator of a loader taking ``limits=`` (a keyword): the call runs under them
    (:func:`use_limits`), so every reader it reaches checks the same limits."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with use_limits(kwargs.get("limits")):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def over(where: object, what: str, size: int, name: str, limits: Limits | None = None) -> None:
    """Raise :class:`SizeLimitError` when ``size`` exceeds the limit ``name``.

    ``what`` says what was measured (``"map 0 is 40000×50000 pixels"``); the message
    names the file first, then the size, the limit and how to change it.
    """
    lim = getattr(limits or get_limits(), name)
    if size > lim:
        raise SizeLimitError(
            f"{where}: {what} ({size:,}), over {name}={lim:,}; raise it per call (limits=), "
            f"for the process (inspectkit.sources.set_limits) or with {env_var(name)}"
        )


__all__ = [
    "ENV_PREFIX",
    "Limits",
    "SizeLimitError",
    "applies_limits",
    "as_limits",
    "env_var",
    "get_limits",
    "get_process_limits",
    "names",
    "over",
    "set_limits",
    "use_limits",
]
