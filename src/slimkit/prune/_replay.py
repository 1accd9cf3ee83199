"""The activation cache of the sensitivity analysis's fast path (see :class:`ActivationCache`).

With ``data`` + ``metric``, the part of the forward pass that runs before a pruned group's first
changed layer does not depend on the pruning: the outputs of those submodules are computed once for
the whole validation set and replayed for every pruned copy. Only modules executed once per forward
are replayed; only the tensors that later code reads are kept (found by tracing one batch with a
``TorchFunctionMode``); one-batch comparisons with full runs guard every step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["ActivationCache", "call", "full_metric", "to_device"]


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


def _same_outputs(a: Any, b: Any) -> bool:
    """Bitwise equality of two (nested) outputs."""
    (leaves_a, spec_a), (leaves_b, spec_b) = pytree.tree_flatten(a), pytree.tree_flatten(b)
    return spec_a == spec_b and all(map(_same_leaf, leaves_a, leaves_b))


def _same_leaf(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
    return type(x) is type(y) and (x is y or x == y)


def full_metric(
    module: nn.Module, data: Iterable[Any], metric: Callable[..., float], device: Any
) -> float:
    """The metric of ``module`` over the whole of ``data`` (no caching)."""
    outputs, targets = [], []
    with torch.inference_mode():
        for inputs, target in data:
            outputs.append(call(module, to_device(inputs, device)))
            targets.append(target)
    return float(metric(outputs, targets))


# ----------------------------------------------------------------------------- activation cache
class _Stop(Exception):
    """Raised by a pre-hook to end a forward pass once everything worth caching is computed."""


@dataclass
class _Entry:
    """One batch: the module inputs and the replayed submodule outputs (``None``: run everything).

    Tensor leaves that no later code reads are stored as meta tensors (shape only, no memory).
    """

    inputs: Any
    outputs: dict[str, Any] | None


class _Replay:
    """Which batch the replaced submodules currently return the cached outputs of."""

    def __init__(self, clone: bool = True) -> None:
        self.entry: _Entry | None = None
        self.clone = clone  # hand out copies: later in-place ops must not alter the cache

    def value(self, tree: Any) -> Any:
        return pytree.tree_map(_clone, tree) if self.clone else tree

    def inputs(self) -> Any:
        entry = self.entry
        assert entry is not None
        return entry.inputs if entry.outputs is None else self.value(entry.inputs)


def _replayed_forward(
    state: _Replay, name: str, original: Callable[..., Any], *a: Any, **k: Any
) -> Any:
    entry = state.entry
    if entry is None or entry.outputs is None:
        return original(*a, **k)
    return state.value(entry.outputs[name])


@contextlib.contextmanager
def _replaying(module: nn.Module, names: Iterable[str], state: _Replay) -> Iterator[None]:
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
def _recording(module: nn.Module, names: Iterable[str], stop: str | None) -> Iterator[dict]:
    """Collect copies of the named submodules' outputs; raise :class:`_Stop` as ``stop`` starts."""
    store: dict[str, Any] = {}

    def keep(name: str, _m: nn.Module, _args: Any, output: Any) -> None:
        store[name] = pytree.tree_map(_clone, output)

    def halt(_m: nn.Module, _args: Any) -> None:
        raise _Stop

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


class _ReadTracker(TorchFunctionMode):
    """Notes which watched tensors any torch function (or tensor method / attribute) receives."""

    def __init__(self, watched: dict[int, tuple[str, int]]) -> None:
        super().__init__()
        self.watched = watched
        self.read: set[tuple[str, int]] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for leaf in pytree.tree_leaves((args, kwargs)):
            key = self.watched.get(id(leaf))
            if key is not None:
                self.read.add(key)
        return func(*args, **kwargs)


def _keyed_leaves(key: str, tree: Any) -> Iterator[tuple[tuple[str, int], Any]]:
    for j, leaf in enumerate(pytree.tree_leaves(tree)):
        if isinstance(leaf, torch.Tensor):
            yield (key, j), leaf


def _freeze(key: str, tree: Any, needed: set[tuple[str, int]]) -> Any:
    """``tree`` with every tensor leaf that is not ``needed`` replaced by a meta placeholder."""
    leaves, spec = pytree.tree_flatten(tree)
    leaves = [
        leaf.to("meta") if isinstance(leaf, torch.Tensor) and (key, j) not in needed else leaf
        for j, leaf in enumerate(leaves)
    ]
    return pytree.tree_unflatten(leaves, spec)


def _nbytes(tree: Any) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in pytree.tree_leaves(tree)
        if isinstance(t, torch.Tensor) and not t.is_meta
    )


