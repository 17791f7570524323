"""Lazy exports for subpackages: names are imported from their module on first use.

A subpackage keeps a ``name -> module`` map and gets its ``__getattr__``/``__dir__`` from
:func:`lazy_exports`, so importing ``inspectkit.stages`` does not import every stage (and
a missing optional dependency only matters to the name that needs it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``names`` lazily."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value  # cache: later look-ups skip __getattr__
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
