"""Which groups of a model slimkit prunes, each proven by a trial pruning.

:func:`find_groups` traces the model (:class:`~slimkit.prune.groups.GroupSet`), then prunes one
channel (or tied set) of every group on a copy and compares it with the masked original
(:mod:`slimkit.prune.verify`); groups that fail are bisected out and left unpruned with the reason.
:func:`prunable_groups` and :func:`channel_groups` are its public views.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._inspect import ChannelGroup
from ._tracing import ExampleInputs
from .groups import GroupSet, IgnoreSpec, UnprunedGroupsWarning, resolve_ignore
from .plan import GroupPlan, PrunePlan, apply_to_groups
from .verify import TOLERANCE, compare_pruned

__all__ = [
    "GroupReport",
    "channel_groups",
    "failing_entries",
    "failing_groups",
    "find_groups",
    "prunable_groups",
    "warn_unpruned",
]


@dataclass(frozen=True)
class GroupReport:
    """The result of :func:`find_groups`.

    Attributes:
        groups: The prunable groups, in module order.
        unpruned: Groups left unpruned because slimkit cannot prove their coupling (or pruning
            them fails the self-check), with the reason.
    """

    groups: list[ChannelGroup]
    unpruned: dict[str, str]

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]


def find_groups(
    module: nn.Module,
    example_inputs: ExampleInputs,
    ignore: IgnoreSpec = (),
    check: bool = True,
) -> GroupReport:
    """Find the prunable groups of ``module`` and those left unpruned, with the reasons.

    Args:
        module: Any ``nn.Module`` (left untouched).
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
        ignore: Modules of ``module``, their qualified names, or module types.
        check: Also prune one channel (or tied set) of every group on a copy and compare it with
            the original whose same channels are zeroed; groups that fail are left unpruned.
    """
    names = resolve_ignore(module, ignore)
    found = GroupSet(module, example_inputs, names)
    unpruned = found.unsupported
    groups = list(found.groups.values())
    if check and groups:
        failed = failing_groups(module, example_inputs, names, groups)
        unpruned.update(failed)
        groups = [g for g in groups if g.name not in failed]
    return GroupReport(groups, unpruned)


def warn_unpruned(unpruned: Mapping[str, str], stacklevel: int = 3) -> None:
    """One warning listing every group left unpruned and why."""
    if not unpruned:
        return
    lines = "\n".join(f"  {name}: {reason}" for name, reason in unpruned.items())
    warnings.warn(
        f"slimkit leaves {len(unpruned)} group(s) unpruned because it cannot prove their channel "
        f"coupling (the rest of the model is pruned):\n{lines}",
        UnprunedGroupsWarning,
        stacklevel=stacklevel,
    )


def prunable_groups(
    module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
) -> list[str]:
    """Return the names of every prunable set of coupled channels of ``module``.

    Args:
        module: Any ``nn.Module`` (left untouched); its ``prune_ignore`` names are honoured.
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
        ignore: Modules of ``module``, their qualified names, or module types (every instance)
            never to be pruned as a group root; a single one or a list.

    Returns:
        Group names (qualified names of the root layers), in module order. Groups feeding a model
        output, coupled with an ignored layer's outputs, or touching the model input are left
        out; so are groups whose coupling slimkit cannot prove (one ``UnprunedGroupsWarning``
        lists them with the reasons). Every listed group prunes correctly: it was checked by
        pruning one of its channels on a copy.
    """
    report = find_groups(module, example_inputs, ignore)
    warn_unpruned(report.unpruned)
    return report.names


def channel_groups(
    module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
) -> list[ChannelGroup]:
    """Like :func:`prunable_groups`, but return the groups with their members and indices.

    It does not warn about groups left unpruned: :func:`find_groups` returns them with reasons.
    """
    return find_groups(module, example_inputs, ignore).groups


def one_unit_plan(groups: Sequence[ChannelGroup]) -> Any:
    """A plan that removes the last free channel (or tied set) of every group that can."""
    entries = []
    for group in groups:
        free = group.free
        tied = {i: tie for tie in group.ties for i in tie}
        if not free:
            continue
        drop = set(tied.get(free[-1], (free[-1],)))
        kept = tuple(i for i in range(group.num_channels) if i not in drop)
        if kept:
            entries.append(GroupPlan(group.name, group.num_channels, kept))
    return PrunePlan(criterion="check", groups=tuple(entries))


def failing_groups(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ignore: Sequence[str],
    groups: Sequence[ChannelGroup],
) -> dict[str, str]:
    """Groups whose one-channel pruning fails or differs from the masked original, bisected.

    Args:
        model: The original model (left untouched).
        example_inputs: Inputs to run both models on.
        ignore: Qualified names of ignored modules (as used to find ``groups``).
        groups: The groups to check.

    Returns:
        ``{name: reason}`` for every group that fails on its own (or only with others).
    """
    return failing_entries(model, example_inputs, ignore, groups, one_unit_plan(groups))


def failing_entries(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ignore: Sequence[str],
    groups: Sequence[ChannelGroup],
    plan: Any,
) -> dict[str, str]:
    """The entries of ``plan`` whose pruning fails or breaks the masked equality, bisected."""
    names = [e.name for e in plan.groups if e.dropped]
    return _bisect(lambda sub: _trial(model, example_inputs, ignore, groups, plan, sub), names)


def _bisect(test: Callable[[list[str]], str | None], names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    reason = test(names)
    if reason is None:
        return {}
    if len(names) == 1:
        return {names[0]: reason}
    half = len(names) // 2
    failed = _bisect(test, names[:half])
    failed.update(_bisect(test, names[half:]))
    return failed or {n: f"{reason} (only when pruned together with others)" for n in names}


def _trial(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ignore: Sequence[str],
    groups: Sequence[ChannelGroup],
    plan: Any,
    names: list[str],
) -> str | None:
    """Prune ``names`` by one unit on a copy; ``None`` if it equals the masked original."""
    sub = PrunePlan(plan.criterion, tuple(e for e in plan.groups if e.name in set(names)))
    pruned = copy.deepcopy(model)
    try:
        apply_to_groups(GroupSet(pruned, example_inputs, ignore), sub)
        diff = compare_pruned(model, groups, pruned, sub, example_inputs)
    except Exception as err:  # any failure of a trial means: not proven, leave it alone
        return f"pruning it breaks the model ({err})"
    if diff > TOLERANCE:
        return f"the pruned model differs from the masked original by {diff:.2g} (relative)"
    return None
