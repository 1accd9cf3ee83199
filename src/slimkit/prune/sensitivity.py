"""Sensitivity analysis: the relative metric loss when one prunable group is pruned at each ratio.

For every group and ratio the group alone is pruned (:func:`slimkit.prune.pruner.prune_model` with
``{group: ratio}``), the physically smaller model is evaluated under ``torch.inference_mode`` and
``relative_loss = (baseline - pruned) / baseline`` is recorded, as PaddleSlim's ``sensitivity``
does.

The fast path (``fast=True``) gives the same numbers as that loop while running much less. Each
group's copy is traced once and pruned step by step (:class:`_StepPruner`). With ``data`` +
``metric``, the part of the forward pass that runs before a group's first changed layer does not
depend on the pruning: the outputs of those submodules are computed once for the whole validation
set (:class:`slimkit.prune._replay.ActivationCache`) and replayed for every ratio.

The results live in a JSON file (see :mod:`slimkit.prune.sensitivity_file` for the format), rewritten
atomically after every point so that an interrupted analysis resumes where it stopped.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from slimkit._utils import eval_mode

from ._replay import ActivationCache, full_metric, to_device
from .criteria import get_criterion
from .groups import GroupSet, channel_groups
from .pruner import prune_model, select_channels
from .sensitivity_file import (
    Sensitivities,
    check_baseline,
    is_capped,
    is_pending,
    new_record,
    ratio_key,
    resume_record,
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

    def order_groups(self, members: dict[str, list[str]]) -> list[str]:
        return list(members)

    def evaluate(self, pruned: nn.Module, group: str) -> float:
        with torch.inference_mode():
            return float(self._evaluate(pruned))


def _check_ratios(ratios: Iterable[float]) -> list[float]:
    values = sorted({float(ratio_key(r)) for r in ratios})
    if not values or any(not 0 < r < 1 for r in values):
        raise ValueError(
            f"ratios must be fractions in (0, 1) such as (0.1, ..., 0.9), got {list(ratios)!r}"
        )
    return values


def _select_groups(
    found: Sequence[str], groups: Iterable[str] | None, shard: tuple[int, int] | None
) -> list[str]:
    """The groups this run measures: ``groups`` (validated) or all, then its ``shard``."""
    names = sorted(found)
    if groups is not None:
        wanted = sorted(set([groups] if isinstance(groups, str) else groups))
        unknown = [g for g in wanted if g not in found]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; the prunable groups are {names}")
        names = wanted
    if shard is not None:
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, e.g. (0, 4); got {shard!r}")
        names = names[index::count]
    return names


# ------------------------------------------------------------------------------------ analysis
class _StepPruner:
    """One group's pruned copy, pruned further for each larger ratio, from a single trace.

    ``prune_model(module, {group: ratio})`` deep-copies and traces the model at every point. The
    channels it drops at a larger ratio include those it drops at a smaller one (same scores from
    the original weights, same selection rule), so pruning one traced copy step by step yields the
    same model at every ratio, at the cost of one trace per group.
    """

    def __init__(
        self, module: nn.Module, example_inputs: Any, ignore: Any, criterion: Any, group: str
    ) -> None:
        self.model = copy.deepcopy(module).eval()
        self.groups = GroupSet(self.model, example_inputs, ignore)
        self.group = self.groups.get(group)
        self.scores = get_criterion(criterion)[1](self.group)
        self.alive = list(range(self.group.num_channels))  # original indices still present

    def at(self, ratio: float) -> tuple[nn.Module, bool]:
        """The model with ``ratio`` of the group's channels pruned (ratios must increase), and
        whether it is the same as for the previous ratio (no further channel removed)."""
        kept = set(select_channels(self.scores, ratio, self.group.ties))
        assert kept <= set(self.alive), "channel selections must be nested"
        drop = [i for i, c in enumerate(self.alive) if c not in kept]
        self.groups.prune(self.group.name, drop)
        self.alive = [c for c in self.alive if c in kept]
        return self.model, not drop


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
    members: dict[str, list[str]],
    grid: list[float],
    evaluator: _PlainEvaluator | ActivationCache,
    pruner: Callable[[str], Callable[[float], tuple[nn.Module, bool]]],
    loss_cap: float,
    path: Path | None,
    progress: bool,
) -> None:
    """Evaluate every pending point of the groups (``{name: member layer names}``), saving each."""
    sens = record["sensitivities"]
    pending = {g: [r for r in grid if is_pending(sens.get(g, {}), r, loss_cap)] for g in members}
    order = evaluator.order_groups({g: names for g, names in members.items() if pending[g]})
    total = sum(len(pending[g]) for g in order)
    with tqdm(total=total, desc="sensitivity", unit="point", disable=not progress) as bar:
        for group in order:
            losses, pruned_at, value = sens.setdefault(group, {}), pruner(group), None
            for ratio in pending[group]:
                bar.set_postfix_str(f"{group} @ {ratio_key(ratio)}", refresh=False)
                if is_capped(losses, ratio, loss_cap):
                    losses[ratio] = None
                else:
                    model, same = pruned_at(ratio)  # same: no channel more than the last ratio
                    if not same or value is None:
                        value = evaluator.evaluate(model, group)
                    losses[ratio] = (record["baseline"] - value) / record["baseline"]
                if path is not None:
                    write_sensitivities(path, record)
                bar.update(1)


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
    groups: Iterable[str] | None = None,
    shard: tuple[int, int] | None = None,
    loss_cap: float = 1.0,
    restart: bool = False,
    cache_memory_mb: float = 1024,
    fast: bool = True,
    progress: bool = True,
    metric_name: str = "metric",
    architecture: str | None = None,
) -> Sensitivities:
    """Measure each prunable group's relative metric loss at each pruning ratio.

    Every point prunes one group alone (``prune_model(module, {group: ratio}, ...)``) and
    evaluates the result in eval mode under ``torch.inference_mode``; ``module`` is not modified.

    Args:
        module: The trained model.
        data: Re-iterable ``(inputs, targets)`` batches, the same each time (no shuffling or random
            augmentation); ``inputs`` is a tensor, a tuple (positional) or a dict (keyword inputs).
        metric: ``metric(outputs, targets) -> float`` over the whole set, higher is better;
            ``outputs`` are the per-batch module outputs in order. Its baseline must be positive.
        eval_fn: Instead of ``data``/``metric``: ``eval_fn(module) -> float``, an opaque loop
            (nothing can be cached then); needs ``example_inputs``.
        example_inputs: Inputs used to trace the groups (default: the first batch of ``data``).
        ratios: Fractions of channels to prune, each in (0, 1).
        save_file: JSON file written atomically after every point; an existing file of the same
            analysis is resumed (finished points are not evaluated again).
        ignore: Modules (or qualified names) never pruned as a group root, besides
            ``module.prune_ignore``.
        criterion: Channel importance criterion passed to ``prune_model`` (``"l1"``, ``"fpgm"``,
            ``"bn_scale"`` or a callable); its name is stored in the file.
        groups: Measure only these groups (e.g. one worker's share).
        shard: ``(i, n)``: measure every n-th of the sorted groups, starting at the i-th; merge
            the workers' files with :func:`merge_sensitivities`.
        loss_cap: Stop raising a group's ratio once its loss exceeds this; the skipped points are
            stored as ``None`` (``get_ratios_by_loss`` treats them as over any budget). 1.0 or more
            disables it.
        restart: Ignore (and overwrite) an existing ``save_file`` instead of resuming it.
        cache_memory_mb: Memory for cached activations (on the model's device); batches beyond
            it are evaluated in full.
        fast: Prune step by step and replay cached activations (the same numbers); ``False`` runs
            ``prune_model`` and a full evaluation for every point, as PaddleSlim does.
        progress: Show a progress bar with an ETA over all points.
        metric_name: Name of the metric, stored in the file (e.g. ``"acc1"``).
        architecture: Stored in the file (default: the module's class name).

    Returns:
        ``{group: {ratio: relative_loss}}`` for the measured groups; ``None`` marks skipped points.

    Raises:
        ValueError: Invalid arguments, a non-positive baseline, or a ``save_file`` of another
            model / metric / criterion / data, or corrupt (``restart=True`` starts over).
    """
    grid, criterion_name = _check_ratios(ratios), get_criterion(criterion)[0]
    param = next(module.parameters(), None)
    device = None if param is None else param.device
    example_inputs = to_device(_check_sources(data, metric, eval_fn, example_inputs), device)
    path = None if save_file is None else Path(save_file)

    def pruner(group: str) -> Callable[[float], tuple[nn.Module, bool]]:
        if fast:
            return _StepPruner(module, example_inputs, ignore, criterion, group).at
        kw = {"ignore": ignore, "criterion": criterion}
        return lambda r: (prune_model(module, {group: r}, example_inputs, **kw).eval(), False)

    with eval_mode(module):
        found = channel_groups(module, example_inputs, ignore)
        names = _select_groups([g.name for g in found], groups, shard)
        members = {g.name: [m.name for m in g.members] for g in found if g.name in names}
        arch = architecture or type(module).__name__
        record = new_record(arch, weights_fingerprint(module), metric_name, criterion_name, grid)
        if path is not None and path.exists() and not restart:
            record = resume_record(path, record)
        if eval_fn is not None:
            evaluator: _PlainEvaluator | ActivationCache = _PlainEvaluator(module, eval_fn)
        elif not fast:
            evaluator = _PlainEvaluator(module, lambda m: full_metric(m, data, metric, device))
        else:
            evaluator = ActivationCache(module, data, metric, device, int(cache_memory_mb * 2**20))
        check_baseline(record, evaluator.baseline, path)
        _measure(record, members, grid, evaluator, pruner, loss_cap, path, progress)
    return {g: dict(record["sensitivities"][g]) for g in members}
