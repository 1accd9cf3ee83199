"""Following a group through the dependency graph, channel by channel.

Torch-Pruning's own walk (``get_pruning_group``) keeps one root channel per reached index and so
cannot see that two root channels are coupled with each other (a ghost module's cheap depthwise
conv reading the primary conv, a channel shuffle pairing channels of two convs). This walk uses
Torch-Pruning's dependencies and slimkit's index mappings but visits every (node, index) once,
and records every pair of root channels that reach the same index: those must go together.
Positions tied by an operation (grouped convs, ``chunk``, shuffles, GroupNorm) are expanded into
every tied position as it goes, so the coupling they create crosses layers too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch_pruning as tp
from torch import nn
from torch_pruning._helpers import _HybridIndex

from ._layout import Layout

_OPT = tp.ops.OPTYPE


@dataclass
class Item:
    """One node of a group with a pruning function, and the indices it loses."""

    dep: Any
    idxs: list[int] = field(default_factory=list)
    root_idxs: list[int] = field(default_factory=list)


@dataclass
class Coupling:
    """The items reached from some root channels, and the root channels found coupled."""

    items: list[Item]
    ties: list[list[int]]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def sets(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in list(self.parent):
            out.setdefault(self.find(i), []).append(i)
        return [sorted(s) for s in out.values() if len(s) > 1]


def positions(layout: Layout, dg: Any) -> Callable[[Any, bool], tuple[int, int] | None]:
    """``(block, parts)`` tying the same position of each block at a node, if any."""

    def tied(node: Any, out: bool) -> tuple[int, int] | None:
        facts = layout.facts.get(node)
        if facts is not None and facts.tie is not None:
            return facts.tie
        layer = node.module
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            if node.type == _OPT.DEPTHWISE_CONV:
                return None
            channels = layer.out_channels if out else layer.in_channels
            return channels // layer.groups, layer.groups
        return None

    return tied


def traverse(
    dg: Any,
    root: Any,
    channels: Sequence[int],
    tied: Callable[[Any, bool], tuple[int, int] | None],
) -> Coupling:
    """Every (node, pruning function, index) coupled with the root's ``channels``."""
    fn = dg.get_pruner_of_module(root.module).prune_out_channels
    start = tp.dependency.Dependency(fn, fn, source=root, target=root)
    seen: dict[tuple[Any, Any], dict[int, int]] = {}
    items: dict[tuple[Any, Any], Item] = {}
    ties = _UnionFind()
    stack = [(start, [_HybridIndex(c, c) for c in channels])]
    while stack:
        dep, idxs = stack.pop()
        key = (dep.target, dep.handler)
        store = seen.setdefault(key, {})
        item = items.setdefault(key, Item(dep))
        block = tied(dep.target, dg.is_out_channel_pruning_fn(dep.handler))
        fresh = []
        for h in idxs:
            for i in _expand(h.idx, block):
                if i in store:
                    if store[i] != h.root_idx:
                        ties.union(store[i], h.root_idx)
                    continue
                store[i] = h.root_idx
                item.idxs.append(i)
                item.root_idxs.append(h.root_idx)
                fresh.append(_HybridIndex(i, h.root_idx))
        if not fresh:
            continue
        for new_dep in dep.target.dependencies:
            if new_dep.is_triggered_by(dep.handler):
                new = fresh
                for mapping in new_dep.index_mapping:
                    if mapping is not None:
                        new = mapping(new)
                if new:
                    stack.append((new_dep, new))
    return Coupling(list(items.values()), ties.sets())


def _expand(i: int, block: tuple[int, int] | None) -> list[int]:
    if block is None:
        return [i]
    size, parts = block
    return [i % size + k * size for k in range(parts)]
