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
from .discovery import failing_entries, warn_unpruned
from .groups import ChannelGroup, ExampleInputs, GroupSet, IgnoreSpec, resolve_ignore
from .plan import GroupPlan, PrunePlan, apply_to_groups
from .verify import TOLERANCE, compare_pruned

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
    verify: bool = False,
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
    verify: bool = False,
) -> tuple[nn.Module, PrunePlan]: ...


def prune_model(
    module: nn.Module,
    ratios: Ratios,
    example_inputs: ExampleInputs,
    ignore: IgnoreSpec = (),
    criterion: str | Criterion = "l1",
    round_to: int | None = None,
    return_plan: bool = False,
    verify: bool = False,
) -> nn.Module | tuple[nn.Module, PrunePlan]:
    """Remove the least important channels of each group; return a new, smaller module.

    Importance is measured on the original weights for every group first, then the groups are
    pruned in module order; the same channel indices leave every coupled layer. The result is
    compared with the original whose same channels are zeroed in every coupled place (see
    :mod:`slimkit.prune.verify`); a group whose pruning breaks that equality is left unpruned.

    Args:
        module: Any ``nn.Module``; left untouched (a deep copy is pruned).
        ratios: Fraction of channels to remove, in ``[0, 1)``: one float for every prunable group,
            or ``{group_name: ratio}`` for some (names from :func:`prunable_groups`). A group
            with fixed channels (see :class:`ChannelGroup`) removes that fraction of the others.
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
        ignore: Modules of ``module``, their qualified names, or module types (every instance)
            never to be pruned as a group root; one or a list (``module.prune_ignore`` is
            honoured too).
        criterion: ``"l1"`` (default), ``"fpgm"``, ``"bn_scale"``, or a callable mapping a
            :class:`~slimkit.prune.groups.ChannelGroup` to one score per root channel.
        round_to: Keep a multiple of this many channels per group: the target is rounded up to
            one, or down when that would exceed the original count (a group with fewer channels
            than ``round_to`` is left whole).
        return_plan: Also return the :class:`~slimkit.prune.plan.PrunePlan` (JSON-serialisable);
            its ``unpruned`` lists the groups left alone and why.
        verify: Make a mismatch between the pruned model and the masked original an error
            (naming the groups) instead of a warning that leaves those groups unpruned.

    Returns:
        The pruned copy, or ``(pruned, plan)`` with ``return_plan=True``. Every group keeps at
        least one channel; model outputs keep their shapes.

    Raises:
        ValueError: On an unknown group name or one that cannot be pruned (with the reason), a
            ratio outside ``[0, 1)``, a bad ``round_to``, or a failed check with ``verify=True``.

    Warns:
        UnprunedGroupsWarning: With a uniform ratio, once, listing the groups left unpruned.
    """
    crit_name, crit_fn = get_criterion(criterion)
    if round_to is not None and (not _is_int(round_to) or round_to < 1):
        raise ValueError(f"round_to must be a positive int or None, got {round_to!r}")
    if isinstance(ratios, Mapping):  # check values before the (costly) graph build
        for name, ratio in ratios.items():
            _check_ratio(ratio, f"pruning ratio of {name!r}")
    else:
        _check_ratio(ratios, "pruning ratio")
    names = resolve_ignore(module, ignore)  # the user's module objects, before copying
    pruned, plan, groups = _prune_checked(
        module, ratios, example_inputs, names, (crit_name, crit_fn), round_to, verify
    )
    if not isinstance(ratios, Mapping):
        warn_unpruned(plan.unpruned)
    return (pruned, plan) if return_plan else pruned


def _prune_checked(
    module: nn.Module,
    ratios: Ratios,
    example_inputs: ExampleInputs,
    ignore: tuple[str, ...],
    criterion: tuple[str, Criterion],
    round_to: int | None,
    verify: bool,
) -> tuple[nn.Module, PrunePlan, list[ChannelGroup]]:
    """Prune a copy, compare it with the masked original; on a mismatch, find the groups at
    fault, leave them out (or raise) and prune a fresh copy."""
    failed: dict[str, str] = {}
    while True:
        pruned = copy.deepcopy(module)
        groups = GroupSet(pruned, example_inputs, ignore)
        plan = _make_plan(groups, ratios, criterion, round_to, failed)
        found = list(groups.groups.values())
        error = _apply(module, groups, pruned, plan, example_inputs, found)
        if error is None:
            return pruned, plan, found
        culprits = failing_entries(module, example_inputs, ignore, found, plan)
        if not culprits:  # fails with nothing pruned: the model itself is not reproducible
            raise ValueError(f"the model gives different outputs on the same inputs ({error})")
        named = [n for n in culprits if isinstance(ratios, Mapping)]
        if verify or named:
            lines = "; ".join(f"{n}: {r}" for n, r in culprits.items())
            raise ValueError(f"pruning failed the masked-vs-pruned self-check: {lines}")
        failed.update(culprits)


