"""Pruning plans: which root channels each group keeps, as JSON (no pickle).

A plan plus the original architecture is enough to rebuild a pruned model: :func:`apply_plan`
prunes a freshly built model the same way, then the caller loads the pruned ``state_dict``.

File format (``format`` and ``version`` are checked on load)::

    {"format": "slimkit.prune_plan", "version": 1, "criterion": "l1",
     "groups": [{"name": "blocks.1.conv_pw", "num_channels": 96, "kept": [0, 3, 4, ...]}, ...],
     "unpruned": {"blocks.4.conv": "cannot prune the channels of ...: ..."}}

``groups`` are in application order; ``kept`` are sorted output-channel indices of the root.
``unpruned`` (optional, informational) lists the groups slimkit left alone and why.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._io import atomic_write_json

from .groups import ExampleInputs, GroupSet

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "GroupPlan",
    "PrunePlan",
    "apply_plan",
    "compose_plans",
    "load_plan",
    "save_plan",
]

PLAN_FORMAT = "slimkit.prune_plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class GroupPlan:
    """The channels one group keeps.

    Attributes:
        name: Group name (qualified name of its root layer).
        num_channels: The root's output channels before pruning.
        kept: Sorted, unique root channels that stay.
    """

    name: str
    num_channels: int
    kept: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"plan group name must be a non-empty string, got {self.name!r}")
        if not _is_int(self.num_channels) or self.num_channels < 1:
            raise ValueError(f"plan group {self.name!r}: bad num_channels {self.num_channels!r}")
        kept = self.kept
        if not kept or not all(_is_int(i) for i in kept):
            raise ValueError(f"plan group {self.name!r}: 'kept' must be a non-empty list of ints")
        if list(kept) != sorted(set(kept)):
            raise ValueError(f"plan group {self.name!r}: 'kept' must be sorted without repeats")
        if kept[0] < 0 or kept[-1] >= self.num_channels:
            raise ValueError(
                f"plan group {self.name!r}: kept index out of range [0, {self.num_channels})"
            )

    @property
    def dropped(self) -> list[int]:
        """Root channels removed by this entry."""
        kept = set(self.kept)
        return [i for i in range(self.num_channels) if i not in kept]


@dataclass(frozen=True)
class PrunePlan:
    """A JSON-serialisable record of a pruning: the criterion and each group's kept channels."""

    criterion: str
    groups: tuple[GroupPlan, ...]
    version: int = PLAN_VERSION
    unpruned: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"plan lists groups more than once: {', '.join(duplicates)}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.unpruned.items()):
            raise ValueError("plan 'unpruned' must map group names to reasons (strings)")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict ready for ``json.dump``."""
        data: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "version": self.version,
            "criterion": self.criterion,
            "groups": [
                {"name": g.name, "num_channels": g.num_channels, "kept": list(g.kept)}
                for g in self.groups
            ],
        }
        if self.unpruned:
            data["unpruned"] = dict(self.unpruned)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrunePlan:
        """Validate and read a dict written by :meth:`to_dict`.

        Raises:
            ValueError: If the format, version or any group entry is wrong.
        """
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a slimkit pruning plan (expected format {PLAN_FORMAT!r})")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(
                f"unsupported plan version {data.get('version')!r} (this slimkit reads "
                f"version {PLAN_VERSION})"
            )
        groups = data.get("groups")
        if not isinstance(data.get("criterion"), str) or not isinstance(groups, list):
            raise ValueError("a plan needs a 'criterion' string and a 'groups' list")
        entries = []
        for entry in groups:
            if not isinstance(entry, Mapping) or set(entry) != {"name", "num_channels", "kept"}:
                raise ValueError(
                    f"plan group entries need exactly 'name', 'num_channels', 'kept'; got {entry!r}"
                )
            if not isinstance(entry["kept"], list):
                raise ValueError(f"plan group {entry['name']!r}: 'kept' must be a list")
            entries.append(GroupPlan(entry["name"], entry["num_channels"], tuple(entry["kept"])))
        unpruned = data.get("unpruned", {})
        if not isinstance(unpruned, Mapping):
            raise ValueError("plan 'unpruned' must be an object {group: reason}")
        return cls(criterion=data["criterion"], groups=tuple(entries), unpruned=dict(unpruned))


def save_plan(plan: PrunePlan | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``plan`` (a :class:`PrunePlan` or its dict form) as JSON, atomically."""
    atomic_write_json(path, _as_plan(plan).to_dict())


