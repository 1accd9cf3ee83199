"""Channel index mappings between the nodes of a dependency graph.

Torch-Pruning follows a group from node to node and maps the channel indices on each edge with
callables (``dep.index_mapping``). slimkit computes every mapping itself from the exact shapes of
the traced autograd graph and installs these instead; each one knows its inverse, used on the
edge's reverse dependency. Indices are Torch-Pruning's ``_HybridIndex(idx, root_idx)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch_pruning._helpers import _HybridIndex

__all__ = ["Chain", "Collapse", "Drop", "Expand", "Mapping", "Permute", "Spread", "Window"]


class Mapping:
    """A map from the channel indices of one node to those of a neighbour."""

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        raise NotImplementedError

    def inverse(self) -> Mapping:
        raise NotImplementedError


@dataclass(frozen=True)
class Window(Mapping):
    """A narrowing view ``x[start:stop:step]``: keeps the indices inside and renumbers them."""

    start: int
    stop: int
    step: int = 1

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        return [
            _HybridIndex((i.idx - self.start) // self.step, i.root_idx)
            for i in idxs
            if self.start <= i.idx < self.stop and (i.idx - self.start) % self.step == 0
        ]

    def inverse(self) -> Mapping:
        return Spread(self.start, self.stop, self.step)


@dataclass(frozen=True)
class Spread(Mapping):
    """The inverse of :class:`Window`: index ``i`` lands at ``start + i * step`` (a part placed
    into a larger tensor, e.g. one input of a concat, which fills ``[start, stop)``)."""

    start: int
    stop: int
    step: int = 1

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        return [_HybridIndex(self.start + i.idx * self.step, i.root_idx) for i in idxs]

    def inverse(self) -> Mapping:
        return Window(self.start, self.stop, self.step)


@dataclass(frozen=True)
class Drop(Mapping):
    """No channel coupling along this edge (a broadcast, or a tensor without the channels)."""

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        return []

    def inverse(self) -> Mapping:
        return self


@dataclass(frozen=True)
class Expand(Mapping):
    """Channels merged with other dims (``flatten``): channel ``c`` is the coordinate ``pos`` of
    a row-major index over ``sizes``; it maps to every flat index with that coordinate."""

    sizes: tuple[int, ...]
    pos: int

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        inner = math.prod(self.sizes[self.pos + 1 :])
        outer = math.prod(self.sizes[: self.pos])
        block = inner * self.sizes[self.pos]
        return [
            _HybridIndex(o * block + i.idx * inner + k, i.root_idx)
            for i in idxs
            for o in range(outer)
            for k in range(inner)
        ]

    def inverse(self) -> Mapping:
        return Collapse(self.sizes, self.pos)


@dataclass(frozen=True)
class Collapse(Mapping):
    """The inverse of :class:`Expand`: a flat index maps to its coordinate ``pos``."""

    sizes: tuple[int, ...]
    pos: int

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        inner = math.prod(self.sizes[self.pos + 1 :])
        seen: dict[int, _HybridIndex] = {}
        for i in idxs:
            c = i.idx // inner % self.sizes[self.pos]
            seen.setdefault(c, _HybridIndex(c, i.root_idx))
        return list(seen.values())

    def inverse(self) -> Mapping:
        return Expand(self.sizes, self.pos)


@dataclass(frozen=True)
class Permute(Mapping):
    """Channels spread over several dims (``view(b, g, c // g, h, w)``) whose order changes
    (``transpose(1, 2)``): a row-major index over ``sizes`` becomes one over the permuted dims."""

    sizes: tuple[int, ...]
    perm: tuple[int, ...]  # new dim k is old dim perm[k]

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        new_sizes = [self.sizes[p] for p in self.perm]
        out = []
        for i in idxs:
            coords, rest = [], i.idx
            for size in reversed(self.sizes):
                rest, c = divmod(rest, size)
                coords.append(c)
            coords.reverse()
            flat = 0
            for p, size in zip(self.perm, new_sizes, strict=True):
                flat = flat * size + coords[p]
            out.append(_HybridIndex(flat, i.root_idx))
        return out

    def inverse(self) -> Mapping:
        back = tuple(self.perm.index(k) for k in range(len(self.perm)))
        return Permute(tuple(self.sizes[p] for p in self.perm), back)


@dataclass(frozen=True)
class Chain(Mapping):
    """``second(first(idxs))``."""

    first: Mapping
    second: Mapping

    def __call__(self, idxs: Sequence[_HybridIndex]) -> list[_HybridIndex]:
        return self.second(self.first(idxs))

    def inverse(self) -> Mapping:
        return Chain(self.second.inverse(), self.first.inverse())


def chain(first: Mapping | None, second: Mapping | None) -> Mapping | None:
    """Compose two optional mappings (``None`` is the identity)."""
    if first is None:
        return second
    if second is None:
        return first
    return Chain(first, second)


def inverse(mapping: Mapping | None) -> Mapping | None:
    return None if mapping is None else mapping.inverse()
