"""Cache levels of the sensitivity analysis's fast path (:mod:`._cache`): what one level holds,
and the pass that records several levels at once.

A level is the cache at one cut: the outputs of the submodules that end before it, for every
batch, less the leaves no later code reads. The levels of the later groups' cuts are recorded in
the same forward pass as the next one (one pass up to the last of them instead of one pass per
level), as far as the memory cap allows; a leaf kept by several levels is stored once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._replay import (
    Entry,
    Replay,
    Stop,
    batch_size,
    call,
    freeze,
    keyed_leaves,
    nbytes,
    recording,
    replaying,
)

__all__ = ["Chunk", "Level", "bytes_per_sample", "record_levels"]


@dataclass
class Chunk:
    """Consecutive user batches evaluated as one, and their entry at a cache level."""

    first: int  # index of its first user batch
    sizes: list[int]  # the sizes of its user batches (one: not merged)
    entry: Entry


@dataclass
class Level:
    """A cache level: the cut, the submodules replayed, the first one not (``stop``), the leaves
    kept, the small probe's entry, the leaves handed out as copies, and every batch's entry."""

    cut: float
    names: list[str]
    stop: str
    needed: set[tuple[str, int]]
    probe: Entry
    copies: set[tuple[str, int]]
    chunks: list[Chunk] = field(default_factory=list)


def record_levels(
    module: nn.Module,
    levels: list[Level],
    current: tuple[list[str], set[tuple[str, int]] | None, list[Chunk]],
    batches: Iterator[tuple[int, list[int], Entry]],
    cap_bytes: int,
) -> None:
    """Fill ``levels[i].chunks`` in one pass over ``batches``, replaying the ``current`` level
    (its replayed names, leaves needing a copies, chunks), up to the last level's stop; stops
    at ``cap_bytes`` of new tensors, or where a recorded module did not run."""
    names = sorted({n for level in levels for n in level.names})
    needed = set().union(*(level.needed for level in levels))
    # the level being replaced is not read again: replay it without copies, and keep its
    # tensors that no later code writes to in the new levels as they are
    old, copies, chunks = current
    state, count, used, replayed = Replay(copies=set()), 0, 0, set(old)

    def shared(name: str, j: int, leaf: Any) -> bool:
        entry = state.entry
        if name not in replayed or copies is None or (name, j) in copies or entry is None:
            return False
        cached = entry.outputs[name] if entry.outputs is not None else None
        return cached is not None and leaf is pytree.tree_leaves(cached)[j]

    with (
        replaying(module, old, state),
        recording(module, names, levels[-1].stop, shared, needed) as store,
    ):
        for first, sizes, entry in batches:
            state.entry = entry
            store.clear()
            with contextlib.suppress(Stop):
                call(module, state.inputs())
            if any(n not in store for n in names):  # data-dependent control flow
                break
            new = [
                Entry(
                    freeze("", entry.inputs, level.needed),
                    {n: freeze(n, store[n], level.needed) for n in level.names},
                )
                for level in levels
            ]
            used += _unique_bytes(new)
            if used > cap_bytes:
                break
            if count < len(chunks):  # free the previous level as the new ones grow
                chunks[count].entry = new[0]
            for level, level_entry in zip(levels, new, strict=True):
                level.chunks.append(Chunk(first, sizes, level_entry))
            count += 1


def bytes_per_sample(level: Level, small: Any) -> dict[tuple[str, int], float]:
    """Bytes per sample of each leaf the level keeps, measured on its probe entry (the inputs
    ``small``)."""
    size = batch_size(small) or 1
    found = dict(keyed_leaves("", level.probe.inputs))
    for name, tree in (level.probe.outputs or {}).items():
        found.update(keyed_leaves(name, tree))
    return {k: nbytes(t) / size for k, t in found.items() if k in level.needed}


def _unique_bytes(entries: list[Entry]) -> int:
    """Bytes of the distinct (non-meta) tensors of ``entries``."""
    seen: dict[int, torch.Tensor] = {}
    for t in pytree.tree_leaves([(e.inputs, e.outputs) for e in entries]):
        if isinstance(t, torch.Tensor) and not t.is_meta:
            seen[id(t)] = t
    return nbytes(list(seen.values()))
