"""Sensitivity analysis: the relative metric loss when one prunable group is pruned at each ratio.

For every group and ratio the group alone is pruned (:func:`slimkit.prune.pruner.prune_model` with
``{group: ratio}``), the physically smaller model is evaluated under ``torch.inference_mode`` and
``relative_loss = (baseline - pruned) / baseline`` is recorded, as PaddleSlim's ``sensitivity``
does (``fast=False`` runs exactly that loop).

The fast path (``fast=True``) gives the same numbers while running much less. The module is
traced once; every point prunes one copy of it in place and restores it (:class:`_Variants`,
``GroupSet.pruned``). With ``data`` + ``metric``, what runs before a group's first consuming layer
is what the unpruned module computed, less the group's channels: it is computed once for the whole
validation set and replayed (:class:`slimkit.prune._cache.ActivationCache`). Where it is faster
here, image batches run in channels-last memory format, which changes float rounding only;
``exact=True`` keeps every number bit for bit the loop's.

The results live in a JSON file (see :mod:`slimkit.prune.sensitivity_file` for the format), written
atomically (and under a lock, merged with what other workers wrote) after every point, so that an
interrupted analysis resumes where it stopped. Under ``torchrun`` the ranks share the groups.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from slimkit._distributed import all_gather, barrier, process_group
from slimkit._utils import eval_mode

from ._cache import ActivationCache
from ._replay import full_metric, to_device
from .criteria import get_criterion
from .discovery import find_groups, warn_unpruned
from .groups import GroupSet, IgnoreSpec, resolve_ignore
from .pruner import prune_model, select_channels
from .sensitivity_file import (
    Sensitivities,
    add_points,
    check_baseline,
    check_replaceable,
    is_capped,
    is_pending,
    locked,
    new_record,
    ratio_key,
    resume_record,
    save_shared,
    weights_fingerprint,
    write_sensitivities,
)

__all__ = ["DEFAULT_RATIOS", "analyze_sensitivity"]

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class _PlainEvaluator:
    """Evaluates every pruned model in full: the reference loop, and the way with ``eval_fn``."""

    def __init__(self, module: nn.Module, evaluate: Callable[[nn.Module], float]) -> None:
        self._evaluate = evaluate
        with torch.inference_mode():
            self.baseline = float(evaluate(module))

    def order_groups(self, groups: dict[str, Any], points: dict[str, int]) -> list[str]:
        return list(groups)

    def evaluate(self, pruned: nn.Module, group: str, drop: Any = ()) -> float:
        with torch.inference_mode():
            return float(self._evaluate(pruned))


def _check_ratios(ratios: Iterable[float] | float) -> list[float]:
    """The sorted, distinct ratios (a single number is one ratio)."""
    if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
        ratios = [ratios]
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Iterable):
        raise TypeError(
            f"ratios must be numbers such as (0.1, 0.5, 0.9), got {type(ratios).__name__} "
            f"{ratios!r}"
        )
    given = list(ratios)
    if not given or not all(_is_number(r) and 0 < float(r) < 1 for r in given):
        raise ValueError(
            f"ratios must be fractions in (0, 1) such as (0.1, ..., 0.9), got {given!r}"
        )
    return sorted({float(ratio_key(r)) for r in given})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_settings(loss_cap: Any, cache_memory_mb: Any) -> None:
    if not _is_number(loss_cap) or not loss_cap > 0:  # NaN fails too
        raise ValueError(f"loss_cap must be a number > 0 (1.0 or more: off), got {loss_cap!r}")
    if not _is_number(cache_memory_mb) or not 0 <= cache_memory_mb < math.inf:
        raise ValueError(f"cache_memory_mb must be a finite number >= 0, got {cache_memory_mb!r}")


def _check_shard(shard: Any) -> tuple[int, int]:
    """``(i, n)`` from a pair or an ``"i/n"`` string, with ``0 <= i < n``."""
    if isinstance(shard, str):
        parts = shard.split("/")
        shard = tuple(int(p) if p.strip().isdigit() else p for p in parts)
    if (
        not isinstance(shard, (tuple, list))
        or len(shard) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(
            f"shard must be (i, n) or 'i/n' with 0 <= i < n, e.g. (0, 4); got {shard!r}"
        )
    return shard[0], shard[1]


def _select_groups(
    found: Sequence[str], groups: Iterable[str] | str | None, shard: Any
) -> list[str]:
    """The groups this run measures: ``groups`` (validated) or all, then its ``shard``; in
    module order (``found``'s), the shard taken from them sorted by name."""
    names = sorted(found)
    if groups is not None:
        if not isinstance(groups, (str, Iterable)):
            raise TypeError(f"groups must be group names, got {type(groups).__name__}")
        wanted = sorted(set([groups] if isinstance(groups, str) else groups))
        unknown = [g for g in wanted if g not in found]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; the prunable groups are {names}")
        names = wanted
    if shard is not None:
        index, count = _check_shard(shard)
        names = names[index::count]
    chosen = set(names)
    return [g for g in found if g in chosen]


# ------------------------------------------------------------------------------------ analysis
class _Variants:
    """Every (group, ratio) model of the fast path from one trace of one copy of the module.

    :meth:`pruned` prunes the copy in place for a ``with`` block (``GroupSet.pruned``): the layers
    get what ``prune_model(module, {group: ratio})`` gives them, without a copy or a trace per
    point; :meth:`key` says which channels go, so that a ratio that drops no more channels than the
    previous one is not evaluated again.
    """

    def __init__(
        self, module: nn.Module, example_inputs: Any, ignore: IgnoreSpec, criterion: Any
    ) -> None:
        names = resolve_ignore(module, ignore)  # module objects are the user's, not the copy's
        report = find_groups(module, example_inputs, names)  # groups prune_model would prune
        self.unpruned = report.unpruned
        self.template = copy.deepcopy(module).eval()
        self._set = GroupSet(self.template, example_inputs, names)
        self.groups = {n: g for n, g in self._set.groups.items() if n in set(report.names)}
        self._name, self._score = get_criterion(criterion)
        self._scores: dict[str, torch.Tensor] = {}

    def key(self, group: str, ratio: float) -> tuple[int, ...]:
        """The root channels ``prune_model`` drops from ``group`` at ``ratio``."""
        found = self.groups[group]
        if group not in self._scores:  # scored on the unpruned weights, as prune_model does
            scores = self._score(found)
            if tuple(scores.shape) != (found.num_channels,):
                raise ValueError(
                    f"criterion {self._name!r} returned shape {tuple(scores.shape)} for group "
                    f"{group!r}; expected ({found.num_channels},)"
                )
            self._scores[group] = scores
        kept = set(select_channels(self._scores[group], ratio, found.ties, None, found.fixed))
        return tuple(i for i in range(found.num_channels) if i not in kept)

    def pruned(self, group: str, ratio: float) -> contextlib.AbstractContextManager[nn.Module]:
        return self._set.pruned(group, self.key(group, ratio))


class _Copies:
    """The reference loop's models: ``prune_model(module, {group: ratio})`` for every point."""

    def __init__(
        self, module: nn.Module, example_inputs: Any, ignore: IgnoreSpec, criterion: Any
    ) -> None:
        self.module, self.example_inputs = module, example_inputs
        self.ignore, self.criterion = resolve_ignore(module, ignore), criterion
        report = find_groups(module, example_inputs, self.ignore)
        self.groups, self.unpruned = {g.name: g for g in report.groups}, report.unpruned

    def key(self, group: str, ratio: float) -> None:
        return None  # not known: every point is evaluated

    def pruned(self, group: str, ratio: float) -> contextlib.AbstractContextManager[nn.Module]:
        model = prune_model(
            self.module, {group: ratio}, self.example_inputs, self.ignore, self.criterion
        )
        return contextlib.nullcontext(model.eval())


def _check_sources(data: Any, metric: Any, eval_fn: Any, example_inputs: Any) -> Any:
    """Validates the evaluation arguments; returns the example inputs for group discovery."""
    if eval_fn is not None:
        if data is not None or metric is not None:
            raise ValueError("pass either eval_fn, or data and metric, not both")
        if example_inputs is None:
            raise ValueError(
                "with eval_fn, pass example_inputs (one batch of model inputs) to find the groups"
            )
        return example_inputs
    if data is None or metric is None:
        raise ValueError(
            "pass data (re-iterable (inputs, targets) batches) and "
            "metric(outputs, targets) -> float, "
            "or eval_fn(module) -> float with example_inputs"
        )
    if isinstance(data, Iterator):
        raise TypeError(
            "data is evaluated many times: pass a list or a DataLoader, not an iterator"
        )
    if example_inputs is None:
        first = next(iter(data), None)
        if first is None:
            raise ValueError(
                "data yielded no batches; pass a non-empty re-iterable of (inputs, targets)"
            )
        example_inputs = first[0]
    return example_inputs


def _measure(
    record: dict[str, Any],
    members: dict[str, Any],
    grid: list[float],
    evaluator: _PlainEvaluator | ActivationCache,
    pruner: _Variants | _Copies,
    loss_cap: float,
    path: Path | None,
    progress: bool,
) -> None:
    """Evaluate every pending point of the groups (``{name: ChannelGroup}``), saving each."""
    sens, failed = record["sensitivities"], record["unprunable"]
    pending = {
        g: [] if g in failed else [r for r in grid if is_pending(sens.get(g, {}), r, loss_cap)]
        for g in members
    }
    order = evaluator.order_groups(
        {g: group for g, group in members.items() if pending[g]},
        {g: len(p) for g, p in pending.items()},
    )
    total = sum(len(pending[g]) for g in order)

    def save() -> None:
        if path is not None:
            save_shared(path, record)  # takes in what other workers wrote meanwhile

    with tqdm(total=total, desc="sensitivity", unit="point", disable=not progress) as bar:
        for group in order:
            losses, last = sens.setdefault(group, {}), (None, math.nan)
            for done, ratio in enumerate(pending[group]):
                bar.set_postfix_str(f"{group} @ {ratio_key(ratio)}", refresh=False)
                if group in failed or not is_pending(losses, ratio, loss_cap):
                    pass  # another worker on the same file measured it meanwhile
                elif is_capped(losses, ratio, loss_cap):
                    losses[ratio] = None
                else:
                    try:
                        last = _point(evaluator, pruner, group, ratio, last)
                    except _Unprunable as err:
                        _give_up(record, group, str(err))
                        save()
                        bar.update(len(pending[group]) - done)
                        break
                    losses[ratio] = (record["baseline"] - last[1]) / record["baseline"]
                save()
                bar.update(1)


class _Unprunable(Exception):
    """A group's pruned model could not be built or run; the message says why."""


def _point(
    evaluator: _PlainEvaluator | ActivationCache,
    pruner: _Variants | _Copies,
    group: str,
    ratio: float,
    last: tuple[Any, float],
) -> tuple[Any, float]:
    """``(key, metric)`` of one point; the last point's metric when no more channels go."""
    try:
        key = pruner.key(group, ratio)
        if key is not None and key == last[0]:
            return last
        with pruner.pruned(group, ratio) as model:
            value = evaluator.evaluate(model, group, key or ())
        if not math.isfinite(value):
            raise ValueError(f"the pruned model's metric is {value}")
        return key, value
    except torch.OutOfMemoryError:
        raise  # not the group's fault: resuming later measures it
    except Exception as err:  # noqa: BLE001 - any failure of the pruned model marks the group
        raise _Unprunable(f"at ratio {ratio_key(ratio)}: {type(err).__name__}: {err}") from err


def _give_up(record: dict[str, Any], group: str, reason: str) -> None:
    """Record ``group`` as unprunable (its points are dropped) and warn."""
    record["sensitivities"].pop(group, None)
    record["unprunable"][group] = reason
    warnings.warn(
        f"group {group!r} is left out of the sensitivities: its pruned model fails ({reason}); "
        "it is recorded as unprunable in the file and never pruned by the ratios chosen from it",
        stacklevel=4,
    )


def _record_unpruned(record: dict[str, Any], unpruned: dict[str, str], rank: int) -> None:
    """Groups discovery leaves unpruned (their coupling is not proven): recorded as unprunable,
    never measured, one warning (from the first rank)."""
    new = {g: r for g, r in unpruned.items() if g not in record["sensitivities"]}
    if rank == 0:
        warn_unpruned({g: r for g, r in new.items() if g not in record["unprunable"]}, 4)
    for group, reason in new.items():
        record["unprunable"].setdefault(group, reason)


def analyze_sensitivity(
    module: nn.Module,
    data: Iterable[tuple[Any, Any]] | None = None,
    metric: Callable[[list[Any], list[Any]], float] | None = None,
    *,
    eval_fn: Callable[[nn.Module], float] | None = None,
    example_inputs: Any = None,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    save_file: str | os.PathLike[str] | None = None,
    ignore: Iterable[str | nn.Module] = (),
    criterion: str | Callable[[Any], torch.Tensor] = "l1",
    groups: Iterable[str] | str | None = None,
    shard: tuple[int, int] | str | None = None,
    loss_cap: float = 1.0,
    restart: bool = False,
    cache_memory_mb: float = 1024,
    fast: bool = True,
    exact: bool = False,
    progress: bool = True,
    metric_name: str = "metric",
    architecture: str | None = None,
) -> Sensitivities:
    """Measure each prunable group's relative metric loss at each pruning ratio.

    Every point prunes one group alone (``prune_model(module, {group: ratio}, ...)``) and
    evaluates the result in eval mode under ``torch.inference_mode``; ``module`` is not modified.
    A group whose pruned model fails is recorded as unprunable (with the reason) and left out.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks split the groups: each keeps its share in
    ``<save_file stem>.rank<r>-of-<n><suffix>`` (resumed like ``save_file``), then rank 0 writes
    every rank's points to ``save_file`` and every rank returns them all. The process group is
    started (gloo; nccl for a CUDA model) unless it already is.

    Args:
        module: The trained model.
        data: Re-iterable ``(inputs, targets)`` batches, the same each time (no shuffling or random
            augmentation); ``inputs`` is a tensor, a tuple (positional) or a dict (keyword inputs).
        metric: ``metric(outputs, targets) -> float`` over the whole set, higher is better;
            ``outputs`` are the per-batch module outputs in order. Its baseline must be positive.
        eval_fn: Instead of ``data``/``metric``: ``eval_fn(module) -> float``, an opaque loop
            (nothing can be cached then); needs ``example_inputs``.
        example_inputs: Inputs used to trace the groups (default: the first batch of ``data``).
        ratios: Fractions of channels to prune, each in (0, 1) (a single number: one ratio).
        save_file: JSON file written atomically after every point; an existing file of the same
            analysis is resumed (finished points are not evaluated again).
        ignore: Modules (or qualified names) never pruned as a group root, besides
            ``module.prune_ignore``.
        criterion: Channel importance criterion passed to ``prune_model`` (``"l1"``, ``"fpgm"``,
            ``"bn_scale"`` or a callable); its name is stored in the file.
        groups: Measure only these groups (e.g. one worker's share; a string is one group).
        shard: ``(i, n)`` or ``"i/n"``: measure every n-th of the groups sorted by name,
            starting at the i-th; merge the workers' files with :func:`merge_sensitivities`, or
            let them share one ``save_file`` (writes are locked and merged).
        loss_cap: Stop raising a group's ratio once its loss exceeds this; the skipped points are
            stored as ``None`` (``get_ratios_by_loss`` treats them as over any budget). 1.0 or more
            disables it.
        restart: Ignore (and overwrite) an existing ``save_file`` instead of resuming it.
        cache_memory_mb: Memory for cached activations (on the model's device); batches beyond
            it are evaluated in full.
        fast: Trace once, prune each point in place and replay cached activations (the same
            numbers, see ``exact``); ``False`` runs ``prune_model`` and a full evaluation for
            every point, as PaddleSlim does.
        exact: Keep the fast path bit for bit equal to ``fast=False``. By default it runs image
            batches in channels-last memory format where that is faster on this machine, which
            changes float rounding only (outputs agree to 1e-4 of their magnitude, checked on
            the first batch; sensitivities typically to 1e-8, though a near-tie prediction may
            flip in an argmax metric).
        progress: Show a progress bar with an ETA over all points (rank 0's share under torchrun).
        metric_name: Name of the metric, stored in the file (e.g. ``"acc1"``).
        architecture: Stored in the file (default: the module's class name).

    Returns:
        ``{group: {ratio: relative_loss}}`` for the measured groups (unprunable ones left out);
        ``None`` marks skipped points.

    Raises:
        TypeError: ``data`` is an iterator, or ``ratios`` / ``groups`` are not what they name.
        ValueError: Invalid arguments, a non-positive baseline, or a ``save_file`` of another
            model / metric / criterion / data, or corrupt (``restart=True`` starts over).
    """
    grid, criterion_name = _check_ratios(ratios), get_criterion(criterion)[0]
    _check_settings(loss_cap, cache_memory_mb)
    param = next(module.parameters(), None)
    device = None if param is None else param.device
    example_inputs = to_device(_check_sources(data, metric, eval_fn, example_inputs), device)
    path = None if save_file is None else Path(save_file)
    with eval_mode(module), process_group(device) as (rank, size):
        kind = _Variants if fast else _Copies
        pruner = kind(module, example_inputs, ignore, criterion)
        names = _select_groups(list(pruner.groups), groups, shard)
        arch = architecture or type(module).__name__
        fresh = new_record(arch, weights_fingerprint(module), metric_name, criterion_name, grid)
        own = path if path is None or size == 1 else _rank_file(path, rank, size)
        record = fresh if restart else _resumed(fresh, path)
        evaluator = _evaluator(module, data, metric, eval_fn, device, fast, cache_memory_mb, exact)
        check_baseline(record, evaluator.baseline, path)
        _record_unpruned(record, pruner.unpruned, rank)
        _start_file(own, record, restart)
        mine = {g: pruner.groups[g] for g in names[rank::size]}  # module order: depths mix
        _measure(record, mine, grid, evaluator, pruner, loss_cap, own, progress and rank == 0)
        if size > 1:
            record = _combine(record, path, own, rank, restart)
    return {g: dict(record["sensitivities"][g]) for g in names if g in record["sensitivities"]}


def _evaluator(
    module: nn.Module,
    data: Iterable[Any] | None,
    metric: Callable[..., float] | None,
    eval_fn: Callable[[nn.Module], float] | None,
    device: torch.device | None,
    fast: bool,
    cache_memory_mb: float,
    exact: bool = False,
) -> _PlainEvaluator | ActivationCache:
    """The opaque ``eval_fn``, the reference loop, or the activation cache (``fast``)."""
    if eval_fn is not None:
        return _PlainEvaluator(module, eval_fn)
    assert data is not None and metric is not None  # _check_sources made sure
    if not fast:
        return _PlainEvaluator(module, lambda m: full_metric(m, data, metric, device))
    return ActivationCache(module, data, metric, device, int(cache_memory_mb * 2**20), exact)


def _rank_file(path: Path, rank: int, size: int) -> Path:
    """Where one rank of a distributed analysis keeps its share until rank 0 merges them."""
    return path.with_name(f"{path.stem}.rank{rank}-of-{size}{path.suffix}")


def _resumed(fresh: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """``fresh`` with the points of ``path`` and of the rank files of earlier distributed runs
    on it (any world size; those this machine can see), all checked to be this analysis."""
    if path is None:
        return fresh
    check_replaceable(path)  # another kind of file: an error that restart=True does not pass
    pattern = f"{glob.escape(path.stem)}.rank*-of-*{glob.escape(path.suffix)}"
    found = [p for p in [path, *sorted(path.parent.glob(pattern))] if p.exists()]
    record = resume_record(found[0], fresh) if found else fresh
    for other in found[1:]:
        add_points(record, resume_record(other, fresh))
    return record


def _start_file(path: Path | None, record: dict[str, Any], restart: bool) -> None:
    if path is not None and restart:
        with locked(path):
            check_replaceable(path)  # a sensitivity file, whatever it held; never another file
            write_sensitivities(path, record)
    elif path is not None:
        save_shared(path, record)  # with what other workers on this file wrote so far


def _combine(
    record: dict[str, Any], path: Path | None, own: Path | None, rank: int, restart: bool
) -> dict[str, Any]:
    """Every rank's points in one record (on every rank); rank 0 writes it to ``path``, then
    each rank removes its own file."""
    records = all_gather(record)
    merged: dict[str, Any] = records[0]
    for other in records[1:]:
        add_points(merged, other)
    if rank == 0 and path is not None:
        _start_file(path, merged, restart)
    barrier()  # the one file holds every point: the rank files can go
    if own is not None and own != path:
        own.unlink(missing_ok=True)
    return merged
