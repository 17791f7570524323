"""Runtime helpers shared by the training stages: device choice, seeding, progress bars,
epoch observers."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from inspectkit.errors import ConfigError

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; other strings go to ``torch.device``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed job (only rank 0 writes files)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def progress(iterable: Iterable[T], *, enabled: bool = True, **kwargs: Any) -> Iterator[T]:
    """A tqdm progress bar over ``iterable`` that ``enabled=False`` (or INSPECTKIT_PROGRESS=0) hides."""
    if os.environ.get("INSPECTKIT_PROGRESS", "1") == "0":
        enabled = False
    return iter(tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs))


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A manual tqdm bar (``update``/``set_postfix``) honouring ``enabled``."""
    if os.environ.get("INSPECTKIT_PROGRESS", "1") == "0":
        enabled = False
    return tqdm(disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (``None``: leave the setting alone)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: ``callback(entry, epochs)`` of the current context (see :func:`observe_epochs`).
EpochObserver = Callable[[dict[str, float], int], None]
_EPOCH_OBSERVERS: ContextVar[tuple[EpochObserver, ...]] = ContextVar(
    "inspectkit_epoch_observers", default=()
)


@contextmanager
def observe_epochs(callback: EpochObserver) -> Iterator[None]:
    """Call ``callback(entry, epochs)`` after every training epoch run in this context
    (thread or task): ``entry`` is the epoch's history row (``epoch``, ``loss``, ``lr``,
    ``val``), ``epochs`` the planned number. An exception the callback raises stops the
    training and propagates (how a caller cancels a run between epochs).

    Example:
        >>> with observe_epochs(lambda entry, epochs: print(entry["epoch"])):  # doctest: +SKIP
        ...     pipe.fit(data)
    """
    token = _EPOCH_OBSERVERS.set((*_EPOCH_OBSERVERS.get(), callback))
    try:
        yield
    finally:
        _EPOCH_OBSERVERS.reset(token)


def epoch_done(entry: dict[str, float], epochs: int) -> None:
    """Tell the observers of this context that an epoch ended (training loops call it)."""
    for callback in _EPOCH_OBSERVERS.get():
        callback(dict(entry), epochs)


__all__ = [
    "EpochObserver",
    "epoch_done",
    "is_main_process",
    "observe_epochs",
    "progress",
    "progress_bar",
    "resolve_device",
    "seed_everything",
    "torch_threads",
]
