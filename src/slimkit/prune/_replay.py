"""Replay machinery for the sensitivity analysis's activation cache (:mod:`._cache`).

Submodules can be made to return recorded outputs instead of computing (:func:`replaying`), their
outputs recorded up to a stop point (:func:`recording`), the tensors later code reads found by a
``TorchFunctionMode`` (:class:`ReadTracker`), unread ones reduced to meta placeholders
(:func:`freeze`), and several batches merged into one and split again (:func:`merge_batches`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = [
    "Entry",
    "ReadTracker",
    "Replay",
    "Stop",
    "ancestors",
    "batch_size",
    "call",
    "check_shapes",
    "clone_tree",
    "freeze",
    "full_metric",
    "full_outputs",
    "keyed_leaves",
    "member_of",
    "merge_batches",
    "nbytes",
    "recording",
    "replaying",
    "same_outputs",
    "split_batches",
    "to_device",
]


# ---------------------------------------------------------------------------- evaluation basics
def call(module: nn.Module, inputs: Any) -> Any:
    """``module(*inputs)`` for a tuple/list, ``module(**inputs)`` for a dict, else ``module(x)``."""
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    if isinstance(inputs, dict):
        return module(**inputs)
    return module(inputs)


def to_device(tree: Any, device: torch.device | None) -> Any:
    if device is None:
        return tree
    return pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)


def _clone(leaf: Any) -> Any:
    return leaf.clone() if isinstance(leaf, torch.Tensor) and not leaf.is_meta else leaf


def clone_tree(tree: Any) -> Any:
    """``tree`` with every (non-meta) tensor leaf copied."""
    return pytree.tree_map(_clone, tree)


def same_outputs(a: Any, b: Any) -> bool:
    """Bitwise equality of two (nested) outputs."""
    (leaves_a, spec_a), (leaves_b, spec_b) = pytree.tree_flatten(a), pytree.tree_flatten(b)
    return spec_a == spec_b and all(map(_same_leaf, leaves_a, leaves_b))


def _same_leaf(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        return torch.equal(x, y) or (  # NaN where the other has NaN is the same too
            x.is_floating_point() and bool(((x == y) | (x.isnan() & y.isnan())).all())
        )
    return type(x) is type(y) and (x is y or x == y)


def full_outputs(
    module: nn.Module, data: Iterable[Any], device: Any
) -> tuple[list[Any], list[Any]]:
    """The outputs of ``module`` on every batch of ``data``, and the targets (no caching)."""
    outputs, targets = [], []
    with torch.inference_mode():
        for inputs, target in data:
            outputs.append(call(module, to_device(inputs, device)))
            targets.append(target)
    return outputs, targets


def full_metric(
    module: nn.Module, data: Iterable[Any], metric: Callable[..., float], device: Any
) -> float:
    """The metric of ``module`` over the whole of ``data`` (no caching)."""
    return float(metric(*full_outputs(module, data, device)))


# ------------------------------------------------------------------------------------ replaying
class Stop(Exception):
    """Raised by a pre-hook to end a forward pass once everything worth caching is computed."""


@dataclass
class Entry:
    """One batch: the module inputs and the replayed submodule outputs (``None``: run everything).

    Tensor leaves that no later code reads are stored as meta tensors (shape only, no memory).
    """

    inputs: Any
    outputs: dict[str, Any] | None


class Replay:
    """Which batch the replaced submodules currently return the cached outputs of.

    ``slices`` keeps, per replaced submodule, the channels (dim 1) of those output leaves that
    a pruned model has fewer of: ``{name: {leaf index: kept channel indices}}``. Leaves are
    handed out as copies, so that later in-place operations cannot alter the cache, unless
    ``copies`` names the ``(name, leaf index)`` pairs that need one (``""``: the inputs).
    """

    def __init__(self, copies: set[tuple[str, int]] | None = None) -> None:
        self.entry: Entry | None = None
        self.copies = copies
        self.slices: dict[str, dict[int, torch.Tensor]] = {}

    def value(self, tree: Any, name: str = "") -> Any:
        kept = self.slices.get(name, {})
        if not kept and self.copies is None:
            return clone_tree(tree)
        leaves, spec = pytree.tree_flatten(tree)
        leaves = [
            select_channels(leaf, kept[j])
            if j in kept
            else _clone(leaf)
            if self.copies is None or (name, j) in self.copies
            else leaf
            for j, leaf in enumerate(leaves)
        ]
        return pytree.tree_unflatten(leaves, spec)

    def inputs(self) -> Any:
        entry = self.entry
        assert entry is not None
        return entry.inputs if entry.outputs is None else self.value(entry.inputs)


def select_channels(t: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``t.index_select(1, kept)`` in ``t``'s memory format (a channels-last tensor stays one:
    a convolution reading it sums in the order it would in the full run)."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return t.permute(0, 2, 3, 1).index_select(3, kept).permute(0, 3, 1, 2)
    return t.index_select(1, kept)


def _replayed_forward(
    state: Replay, name: str, original: Callable[..., Any], *a: Any, **k: Any
) -> Any:
    entry = state.entry
    if entry is None or entry.outputs is None:
        return original(*a, **k)
    return state.value(entry.outputs[name], name)


@contextlib.contextmanager
def replaying(module: nn.Module, names: Iterable[str], state: Replay) -> Iterator[None]:
    """Make the named submodules return ``state``'s cached outputs instead of computing."""
    saved = []
    for name in names:
        sub = module.get_submodule(name)
        saved.append((sub, sub.__dict__.get("forward")))
        sub.forward = functools.partial(_replayed_forward, state, name, sub.forward)
    try:
        yield
    finally:
        for sub, own_forward in saved:
            if own_forward is None:
                del sub.forward
            else:
                sub.forward = own_forward


