"""Structured channel pruning that physically shrinks a model: :func:`prune_model`."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Literal, overload

import torch
from torch import nn

from .criteria import Criterion, get_criterion
from .groups import ExampleInputs, GroupSet, IgnoreSpec, unknown_group_error
from .plan import GroupPlan, PrunePlan, apply_to_groups

__all__ = ["prune_model", "select_channels"]

Ratios = float | Mapping[str, float]


@overload
def prune_model(
    module: nn.Module,
    ratios: Ratios,
    example_inputs: ExampleInputs,
    ignore: IgnoreSpec = (),
    criterion: str | Criterion = "l1",
    round_to: int | None = None,
    return_plan: Literal[False] = False,
) -> nn.Module: ...


@overload
def prune_model(
    module: nn.Module,
    ratios: Ratios,
    example_inputs: ExampleInputs,
    ignore: IgnoreSpec = (),
    criterion: str | Criterion = "l1",
    round_to: int | None = None,
    *,
    return_plan: Literal[True],
) -> tuple[nn.Module, PrunePlan]: ...


def prune_model(
    module: nn.Module,
    ratios: Ratios,
    example_inputs: ExampleInputs,
    ignore: IgnoreSpec = (),
    criterion: str | Criterion = "l1",
    round_to: int | None = None,
    return_plan: bool = False,
) -> nn.Module | tuple[nn.Module, PrunePlan]:
    """Remove the least important channels of each group; return a new, smaller module.

    Importance is measured on the original weights for every group first, then the groups are
    pruned in module order; the same channel indices leave every coupled layer.

    Args:
        module: Any ``nn.Module``; left untouched (a deep copy is pruned).
        ratios: Fraction of channels to remove, in ``[0, 1)``: one float for every prunable group,
            or ``{group_name: ratio}`` for some (names from :func:`prunable_groups`).
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
        ignore: Modules of ``module`` or their qualified names never to be pruned as a group root
            (``module.prune_ignore`` is honoured too).
        criterion: ``"l1"`` (default), ``"fpgm"``, ``"bn_scale"``, or a callable mapping a
            :class:`~slimkit.prune.groups.ChannelGroup` to one score per root channel.
        round_to: Keep a multiple of this many channels per group: the target is rounded up to
            one, or down when that would exceed the original count (a group with fewer channels
            than ``round_to`` is left whole).
        return_plan: Also return the :class:`~slimkit.prune.plan.PrunePlan` (JSON-serialisable).

    Returns:
        The pruned copy, or ``(pruned, plan)`` with ``return_plan=True``. Every group keeps at
        least one channel; model outputs keep their shapes.

    Raises:
        ValueError: On an unknown group name, a ratio outside ``[0, 1)``, a bad ``round_to`` or a
            coupling slimkit cannot follow.
    """
    crit_name, crit_fn = get_criterion(criterion)
    if round_to is not None and (not _is_int(round_to) or round_to < 1):
        raise ValueError(f"round_to must be a positive int or None, got {round_to!r}")
    if isinstance(ratios, Mapping):  # check values before the (costly) graph build
        for name, ratio in ratios.items():
            _check_ratio(ratio, f"pruning ratio of {name!r}")
    else:
        _check_ratio(ratios, "pruning ratio")
    pruned = copy.deepcopy(module)
    groups = GroupSet(pruned, example_inputs, ignore)
    entries = []
    for name, ratio in _resolve_ratios(ratios, groups.names).items():
        group = groups.groups[name]
        scores = crit_fn(group)
        if tuple(scores.shape) != (group.num_channels,):
            raise ValueError(
                f"criterion {crit_name!r} returned shape {tuple(scores.shape)} for group "
                f"{name!r}; expected ({group.num_channels},)"
            )
        kept = select_channels(scores, ratio, group.ties, round_to)
        entries.append(GroupPlan(name, group.num_channels, tuple(kept)))
    plan = PrunePlan(criterion=crit_name, groups=tuple(entries))
    apply_to_groups(groups, plan)
    return (pruned, plan) if return_plan else pruned


def select_channels(
    importance: torch.Tensor,
    ratio: float,
    ties: Sequence[Sequence[int]] = (),
    round_to: int | None = None,
) -> list[int]:
    """Choose the channels to keep: drop the lowest-scoring ``ratio`` of them.

    Args:
        importance: One score per channel.
        ratio: Fraction to remove, in ``[0, 1)``; rounded to the nearest channel count.
        ties: Disjoint, equal-sized sets of channels that go or stay together (scored by sum).
        round_to: Keep a multiple of this many channels (see :func:`prune_model`).

    Returns:
        Sorted indices of the kept channels; at least one unit (channel or tie) is kept, and all
        of them when ``ratio`` rounds to no channel.
    """
    num = importance.numel()
    keep = max(1, num - round(num * ratio))
    if keep == num:
        return list(range(num))
    tied = {i for tie in ties for i in tie}
    units = sorted([list(t) for t in ties] + [[i] for i in range(num) if i not in tied])
    unit_size = len(units[0])
    step = math.lcm(unit_size, round_to or 1)
    keep = math.ceil(keep / step) * step
    if keep > num:  # no multiple of step between the target and num: round down instead
        keep = num // step * step or num
    scores = importance.detach().cpu().double().flatten()[torch.tensor(units)].sum(dim=1)
    order = torch.argsort(scores, stable=True).tolist()
    dropped = {i for k in order[: (num - keep) // unit_size] for i in units[k]}
    return [i for i in range(num) if i not in dropped]


def _resolve_ratios(ratios: Ratios, names: list[str]) -> dict[str, float]:
    """``{group: ratio}`` in module order, validated."""
    if not isinstance(ratios, Mapping):
        return dict.fromkeys(names, _check_ratio(ratios, "pruning ratio"))
    for name in ratios:
        if name not in names:
            raise unknown_group_error(str(name), names)
    return {n: _check_ratio(ratios[n], f"pruning ratio of {n!r}") for n in names if n in ratios}


def _check_ratio(ratio: object, what: str) -> float:
    if not isinstance(ratio, Real) or isinstance(ratio, bool) or not 0 <= float(ratio) < 1:
        raise ValueError(f"{what} must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