def load_plan(path: str | os.PathLike[str]) -> PrunePlan:
    """Read and validate a plan written by :func:`save_plan`.

    Raises:
        ValueError: If the file is not valid JSON or not a valid plan (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    try:
        return PrunePlan.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def apply_plan(
    module: nn.Module, plan: PrunePlan | Mapping[str, Any], example_inputs: ExampleInputs
) -> nn.Module:
    """Rebuild a pruned architecture from the original one.

    Args:
        module: A model with the original architecture (left untouched; weights are copied
            into the pruned model, so load the pruned ``state_dict`` into the result).
        plan: A :class:`PrunePlan` or its dict form.
        example_inputs: Inputs to trace ``module`` with (as for ``prune_model``).

    Returns:
        A new, pruned module.

    Raises:
        ValueError: If the plan does not fit the model (unknown group, channel count or index
            out of range, tied channels split apart).
    """
    plan = _as_plan(plan)
    pruned = copy.deepcopy(module)
    apply_to_groups(GroupSet(pruned, example_inputs), plan)
    return pruned


def compose_plans(
    first: PrunePlan | Mapping[str, Any], second: PrunePlan | Mapping[str, Any]
) -> PrunePlan:
    """One plan for pruning with ``first`` and then pruning the result with ``second``.

    ``second``'s indices refer to the model ``first`` produced; the composed plan's refer to the
    original architecture, so ``apply_plan(original, composed)`` rebuilds the twice-pruned model.

    Raises:
        ValueError: If ``second`` does not fit the channel counts ``first`` leaves.
    """
    first, second = _as_plan(first), _as_plan(second)
    merged = {g.name: g for g in first.groups}
    for entry in second.groups:
        before = merged.get(entry.name)
        if before is None:
            merged[entry.name] = entry
            continue
        if entry.num_channels != len(before.kept):
            raise ValueError(
                f"group {entry.name!r} has {entry.num_channels} channels in the second plan but "
                f"the first plan keeps {len(before.kept)}: plans do not chain"
            )
        kept = tuple(before.kept[i] for i in entry.kept)
        merged[entry.name] = GroupPlan(entry.name, before.num_channels, kept)
    same = first.criterion == second.criterion
    criterion = first.criterion if same else f"{first.criterion}+{second.criterion}"
    unpruned = {**first.unpruned, **second.unpruned}
    unpruned = {n: r for n, r in unpruned.items() if n not in merged}
    return PrunePlan(criterion=criterion, groups=tuple(merged.values()), unpruned=unpruned)


def apply_to_groups(groups: GroupSet, plan: PrunePlan) -> None:
    """Check every plan entry against ``groups``, then prune them in order and verify."""
    for entry in plan.groups:
        _check_entry(groups, entry)
    for entry in plan.groups:
        groups.remove(entry.name, entry.dropped)
    groups.verify()


def _check_entry(groups: GroupSet, entry: GroupPlan) -> None:
    group = groups.get(entry.name)
    if entry.num_channels != group.num_channels:
        raise ValueError(
            f"plan group {entry.name!r} has {entry.num_channels} channels but the model's has "
            f"{group.num_channels}: the plan was made for another architecture"
        )
    kept = set(entry.kept)
    lost = sorted(set(group.fixed) - kept)
    if lost:
        raise ValueError(
            f"plan group {entry.name!r} drops channels {lost[:8]} that must stay (coupled with "
            "another group or read with fixed bounds)"
        )
    for tie in group.ties:
        if 0 < len(kept.intersection(tie)) < len(tie):
            raise ValueError(
                f"plan group {entry.name!r} keeps only some of the tied channels {list(tie)} "
                "(grouped conv or chunk): keep or drop them together"
            )


def _as_plan(plan: PrunePlan | Mapping[str, Any]) -> PrunePlan:
    if isinstance(plan, PrunePlan):
        return plan
    if isinstance(plan, Mapping):
        return PrunePlan.from_dict(plan)
    raise TypeError(f"expected a PrunePlan or its dict form, got {type(plan).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
