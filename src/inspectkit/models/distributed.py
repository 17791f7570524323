"""``torch.distributed`` glue: join a process group started by ``torchrun``, shard data.

Under ``torchrun --nproc_per_node=N script.py`` every process gets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
:func:`setup_distributed` sees them, initialises the default process group (gloo on
CPU, NCCL on CUDA) unless the caller already did, and says which rank this process is.
Without those variables it reports a single process and touches nothing.

Example:
    >>> info = setup_distributed("cpu")
    >>> info.world_size, info.is_main
    (1, True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from inspectkit.runtime import is_main_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup_distributed(device: torch.device | str) -> DistInfo:
    """Join the ``torchrun`` process group if there is one.

    Args:
        device: The device training would use in a single process; on CUDA each process
            takes ``cuda:LOCAL_RANK``.

    Returns:
        A :class:`DistInfo` (``world_size == 1`` outside a distributed job).
    """
    device = torch.device(device)
    if not dist.is_available():
        return DistInfo(device=device)
    if not dist.is_initialized():
        if _env_world_size() <= 1:
            return DistInfo(device=device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        log.info(
            "joined process group: rank %d of %d (%s)",
            dist.get_rank(),
            dist.get_world_size(),
            backend,
        )
    world = dist.get_world_size()
    if world <= 1:
        return DistInfo(device=device)
    local = int(os.environ.get("LOCAL_RANK", str(dist.get_rank())))
    if device.type == "cuda":
        device = torch.device("cuda", local)
    return DistInfo(rank=dist.get_rank(), world_size=world, local_rank=local, device=device)


def broadcast_module_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (keeps early-stopping decisions in step)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


class ShardedSampler(Sampler[int]):
    """Epoch-seeded shuffling or weighted drawing, split evenly across ranks.

    Every rank computes the same permutation (or the same weighted draw with
    replacement) from ``seed + epoch`` and keeps every ``world_size``-th index, like
    ``DistributedSampler``; with ``weights`` it is a distributed
    ``WeightedRandomSampler``. Call :meth:`set_epoch` before each epoch.

    Args:
        n: Number of items.
        weights: Per-item drawing weights, or ``None`` for a plain shuffle.
        num_samples: Items drawn per epoch over all ranks (default ``n``).
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed.
    """

    def __init__(
        self,
        n: int,
        *,
        weights: torch.Tensor | None = None,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.n = n
        self.weights = weights
        self.total = int(num_samples or n)
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.per_rank = -(-self.total // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
            reps = -(-self.per_rank * self.world_size // self.n)
            order = order.repeat(reps)[: self.per_rank * self.world_size]
        else:
            order = torch.multinomial(
                self.weights.double(),
                self.per_rank * self.world_size,
                replacement=True,
                generator=g,
            )
        return iter(order[self.rank :: self.world_size].tolist())


__all__ = [
    "DistInfo",
    "ShardedSampler",
    "broadcast_float",
    "broadcast_module_buffers",
    "is_main_process",
    "setup_distributed",
]