@contextlib.contextmanager
def recording(
    module: nn.Module,
    names: Iterable[str],
    stop: str | None,
    shared: Callable[[str, int, Any], bool] | None = None,
    needed: set[tuple[str, int]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Collect copies of the named submodules' outputs (not of the leaves ``shared(name, leaf
    index, leaf)`` says may be kept as they are; tensor leaves not in ``needed``, when given,
    become meta placeholders, as :func:`freeze` makes them, without a copy); raise
    :class:`Stop` as ``stop`` starts."""
    store: dict[str, Any] = {}

    def kept(name: str, j: int, leaf: Any) -> Any:
        if needed is not None and isinstance(leaf, torch.Tensor) and (name, j) not in needed:
            return leaf.to("meta")
        return leaf if shared is not None and shared(name, j, leaf) else _clone(leaf)

    def keep(name: str, _m: nn.Module, _args: Any, output: Any) -> None:
        if shared is None and needed is None:
            store[name] = clone_tree(output)
            return
        leaves, spec = pytree.tree_flatten(output)
        store[name] = pytree.tree_unflatten([kept(name, j, x) for j, x in enumerate(leaves)], spec)

    def halt(_m: nn.Module, _args: Any) -> None:
        raise Stop

    handles = [
        module.get_submodule(n).register_forward_hook(functools.partial(keep, n)) for n in names
    ]
    if stop is not None:
        handles.append(module.get_submodule(stop).register_forward_pre_hook(halt))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class ReadTracker(TorchFunctionMode):
    """Notes which watched tensors any torch function (or tensor method / attribute) receives,
    and which it writes in place (in-place methods, ``out=``, item assignment), views included."""

    def __init__(self, watched: dict[int, tuple[str, int]], tensors: Iterable[Any]) -> None:
        super().__init__()
        self.watched = watched
        self.read: set[tuple[str, int]] = set()
        self.written: set[tuple[str, int]] = set()
        self.storages: dict[int, set[tuple[str, int]]] = {}
        for t in tensors:
            self.storages.setdefault(_storage(t), set()).add(watched[id(t)])

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for leaf in pytree.tree_leaves((args, kwargs)):
            key = self.watched.get(id(leaf))
            if key is not None:
                self.read.add(key)
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__")
        if in_place or name == "__setitem__" or name.startswith("__i"):
            self._wrote(args[:1])
        self._wrote(pytree.tree_leaves(kwargs.get("out")))
        out = func(*args, **kwargs)
        for t in pytree.tree_leaves(out):  # views of watched tensors are watched too
            if isinstance(t, torch.Tensor) and id(t) not in self.watched:
                keys = self.storages.get(_storage(t))
                if keys:
                    self.watched[id(t)] = next(iter(keys))
                    self.storages[_storage(t)] = keys
        return out

    def _wrote(self, tensors: Iterable[Any]) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.written |= self.storages.get(_storage(t), set())


def _storage(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr()) if not t.is_meta else -id(t)


def keyed_leaves(key: str, tree: Any) -> Iterator[tuple[tuple[str, int], Any]]:
    for j, leaf in enumerate(pytree.tree_leaves(tree)):
        if isinstance(leaf, torch.Tensor):
            yield (key, j), leaf


def freeze(key: str, tree: Any, needed: set[tuple[str, int]]) -> Any:
    """``tree`` with every tensor leaf that is not ``needed`` replaced by a meta placeholder."""
    leaves, spec = pytree.tree_flatten(tree)
    leaves = [
        leaf.to("meta") if isinstance(leaf, torch.Tensor) and (key, j) not in needed else leaf
        for j, leaf in enumerate(leaves)
    ]
    return pytree.tree_unflatten(leaves, spec)


def nbytes(tree: Any) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in pytree.tree_leaves(tree)
        if isinstance(t, torch.Tensor) and not t.is_meta
    )


def ancestors(name: str) -> Iterator[str]:
    while "." in name:
        name = name.rpartition(".")[0]
        yield name


# ------------------------------------------------------------------------------ merging batches
def batch_size(tree: Any) -> int | None:
    """Dim 0 of the first tensor leaf with at least one dim (``None``: there is none)."""
    return next(
        (t.shape[0] for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.dim()),
        None,
    )


def merge_batches(trees: list[Any]) -> Any | None:
    """One batch out of several: tensor leaves concatenated along dim 0.

    Returns ``None`` when that is not a batch of the same kind: the structures differ, a tensor
    leaf's dim 0 is not its batch's size (or other dims / dtypes differ), or a non-tensor leaf
    differs between the batches.
    """
    flat = [pytree.tree_flatten(t) for t in trees]
    sizes = [batch_size(t) for t in trees]
    if any(spec != flat[0][1] for _, spec in flat) or None in sizes:
        return None
    leaves = []
    for column in zip(*(leaves for leaves, _ in flat), strict=True):
        first = column[0]
        if not isinstance(first, torch.Tensor):
            if not all(type(c) is type(first) and c == first for c in column):
                return None
            leaves.append(first)
            continue
        for leaf, size in zip(column, sizes, strict=True):
            if not (
                isinstance(leaf, torch.Tensor)
                and leaf.dim() >= 1
                and leaf.shape[0] == size
                and leaf.shape[1:] == first.shape[1:]
                and leaf.dtype == first.dtype
            ):
                return None
        leaves.append(torch.cat(column))
    return pytree.tree_unflatten(leaves, flat[0][1])


def split_batches(tree: Any, sizes: list[int]) -> list[Any] | None:
    """Undo :func:`merge_batches` on an output: one tree per batch (``None``: not splittable)."""
    leaves, spec = pytree.tree_flatten(tree)
    total = sum(sizes)
    columns: list[Sequence[Any]] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.dim() == 0 or leaf.shape[0] != total:
                return None
            columns.append(torch.split(leaf, sizes))
        else:
            columns.append([leaf] * len(sizes))
    return (
        [pytree.tree_unflatten(list(row), spec) for row in zip(*columns, strict=True)]
        if leaves
        else None
    )


# ------------------------------------------------------------------------- checking pruned runs
def member_of(
    cached: torch.Tensor, now: Any, members: Sequence[Any], group: Any, drop: Sequence[int]
) -> tuple[Any, int] | None:
    """``(member, channels)`` if ``now`` is ``cached`` without ``member``'s channels of the
    dropped roots (dim 1), bit for bit, and no member of another layout also fits."""
    if not isinstance(now, torch.Tensor) or cached.dim() < 2 or now.dim() != cached.dim():
        return None
    channels, found, layouts = cached.shape[1], None, set()
    for member in members:
        gone = set(group.member_channels(member, drop))
        if channels - len(gone) != now.shape[1] or any(i >= channels for i in gone):
            continue
        kept = torch.tensor([i for i in range(channels) if i not in gone], device=cached.device)
        if torch.equal(cached.index_select(1, kept), now):
            found = found or (member, channels)
            layouts.add((member.idxs, member.root_idxs))
    return found if len(layouts) == 1 else None


def check_shapes(output: Any, reference: Any) -> None:
    shapes = [tuple(t.shape) for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    want = [tuple(t.shape) for t in pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    if shapes != want:
        raise ValueError(
            f"pruning changed the output shapes {want} -> {shapes}; slimkit missed a channel "
            "coupling: pass the layers involved in ignore="
        )
