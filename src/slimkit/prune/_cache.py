"""The activation cache of the sensitivity analysis's fast path (:class:`ActivationCache`).

With ``data`` + ``metric``, the part of the forward pass that runs before a pruned group's first
member layer does not depend on the pruning: the outputs of those submodules are computed once for
the whole validation set and replayed for every pruned model. Only modules executed once per
forward are replayed; only the tensors that later code reads are kept (found by tracing one batch
with a ``TorchFunctionMode``); one-batch comparisons with full runs guard every step.

Three choices are made by measurement rather than fixed: whether moving the cache to a later cut
saves more than it costs (from the per-module times of the first batch); whether batches are
merged into larger ones (only when the merged outputs equal the separate ones bit for bit and the
merged forward is faster on this machine); and, where they are not merged, whether image batches
run in channels-last memory format. PyTorch's CPU convolutions re-order NCHW tensors into a
blocked layout at every call; on channels-last inputs they do not, which made a small UNet's
forward 1.7x faster. Its convolutions then sum in another order, so the outputs differ by float
rounding (about 1e-6 of their magnitude; the sensitivities by about 1e-7): the cache switches
only where that is faster here and the outputs of batch 0 agree to ``LAYOUT_RTOL``, and never
with ``exact=True``. Every bit-for-bit check below compares runs in the same layout.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._levels import Chunk, Level, bytes_per_sample, record_levels
from ._replay import (
    Entry,
    ReadTracker,
    Replay,
    Stop,
    ancestors,
    batch_size,
    call,
    check_shapes,
    clone_tree,
    freeze,
    full_outputs,
    keyed_leaves,
    member_of,
    merge_batches,
    nbytes,
    recording,
    replaying,
    same_outputs,
    split_batches,
    to_device,
)

__all__ = ["ActivationCache"]

MERGE_SAMPLES = 256  # most samples in one merged batch
MERGE_ACTIVATION_BYTES = 32 * 2**20  # most bytes of the largest module output of a merged batch
MERGE_CHECK_SHARE = 0.05  # most share of the planned work the merge check may cost
# merged batches may take up to this share of the best separate forward time (NCHW or
# channels-last): every replayed batch also costs a fixed Python overhead that merging saves
MERGE_MIN_SPEEDUP = 1.1
LEVEL_FORWARDS = 3  # probe forward passes that building a cache level costs besides the segment
PROBE_SAMPLES = 2  # samples of batch 0 that find what later code reads at a new level
AHEAD_SHARE = 0.75  # most share of the memory cap the levels recorded together may need
LAYOUT_CHECK_SHARE = 0.05  # most share of the planned work the channels-last check may cost
LAYOUT_MIN_SPEEDUP = 0.9  # channels-last batches must take at most this share of the time
LAYOUT_RTOL = 1e-4  # and give outputs within this share of the output's largest magnitude


class ActivationCache:
    """Evaluates pruned models, replaying what runs before their group's first consuming layer.

    Execution order comes from forward hooks on the first batch: ``order[name] = [start, end,
    calls]`` in hook events, with the time of every event in ``clock``. The *cut* of a group is the
    start of the first executed module (or executed ancestor) among its ``"in"`` members, the
    layers that combine its channels with others. Before it, pruning only removes channels: a
    submodule executed once that ends before the cut computes what the unpruned module did, less
    the group's channels. The cache holds the outputs of the maximal such submodules (the *level*
    of that cut) for every batch, up to ``cap_bytes`` (later batches run in full), and hands them
    out without the dropped channels of the member they belong to (found on batch 0, bit for bit,
    per group). Levels only move forward: groups come sorted by cut, each level is built from the
    previous one, stopping the forward pass at the cut, and only when the time it saves exceeds
    what it costs; the levels of the later cuts are recorded in the same pass where they fit in
    the memory cap (:mod:`._levels`). ``evaluate`` takes the model already pruned in place
    (``GroupSet.pruned``).
    """

    def __init__(
        self,
        module: nn.Module,
        data: Iterable[Any],
        metric: Callable[..., float],
        device: Any,
        cap_bytes: int,
        exact: bool = False,
    ) -> None:
        self.module, self.data, self.metric, self.device = module, data, metric, device
        self.cap_bytes, self.exact = cap_bytes, exact
        self.channels_last = False  # image batches run in channels-last memory format
        self.order: dict[str, list[int]] = {}
        self.clock: list[float] = []
        self.largest = 0  # bytes of the largest module output of batch 0
        self.sizes: list[int] = []
        self.batch_times: list[float] = []
        self.targets: list[Any] = []
        self.chunks: list[Chunk] = []
        self.cut: float = 0.0  # the current level: the cut whose prefix is cached
        self.names: list[str] = []  # the submodules replayed at this level
        self.failed: set[float] = set()  # cuts whose level could not be built
        self.cuts: dict[str, float] = {}
        self.remaining: dict[str, int] = {}
        self.groups: dict[str, Any] = {}
        self.layouts: dict[str, tuple[float, dict[str, dict[int, Any]]]] = {}
        self.uncached: set[str] = set()
        self.merged = False
        self.copies: set[tuple[str, int]] | None = None  # replayed leaves that need a copy
        self.ahead: list[Level] = []  # levels of later cuts, recorded with the current one
        with torch.inference_mode():
            self.baseline = self._first_pass()
        self.small, self.small_output = self._small_probe()
        self.probe = Entry(self.small, {})  # the small probe at the current level

    # ------------------------------------------------------------------------------- first pass
    def _first_pass(self) -> float:
        """Baseline metric; records execution order and times, keeps the inputs as level 0."""
        outputs, used = [], 0
        with self._timing() as (times, first_done, done):
            for i, (inputs, target) in enumerate(self.data):
                inputs = to_device(inputs, self.device)
                start = time.perf_counter()
                out = call(self.module, inputs)
                self.batch_times.append(time.perf_counter() - start)
                if i == 0:
                    self.inputs0, self.output0 = clone_tree(inputs), clone_tree(out)
                    self.clock = list(times)
                    first_done()
                elif i == 1:  # warm: no first-call set-up in these times
                    if len(times) == len(self.clock):
                        self.clock = list(times)
                    done()
                used += nbytes(inputs)
                if used <= self.cap_bytes and len(self.chunks) == i:
                    self.chunks.append(Chunk(i, [batch_size(inputs) or 1], Entry(inputs, {})))
                self.sizes.append(batch_size(inputs) or 1)
                outputs.append(out)
                self.targets.append(target)
        if not outputs:
            raise ValueError(
                "data yielded no batches; pass a non-empty re-iterable of (inputs, targets)"
            )
        firsts = _leading(outputs, self.sizes, MERGE_SAMPLES)
        self.first_outputs = clone_tree(firsts)  # for the merge check (the metric may alter them)
        return float(self.metric(outputs, self.targets))

    def _small_probe(self) -> tuple[Any, Any]:
        """The first ``PROBE_SAMPLES`` samples of batch 0 and the module's output on them, or
        batch 0 itself where its inputs are not all batch-major tensors."""
        size = batch_size(self.inputs0)
        leaves = [t for t in pytree.tree_leaves(self.inputs0) if isinstance(t, torch.Tensor)]
        if (
            not size
            or size <= PROBE_SAMPLES
            or any(t.dim() == 0 or t.shape[0] != size for t in leaves)
        ):
            return self.inputs0, self.output0
        small = pytree.tree_map(
            lambda t: t[:PROBE_SAMPLES].clone() if isinstance(t, torch.Tensor) else t, self.inputs0
        )
        with torch.inference_mode():
            return small, call(self.module, clone_tree(small))

    @contextlib.contextmanager
    def _timing(
        self,
    ) -> Iterator[tuple[list[float], Callable[[], None], Callable[[], None]]]:
        """Hooks on every submodule noting the time of each start and end event in the yielded
        list; until the first yielded function is called (after the first batch) also their
        order (``order``) and the largest output. The second one removes them."""
        hooks: list[torch.utils.hooks.RemovableHandle] = []
        times: list[float] = []
        first = [True]

        def pre(name: str, _m: nn.Module, _a: Any) -> None:
            if first[0]:
                self.order.setdefault(name, [len(times), -1, 0])[2] += 1
            times.append(time.perf_counter())

        def post(name: str, _m: nn.Module, _a: Any, output: Any) -> None:
            if first[0]:
                self.order[name][1] = len(times)
                self.largest = max(self.largest, nbytes(output))
            times.append(time.perf_counter())

        def first_done() -> None:
            first[0] = False
            times.clear()

        def done() -> None:
            for handle in hooks:
                handle.remove()

        for name, sub in self.module.named_modules():
            hooks.append(sub.register_forward_pre_hook(functools.partial(pre, name)))
            hooks.append(sub.register_forward_hook(functools.partial(post, name)))
        try:
            yield times, first_done, done
        finally:
            done()

    # ------------------------------------------------------------------------------- planning
    def order_groups(self, groups: dict[str, Any], points: dict[str, int]) -> list[str]:
        """Groups (``{name: ChannelGroup}``) sorted by cut, so that levels are shared;
        ``points``: evaluations planned per group."""
        self.groups = dict(groups)
        self.cuts = {name: self._cut(group) for name, group in groups.items()}
        self.remaining = {g: points.get(g, 0) for g in groups}
        work = sum(n * (1 - self._prefix(self.cuts[g])) for g, n in self.remaining.items())
        with torch.inference_mode():
            self._merge(work * sum(self.batch_times))
            if not self.merged:  # merged batches are exact and fast already
                self._choose_layout(work * sum(self.batch_times))
        return sorted(groups, key=lambda g: (self.cuts[g], g))

    def _cut(self, group: Any) -> float:
        """Start of the group's first consuming (``"in"``) member: the members before it only
        drop channels, so their cached outputs serve, without those channels."""
        starts = [(self._start(m.name), m.kind) for m in group.members]
        first = min((s for s, _ in starts), default=0.0)
        return max(first, min((s for s, kind in starts if kind == "in"), default=first))

    def _start(self, name: str) -> float:
        """Start event of the module, or of its nearest executed ancestor (which may use it)."""
        while name and name not in self.order:
            name = name.rpartition(".")[0]
        return self.order[name][0] if name in self.order else 0.0

    def _prefix(self, cut: float) -> float:
        """Fraction of the first batch's forward time spent before event ``cut``."""
        if not self.clock or cut >= len(self.clock):
            return 1.0
        total = self.clock[-1] - self.clock[0]
        return (self.clock[int(cut)] - self.clock[0]) / total if total > 0 else 0.0

    def _per_sample(self) -> float:
        """Median forward time per sample in the first pass (seconds)."""
        return statistics.median(t / n for t, n in zip(self.batch_times, self.sizes, strict=True))

    def _may_reorder(self) -> bool:
        """Whether channels-last batches may be tried: image inputs, and not ``exact``."""
        return not self.exact and _has_images(self.inputs0)

    def _choose_layout(self, work_seconds: float) -> None:
        """Run image batches in channels-last format from now on when that is faster here and
        batch 0's outputs agree with the ones of the first pass (see the module docstring).
        Tried only where batches are not merged: the merge check already compared merged
        batches with separate ones in both layouts, and merging is exact."""
        if not self._may_reorder() or not self.chunks:
            return
        size, per_sample = max(self.sizes[0], 1), self._per_sample()
        if 2 * per_sample * size > LAYOUT_CHECK_SHARE * work_seconds:
            return  # too little work to pay for the check
        inputs = to_channels_last(self.inputs0)
        try:
            for _ in range(2):  # the first run sets up the kernels for this layout
                start = time.perf_counter()
                out = call(self.module, clone_tree(inputs))
                took = time.perf_counter() - start
        except Exception:  # the forward pass does not take channels-last tensors
            return
        if took > LAYOUT_MIN_SPEEDUP * per_sample * size or not _close(out, self.output0):
            return
        self.channels_last, self.inputs0, self.output0 = True, inputs, out
        self.batch_times = [t * took / (per_sample * size) for t in self.batch_times]
        for chunk in self.chunks:  # level 0: the inputs
            chunk.entry = Entry(to_channels_last(chunk.entry.inputs), chunk.entry.outputs)
        self.small, self.small_output = self._small_probe()
        self.probe = Entry(self.small, {})

    def _merge(self, work_seconds: float) -> None:
        """Merge cached batches into larger ones when that is exact and pays here.

        The first ``k`` batches run separately, merged, and (for image batches, unless
        ``exact``) separately in channels-last format, in turn, twice: the same moment for all
        (a busy spell on the machine must not decide). Merging needs the merged outputs equal to
        the separate ones bit for bit and the faster merged run within ``MERGE_MIN_SPEEDUP`` of
        the faster separate one in either layout (channels-last is then tried instead, see
        `_choose_layout`)."""
        size = max(self.sizes[0], 1)
        k = min(MERGE_SAMPLES // size, MERGE_ACTIVATION_BYTES // max(self.largest, 1))
        k = min(k, len(self.chunks), len(self.first_outputs))
        layouts = self._may_reorder()
        check = (6 if layouts else 4) * self._per_sample() * sum(self.sizes[:k])
        merged = None
        if k >= 2 and check <= MERGE_CHECK_SHARE * work_seconds:
            merged = merge_batches([c.entry.inputs for c in self.chunks[:k]])
        expected, self.first_outputs = self.first_outputs[:k], []
        if merged is None:
            return
        batches = [c.entry.inputs for c in self.chunks[:k]]
        variants = {"separate": batches}
        if layouts:
            variants["channels_last"] = [to_channels_last(b) for b in batches]
        best = dict.fromkeys([*variants, "merged"], math.inf)
        for _ in range(2):
            for key, inputs in list(variants.items()):
                start = time.perf_counter()
                try:
                    for x in inputs:  # copies: the forward may write to its inputs
                        call(self.module, clone_tree(x))
                except Exception:  # the forward pass does not take channels-last tensors
                    if key == "separate":
                        raise
                    del variants[key], best[key]
                    continue
                best[key] = min(best[key], time.perf_counter() - start)
            start = time.perf_counter()
            out = call(self.module, clone_tree(merged))
            best["merged"] = min(best["merged"], time.perf_counter() - start)
            parts = split_batches(out, self.sizes[:k])
            if parts is None or not all(map(same_outputs, parts, expected)):
                return  # not bit for bit what the separate batches give
        separate = min(v for key, v in best.items() if key != "merged")
        if best["merged"] <= MERGE_MIN_SPEEDUP * separate:
            self._merge_chunks(k)

    def _merge_chunks(self, k: int) -> None:
        chunks = []
        for j in range(0, len(self.chunks), k):
            part = self.chunks[j : j + k]
            merged = merge_batches([c.entry.inputs for c in part]) if len(part) > 1 else None
            if merged is None and len(part) > 1:
                return  # leave every batch as it is
            sizes = [s for c in part for s in c.sizes]
            chunks.append(
                Chunk(
                    part[0].first, sizes, Entry(merged, {}) if merged is not None else part[0].entry
                )
            )
        self.chunks, self.merged = chunks, True

    def _pays(self, cut: float, base: float | None = None) -> bool:
        """Whether moving the cache to ``cut`` (from ``base``, default the current level's cut)
        saves more than building the level costs."""
        gained = self._prefix(cut) - self._prefix(self.cut if base is None else base)
        cached = sum(self.batch_times[: self._covered()])
        evals = 1 + sum(n for g, n in self.remaining.items() if self.cuts.get(g, 0) >= cut)
        share = (batch_size(self.small) or 1) / max(self.sizes[0], 1)
        probe = statistics.median(self.batch_times) * share
        cost = gained * cached + LEVEL_FORWARDS * probe
        return gained * cached * evals > cost

    # ---------------------------------------------------------------------------------- levels
    def _covered(self) -> int:
        return sum(len(c.sizes) for c in self.chunks)

    def _batches(self) -> Iterator[tuple[int, list[int], Entry]]:
        """Every batch: cached chunks, then past the cap raw inputs (read again from ``data``)."""
        for c in self.chunks:
            yield c.first, c.sizes, c.entry
        covered = self._covered()
        if covered < len(self.sizes):
            for i, (inputs, _) in enumerate(self.data):
                if i >= covered:
                    inputs = to_device(inputs, self.device)
                    if self.channels_last:
                        inputs = to_channels_last(inputs)
                    yield i, [self.sizes[i]], Entry(inputs, None)

    def _replaceable(self, cut: float) -> list[str]:
        """The outermost submodules run once that end before ``cut``."""
        ok = {n for n, (_, end, calls) in self.order.items() if n and calls == 1 and end < cut}
        return sorted(n for n in ok if not any(a in ok for a in ancestors(n)))

    def _needed(self, names: list[str], stop: str, base: Level | None = None) -> Level | None:
        """The level of the cut at ``stop``, replaying ``names``: the leaves of the inputs and
        of their outputs read after those modules (on the small probe, run from the ``base``
        level, default the current one), the probe's entry and the leaves that need a copy;
        ``None`` if replaying only those leaves does not reproduce the full output."""
        state = Replay()  # the small probe through the base level, up to the new cut
        state.entry = self.probe if base is None else base.probe
        with (
            replaying(self.module, self.names if base is None else base.names, state),
            recording(self.module, names, stop) as rec0,
            contextlib.suppress(Stop),
        ):
            call(self.module, state.inputs())
        if any(n not in rec0 for n in names):
            return None
        inputs, outs = clone_tree((self.small, rec0))  # the trace may alter them
        leaves = dict(keyed_leaves("", inputs))
        leaves.update({key: t for n in names for key, t in keyed_leaves(n, outs[n])})
        watched = {id(t): key for key, t in leaves.items()}
        state, tracker = Replay(copies=set()), ReadTracker(watched, leaves.values())
        state.entry = Entry(inputs, outs)
        with replaying(self.module, names, state), tracker:
            out = call(self.module, inputs)
        returned = {
            tracker.watched[id(t)] for t in pytree.tree_leaves(out) if id(t) in tracker.watched
        }
        needed = tracker.read | returned
        probe = Entry(
            freeze("", self.small, needed), {n: freeze(n, rec0[n], needed) for n in names}
        )
        state = Replay()
        state.entry = probe
        try:
            with replaying(self.module, names, state):
                same = same_outputs(call(self.module, state.inputs()), self.small_output)
        except Exception:  # a placeholder was used after all: do not cache at this level
            return None
        cut = self.order[stop][0]
        # copies: the leaves written in place, or handed to the metric
        return Level(cut, names, stop, needed, probe, tracker.written | returned) if same else None

    def _level(self, cut: float, base: Level | None = None) -> Level | None:
        return self._needed(self._replaceable(cut), self._stop(cut), base)

    def _advance(self, cut: float) -> None:
        """Move the cache to the level of ``cut`` when that is safe and pays: to a level
        recorded ahead, or record it, with the levels of later groups' cuts in the same pass."""
        if cut <= self.cut or cut in self.failed:
            return
        while self.ahead and self.ahead[0].cut < cut:
            self.ahead.pop(0)  # its groups were evaluated in full
        if self.ahead and self.ahead[0].cut == cut:
            self._enter(self.ahead.pop(0))
            return
        self.ahead = []
        if not self._pays(cut):
            return
        first = self._level(cut)
        if first is None:
            self.failed.add(cut)
            warnings.warn(
                f"cannot replay the modules before {self._stop(cut)!r}; evaluating more of the "
                "model",
                stacklevel=3,
            )
            return
        self._record(self._plan(first))

    def _stop(self, cut: float) -> str:
        return next(n for n, (start, _, _) in self.order.items() if start == cut)

    def _plan(self, first: Level) -> list[Level]:
        """``first`` and the levels of the later cuts that pay, recorded in one pass while
        their leaves (estimated on the probe) fit in the memory cap."""
        later = {
            c
            for g, c in self.cuts.items()
            if c > first.cut and self.remaining.get(g, 0) > 0 and g not in self.uncached
        }
        levels, per_sample = [first], bytes_per_sample(first, self.small)
        samples = sum(self.sizes[: self._covered()])
        for cut in sorted(later - self.failed):
            if not self._pays(cut, levels[-1].cut):
                continue
            level = self._level(cut, levels[-1])
            if level is None:
                break  # tried again, and warned about, once the groups get there
            more = {**per_sample, **bytes_per_sample(level, self.small)}
            if sum(more.values()) * samples > AHEAD_SHARE * self.cap_bytes:
                break
            levels.append(level)
            per_sample = more
        return levels

    def _record(self, levels: list[Level]) -> None:
        """Record the levels in one pass from the current one, and move to the first."""
        record_levels(
            self.module,
            levels,
            (self.names, self.copies, self.chunks),
            self._batches(),
            self.cap_bytes,
        )
        self.ahead = levels[1:]
        self._enter(levels[0])

    def _enter(self, level: Level) -> None:
        self.chunks, self.names, self.cut = level.chunks, level.names, level.cut
        self.probe, self.copies = level.probe, level.copies

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, pruned: nn.Module, group: str, drop: Sequence[int] = ()) -> float:
        """The metric of ``pruned`` (the module with root channels ``drop`` of ``group`` pruned),
        replaying what it shares with the module.

        The first model of each group is also run in full on a probe (the small probe, or batch 0
        when batches are merged): the replayed outputs it has fewer channels of must be the
        cached ones without the channels of one group member, and the replayed (and merged) run
        must give what the full run gave; otherwise the group is evaluated in full from then on.

        Raises:
            ValueError: If pruning changed the shapes of the model's outputs.
        """
        cut = self.cuts.get(group, 0.0)
        self.remaining[group] = self.remaining.get(group, 1) - 1
        if not drop and group in self.groups:
            return self.baseline  # no channel goes: the unpruned model (as the naive loop finds)
        with torch.inference_mode():
            if group not in self.uncached:
                self._advance(cut)
            first = None
            if group not in self.uncached and self.layouts.get(group, (None,))[0] != self.cut:
                first = self._check_group(pruned, group, drop)
            if group in self.uncached or cut < self.cut:
                return self._full(pruned)
            try:
                outputs = self._run(pruned, self._slices(group, drop))
            except Exception:  # e.g. a placeholder read: evaluate it in full
                outputs = None
            if outputs is None or (first is not None and not same_outputs(outputs[0], first)):
                return self._give_up(pruned, group)
            check_shapes(outputs[0], self.output0)
            return float(self.metric(outputs, self.targets))

    def _give_up(self, pruned: nn.Module, group: str) -> float:
        warnings.warn(f"replayed outputs differ for group {group!r}; not caching it", stacklevel=3)
        self.uncached.add(group)
        return self._full(pruned)

    def _check_group(self, pruned: nn.Module, group: str, drop: Sequence[int]) -> Any:
        """Find the group's channel layout (``self.layouts``) on a probe and check the replay.

        Without merged batches the probe is the small one, replayed and run in full here; with
        them it is batch 0, whose full output is returned for the caller to compare with the
        first output of the merged run (else ``None``). A failure marks the group uncached."""
        if not (self.names or self.merged):  # nothing replayed or merged: nothing to check
            self.layouts[group] = (self.cut, {})
            return None
        inputs, reference = (
            (self.inputs0, self.output0) if self.merged else (self.small, self.small_output)
        )
        cached = self._batch0_outputs() if self.merged else self.probe.outputs
        with recording(pruned, self.names, None) as store:
            first = call(pruned, clone_tree(inputs))
        check_shapes(first, reference)
        layout = self._layout(group, drop, cached or {}, store)
        if layout is None:
            self.uncached.add(group)
            return None
        self.layouts[group] = (self.cut, layout)
        if self.merged:
            return first
        state = Replay(copies=self.copies)
        state.entry, state.slices = self.probe, self._slices(group, drop)
        try:
            with replaying(pruned, self.names, state):
                same = same_outputs(call(pruned, state.inputs()), first)
        except Exception:
            same = False
        if not same:
            warnings.warn(
                f"replayed outputs differ for group {group!r}; not caching it", stacklevel=4
            )
            self.uncached.add(group)
        return None

    def _layout(
        self, group: str, drop: Sequence[int], cached: dict[str, Any], store: dict[str, Any]
    ) -> dict[str, dict[int, Any]] | None:
        """For each cached output leaf the pruned model (``store``) has fewer channels of, the
        member whose channels those are; ``None`` if one is not such a leaf."""
        layout: dict[str, dict[int, Any]] = {}
        members = self.groups[group].members if group in self.groups else ()
        for name in self.names if cached else ():
            pairs = zip(
                pytree.tree_leaves(cached[name]), pytree.tree_leaves(store.get(name)), strict=False
            )
            for j, (old, now) in enumerate(pairs):
                if not isinstance(old, torch.Tensor) or old.is_meta:
                    continue  # never read after the module
                if (
                    isinstance(now, torch.Tensor)
                    and now.shape == old.shape
                    and torch.equal(now, old)
                ):
                    continue
                found = member_of(old, now, members, self.groups.get(group), drop)
                if found is None:
                    return None
                layout.setdefault(name, {})[j] = found
        return layout

    def _batch0_outputs(self) -> dict[str, Any] | None:
        """The cached outputs of the replayed modules for batch 0 (``None``: none cached)."""
        if not self.chunks or self.chunks[0].entry.outputs is None:
            return None
        outputs, sizes = self.chunks[0].entry.outputs, self.chunks[0].sizes
        if len(sizes) == 1:
            return outputs
        total = sum(sizes)

        def first_rows(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == total:
                return t[: sizes[0]]
            return t

        return {name: pytree.tree_map(first_rows, tree) for name, tree in outputs.items()}

    def _slices(self, group: str, drop: Sequence[int]) -> dict[str, dict[int, torch.Tensor]]:
        """The channels each sliced replayed leaf keeps for this ``drop`` (see ``layouts``)."""
        found = self.groups.get(group)
        _, layout = self.layouts.get(group, (None, {}))
        slices: dict[str, dict[int, torch.Tensor]] = {}
        for name, leaves in layout.items():
            for j, (member, channels) in leaves.items():
                gone = set(found.member_channels(member, drop)) if found is not None else set()
                kept = [i for i in range(channels) if i not in gone]
                slices.setdefault(name, {})[j] = torch.tensor(kept, device=self.device)
        return slices

    def _full(self, pruned: nn.Module) -> float:
        """The metric of ``pruned`` run on every batch as ``data`` gives them (no cache)."""
        outputs, targets = full_outputs(pruned, self.data, self.device)
        check_shapes(outputs[0], self.output0)
        return float(self.metric(outputs, targets))

    def _run(
        self, pruned: nn.Module, slices: dict[str, dict[int, torch.Tensor]]
    ) -> list[Any] | None:
        """Outputs of every batch (``None`` if a merged output cannot be split per batch)."""
        state, outputs = Replay(copies=self.copies), []
        state.slices = slices
        with replaying(pruned, self.names, state):
            for _, sizes, entry in self._batches():
                state.entry = entry
                out = call(pruned, state.inputs())
                parts = split_batches(out, sizes) if len(sizes) > 1 else [out]
                if parts is None:
                    return None
                outputs.extend(parts)
        return outputs


def _leading(outputs: list[Any], sizes: list[int], limit: int) -> list[Any]:
    """The leading outputs whose batches hold at most ``limit`` samples together."""
    total, kept = 0, []
    for out, size in zip(outputs, sizes, strict=False):
        total += size
        if total > limit:
            break
        kept.append(out)
    return kept


def _has_images(tree: Any) -> bool:
    """Whether the inputs hold a 4-D floating-point tensor (a batch of images)."""
    return any(_is_image(t) for t in pytree.tree_leaves(tree))


def _is_image(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point()


def to_channels_last(tree: Any) -> Any:
    """``tree`` with its 4-D floating-point tensors in channels-last memory format."""
    return pytree.tree_map(
        lambda t: t.contiguous(memory_format=torch.channels_last) if _is_image(t) else t, tree
    )


def _close(a: Any, b: Any) -> bool:
    """Same structure, shapes and dtypes, tensors within ``LAYOUT_RTOL`` of ``b``'s largest
    magnitude, other leaves equal."""
    (leaves_a, spec_a), (leaves_b, spec_b) = pytree.tree_flatten(a), pytree.tree_flatten(b)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            if not same_outputs(x, y):
                return False
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        scale = float(y.abs().max()) if y.numel() else 0.0
        if not bool(((x - y).abs() <= LAYOUT_RTOL * scale).all()):
            return False
    return True