def _apply(
    module: nn.Module,
    groups: GroupSet,
    pruned: nn.Module,
    plan: PrunePlan,
    example_inputs: ExampleInputs,
    found: list[ChannelGroup],
) -> str | None:
    """Prune ``plan`` and compare with the masked original; the error, or ``None``."""
    try:
        apply_to_groups(groups, plan)
        diff = compare_pruned(module, found, pruned, plan, example_inputs)
    except Exception as err:  # reported per group after bisection, never as a raw error
        return f"{type(err).__name__}: {err}"
    if diff > TOLERANCE:
        return f"the pruned model differs from the masked original by {diff:.2g} (relative)"
    return None


def _make_plan(
    groups: GroupSet,
    ratios: Ratios,
    criterion: tuple[str, Criterion],
    round_to: int | None,
    failed: Mapping[str, str],
) -> PrunePlan:
    """Score every chosen group on the unpruned weights and pick the channels to keep."""
    crit_name, crit_fn = criterion
    entries = []
    for name, ratio in _resolve_ratios(ratios, groups, failed).items():
        group = groups.groups[name]
        scores = crit_fn(group)
        if tuple(scores.shape) != (group.num_channels,):
            raise ValueError(
                f"criterion {crit_name!r} returned shape {tuple(scores.shape)} for group "
                f"{name!r}; expected ({group.num_channels},)"
            )
        kept = select_channels(scores, ratio, group.ties, round_to, group.fixed)
        entries.append(GroupPlan(name, group.num_channels, tuple(kept)))
    unpruned = {**groups.unsupported, **failed}
    return PrunePlan(criterion=crit_name, groups=tuple(entries), unpruned=unpruned)


def select_channels(
    importance: torch.Tensor,
    ratio: float,
    ties: Sequence[Sequence[int]] = (),
    round_to: int | None = None,
    fixed: Sequence[int] = (),
) -> list[int]:
    """Choose the channels to keep: drop the lowest-scoring ``ratio`` of the free ones.

    Args:
        importance: One score per channel.
        ratio: Fraction of the free channels to remove, in ``[0, 1)``; rounded to the nearest
            channel count.
        ties: Disjoint, equal-sized sets of channels that go or stay together (scored by sum).
        round_to: Keep a multiple of this many channels in all (see :func:`prune_model`).
        fixed: Channels that must stay (a tie touching one stays whole).

    Returns:
        Sorted indices of the kept channels; at least one unit (channel or tie) is kept, and all
        of them when ``ratio`` rounds to no channel.
    """
    num = importance.numel()
    tied = {i for tie in ties for i in tie}
    units = sorted([list(t) for t in ties] + [[i] for i in range(num) if i not in tied])
    pinned = set(fixed)
    free_units = [u for u in units if not pinned.intersection(u)]
    n_fixed = num - sum(len(u) for u in free_units)
    n_free = num - n_fixed
    keep = max(1, num - round(n_free * ratio))
    if keep >= num or not free_units:
        return list(range(num))
    unit_size = len(free_units[0])
    step = math.lcm(unit_size, round_to or 1)
    keep = max(math.ceil(keep / step) * step, n_fixed)
    if keep > num:  # no multiple of step between the target and num: round down instead
        keep = max(num // step * step, n_fixed) or num
    scores = importance.detach().cpu().double().flatten()
    unit_scores = torch.stack([scores[u].sum() for u in free_units])
    order = torch.argsort(unit_scores, stable=True).tolist()
    dropped = {i for k in order[: (num - keep) // unit_size] for i in free_units[k]}
    return [i for i in range(num) if i not in dropped]


def _resolve_ratios(
    ratios: Ratios, groups: GroupSet, failed: Mapping[str, str]
) -> dict[str, float]:
    """``{group: ratio}`` in module order, validated; named groups must be prunable."""
    if not isinstance(ratios, Mapping):
        ratio = _check_ratio(ratios, "pruning ratio")
        return {n: ratio for n in groups.names if n not in failed}
    for name in ratios:
        groups.get(str(name))  # raises for unknown or unprunable groups, with the reason
    return {
        n: _check_ratio(ratios[n], f"pruning ratio of {n!r}")
        for n in groups.names
        if n in ratios and n not in failed
    }


def _check_ratio(ratio: object, what: str) -> float:
    if not isinstance(ratio, Real) or isinstance(ratio, bool) or not 0 <= float(ratio) < 1:
        raise ValueError(f"{what} must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
