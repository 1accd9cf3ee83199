"""torch.distributed for slimkit's long jobs: one helper to join the job ``torchrun`` started.

``torchrun --nproc_per_node N [--nnodes M ...]`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address in each process's environment; :func:`process_group` reads them and starts
the default process group (gloo for CPU work, nccl for CUDA) unless the caller already did. The
group then lives until the process exits, so later calls (an analysis, then training) reuse it:
destroying and starting a group again in one job races with the other ranks' rendezvous (a rank
can reach the old group's closed sockets). Outside torchrun everything here is a no-op for a world
of one.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather", "barrier", "process_group", "world"]

# Ranks wait for each other at the end of a job; an uneven share may take hours.
TIMEOUT = datetime.timedelta(hours=24)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running job: the process group's, else torchrun's
    environment, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={size} do not describe a job")
    return rank, size


@contextlib.contextmanager
def process_group(device: torch.device | None = None) -> Iterator[tuple[int, int]]:
    """Join the job for a ``with`` block; yields ``(rank, world_size)``.

    Starts the default process group when the environment describes a job of more than one
    process and none is running (nccl when ``device`` is CUDA, else gloo); it is destroyed when
    the process exits (module docstring). A group the caller started is used as it is.
    """
    rank, size = world()
    if size == 1 or dist.is_initialized():
        yield rank, size
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = device is not None and device.type == "cuda"
    if device is not None and cuda:
        torch.cuda.set_device(device if device.index is not None else _env_int("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    atexit.register(_destroy)
    yield dist.get_rank(), dist.get_world_size()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank (picklable), in rank order; ``[obj]`` outside a job."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op outside a job)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