def _ancestors(name: str) -> Iterator[str]:
    while "." in name:
        name = name.rpartition(".")[0]
        yield name


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``b`` computes what ``a`` does: same type, settings, tensors (shapes and values)."""
    if type(a) is not type(b) or a.extra_repr() != b.extra_repr() or _settings(a) != _settings(b):
        return False
    for getter in ("named_parameters", "named_buffers"):
        ta, tb = (dict(getattr(m, getter)(recurse=False)) for m in (a, b))
        if ta.keys() != tb.keys() or not all(map(_same_leaf, ta.values(), tb.values())):
            return False
    return True


def _settings(module: nn.Module) -> dict[str, Any]:
    simple = (int, float, str, bool, tuple)
    return {k: v for k, v in vars(module).items() if k[0] != "_" and isinstance(v, simple)}


class ActivationCache:
    """Evaluates pruned copies of one module, replaying what runs before their first change.

    Execution order comes from forward hooks on the first batch: ``order[name] = [start, end,
    calls]`` in hook events. The *cut* of a pruned model is the start of the first executed module
    (or executed ancestor of a module) whose settings or tensors differ from the original. A
    submodule executed once that ends before the cut cannot depend on the pruning: the cache holds
    the outputs of the maximal such submodules (the *level* of that cut) for every batch, up to
    ``cap_bytes`` (later batches run in full). Levels only move forward: groups come sorted by cut,
    and each level is built from the previous one, stopping the forward pass at the cut.
    """

    def __init__(
        self,
        module: nn.Module,
        data: Iterable[Any],
        metric: Callable[..., float],
        device: Any,
        cap_bytes: int,
    ) -> None:
        self.module, self.data, self.metric, self.device = module, data, metric, device
        self.cap_bytes = cap_bytes
        self.order: dict[str, list[int]] = {}
        self.targets: list[Any] = []
        self.cut, self.names, self.failed = 0.0, [], set()
        self.entries: list[_Entry | None] = []
        self.cuts: dict[str, float] = {}
        self.checked: set[str] = set()
        self.last_cut: tuple[nn.Module | None, float] = (None, math.inf)
        self.uncached: set[str] = set()
        with torch.inference_mode():
            self.baseline = self._first_pass()

    def _first_pass(self) -> float:
        """Baseline metric; records execution order and keeps the inputs as the first level."""
        events = [0]

        def pre(name: str, _m: nn.Module, _a: Any) -> None:
            self.order.setdefault(name, [events[0], -1, 0])[2] += 1
            events[0] += 1

        def post(name: str, _m: nn.Module, _a: Any, _o: Any) -> None:
            self.order[name][1] = events[0]
            events[0] += 1

        hooks = []
        for name, sub in self.module.named_modules():
            hooks.append(sub.register_forward_pre_hook(functools.partial(pre, name)))
            hooks.append(sub.register_forward_hook(functools.partial(post, name)))
        outputs, used = [], 0
        try:
            for inputs, target in self.data:
                inputs = to_device(inputs, self.device)
                used += _nbytes(inputs)
                self.entries.append(_Entry(inputs, {}) if used <= self.cap_bytes else None)
                if not outputs:
                    self.inputs0 = pytree.tree_map(_clone, inputs)
                outputs.append(call(self.module, inputs))
                if len(outputs) == 1:  # the order of one forward pass is all we need
                    self.output0 = pytree.tree_map(_clone, outputs[0])
                    for handle in hooks:
                        handle.remove()
                self.targets.append(target)
        finally:
            for handle in hooks:
                handle.remove()
        if not outputs:
            raise ValueError(
                "data yielded no batches; pass a non-empty re-iterable of (inputs, targets)"
            )
        return float(self.metric(outputs, self.targets))

    def order_groups(self, members: dict[str, list[str]]) -> list[str]:
        """Groups sorted by the cut their member layers predict, so that caches are shared."""
        self.cuts = {g: min(map(self._start, names), default=0.0) for g, names in members.items()}
        return sorted(members, key=lambda g: (self.cuts[g], g))

    def _start(self, name: str) -> float:
        """Start event of the module, or of its nearest executed ancestor (which may use it)."""
        while name and name not in self.order:
            name = name.rpartition(".")[0]
        return self.order[name][0] if name in self.order else 0.0

    def cut_of(self, pruned: nn.Module) -> float:
        """Start event of the first executed module that the pruning changed (inf: none changed).

        A model pruned further in place (``_StepPruner``) keeps the cut found the first time it
        changed: only the same group's layers shrink again.
        """
        if self.last_cut[0] is pruned and self.last_cut[1] < math.inf:
            return self.last_cut[1]
        new = dict(pruned.named_modules(remove_duplicate=False))
        old = dict(self.module.named_modules(remove_duplicate=False))
        if new.keys() != old.keys():
            return 0.0
        changed = (self._start(n) for n, sub in old.items() if not _same_module(sub, new[n]))
        self.last_cut = (pruned, min(changed, default=math.inf))
        return self.last_cut[1]

    def _replaceable(self, cut: float) -> list[str]:
        """The outermost submodules run once that end before ``cut``."""
        ok = {n for n, (_, end, calls) in self.order.items() if n and calls == 1 and end < cut}
        return sorted(n for n in ok if not any(a in ok for a in _ancestors(n)))

    def _batches(self) -> Iterator[tuple[int, _Entry]]:
        """Every batch: a cached entry, or past the cap raw inputs (read again from ``data``)."""
        if all(e is not None for e in self.entries):
            yield from enumerate(self.entries)  # type: ignore[misc]
            return
        for i, (inputs, _) in enumerate(self.data):
            entry = self.entries[i]
            yield i, entry if entry is not None else _Entry(to_device(inputs, self.device), None)

    def _needed(self, names: list[str], stop: str) -> set[tuple[str, int]] | None:
        """Leaves of the inputs and of the outputs of ``names`` read after those modules (batch 0).

        Returns ``None`` if replaying with only those leaves does not reproduce the full output.
        """
        state = _Replay()  # batch 0 through the current level, up to the new cut
        state.entry = self.entries[0] or _Entry(pytree.tree_map(_clone, self.inputs0), None)
        with (
            _replaying(self.module, self.names, state),
            _recording(self.module, names, stop) as rec0,
            contextlib.suppress(_Stop),
        ):
            call(self.module, state.inputs())
        inputs, outs = pytree.tree_map(_clone, (self.inputs0, rec0))  # the trace may alter them
        watched = {id(t): key for key, t in _keyed_leaves("", inputs)}
        watched.update({id(t): key for n in names for key, t in _keyed_leaves(n, outs[n])})
        state, tracker = _Replay(clone=False), _ReadTracker(watched)
        state.entry = _Entry(inputs, outs)
        with _replaying(self.module, names, state), tracker:
            out = call(self.module, inputs)
        needed = tracker.read | {
            watched[id(t)] for t in pytree.tree_leaves(out) if id(t) in watched
        }
        state = _Replay()
        state.entry = _Entry(
            _freeze("", self.inputs0, needed), {n: _freeze(n, rec0[n], needed) for n in names}
        )
        try:
            with _replaying(self.module, names, state):
                return (
                    needed
                    if _same_outputs(call(self.module, state.inputs()), self.output0)
                    else None
                )
        except Exception:  # a placeholder was used after all: do not cache at this level
            return None

    def _advance(self, cut: float) -> None:
        """Move the cache to the level of ``cut``; keeps the current level if that is not safe."""
        if cut <= self.cut or cut in self.failed:
            return
        names = self._replaceable(cut)
        stop = next(n for n, (start, _, _) in self.order.items() if start == cut)
        needed = self._needed(names, stop)
        if needed is None:
            self.failed.add(cut)
            warnings.warn(
                f"cannot replay the modules before {stop!r}; evaluating more of the model",
                stacklevel=3,
            )
            return
        state, entries, used = _Replay(), [], 0
        with (
            _replaying(self.module, self.names, state),
            _recording(self.module, names, stop) as store,
        ):
            for i, entry in self._batches():
                state.entry = entry
                store.clear()
                with contextlib.suppress(_Stop):
                    call(self.module, state.inputs())
                self.entries[i] = None  # free the previous level as the new one grows
                if any(n not in store for n in names):  # data-dependent control flow
                    break
                new = _Entry(
                    _freeze("", entry.inputs, needed),
                    {n: _freeze(n, store[n], needed) for n in names},
                )
                used += _nbytes(new.inputs) + _nbytes(new.outputs)
                if used > self.cap_bytes:
                    break
                entries.append(new)
        self.entries = entries + [None] * (len(self.targets) - len(entries))
        self.names, self.cut = names, cut

    def evaluate(self, pruned: nn.Module, group: str) -> float:
        """The metric of ``pruned`` (a pruned copy of the module), replaying what it shares."""
        cut = self.cut_of(pruned)
        if cut == math.inf:
            return self.baseline
        with torch.inference_mode():
            if group not in self.uncached:
                self._advance(min(cut, self.cuts.get(group, cut)))
            if group in self.uncached or cut < self.cut:
                return full_metric(pruned, self.data, self.metric, self.device)
            state, outputs = _Replay(), []
            with _replaying(pruned, self.names, state):
                for _, entry in self._batches():
                    state.entry = entry
                    outputs.append(call(pruned, state.inputs()))
                if group not in self.checked:  # batch 0 replayed must equal batch 0 computed
                    self.checked.add(group)
                    state.entry = _Entry(pytree.tree_map(_clone, self.inputs0), None)
                    if not _same_outputs(outputs[0], call(pruned, state.inputs())):
                        warnings.warn(
                            f"replayed outputs differ for group {group!r}; not caching it",
                            stacklevel=2,
                        )
                        self.uncached.add(group)
                        return full_metric(pruned, self.data, self.metric, self.device)
            return float(self.metric(outputs, self.targets))
