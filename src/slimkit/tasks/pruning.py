"""Pruning for the task API: sensitivity files (method 1/2) → per-group ratios → a pruned net.

This module works on plain pieces (a net, its plan, a sensitivity key) so that it sits below
:mod:`slimkit.tasks.base`; ``BaseTask.prune`` is the one path that ``train``, ``slim.prune`` and the
CLI use. How the ratios are chosen from a sensitivity file (budget-true, per group, or for a FLOPs
target) is :mod:`slimkit.tasks.budget`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT = "DEFAULT"


def default_sensitivities_path(key: str) -> Path:
    """The built-in sensitivity file shipped for a model's sensitivity key (e.g. ``unet_c16``).

    Raises:
        ValueError: none ships for this key (lists the ones that do).
    """
    root = Path(str(resources.files("slimkit") / "sensitivities"))
    path = root / f"{key}.json"
    if not path.is_file():
        shipped = sorted(p.name for p in root.glob("*.json")) if root.is_dir() else []
        raise ValueError(
            f"no built-in (DEFAULT) sensitivities for {key!r}; shipped: {shipped or 'none'}. "
            "Compute your own with slim.analysis(...) / `slimkit analyze` and pass that file"
        )
    return path


def resolve_sensitivities(key: str, sensitivities_file: str | os.PathLike[str]) -> Path:
    """``"DEFAULT"`` → the built-in file for ``key``; otherwise the given path, which must exist."""
    if str(sensitivities_file) == DEFAULT:
        return default_sensitivities_path(key)
    path = Path(sensitivities_file)
    if not path.is_file():
        raise ValueError(f"sensitivities file {str(path)!r} not found")
    return path


def load_model_sensitivities(path: Path, key: str, architecture: str) -> dict[str, Any]:
    """The sensitivity record of ``path``, checked to belong to this model.

    Raises:
        ValueError: the file is invalid or was computed for another model.
    """
    # slimkit.prune imports torch-pruning (heavy): loaded only when pruning runs, so that
    # `import slimkit` stays light (tests/quant/test_quant_api.py checks it)
    from slimkit.prune import load_sensitivities

    sens = load_sensitivities(path)
    if sens.get("architecture") not in (None, key, architecture):
        raise ValueError(
            f"{str(path)!r} was computed for {sens['architecture']!r}, this model is "
            f"{key!r}; run the sensitivity analysis on this model"
        )
    return sens


def check_budget(eval_metric_loss: float) -> None:
    """``eval_metric_loss`` must be a number in (0, 1)."""
    if isinstance(eval_metric_loss, bool) or not isinstance(eval_metric_loss, (int, float)):
        raise TypeError(f"eval_metric_loss must be a number such as 0.05, got {eval_metric_loss!r}")
    if not 0 < eval_metric_loss < 1:
        raise ValueError(f"eval_metric_loss must be in (0, 1), got {eval_metric_loss}")


def ratios_at(sens: dict[str, Any], budget: float) -> dict[str, float]:
    """``get_ratios_by_loss(sens, budget)`` without the groups it leaves unpruned."""
    from slimkit.prune import get_ratios_by_loss  # heavy, see above

    return {g: r for g, r in get_ratios_by_loss(sens, max(budget, 0.0)).items() if r > 0}


def loss_at(losses: Mapping[float, float | None], ratio: float) -> float:
    """A group's relative loss at ``ratio``, linear between its measured points ((0, 0) included).

    Unmeasured points (``None``) are skipped; beyond the last measured ratio the last loss holds.
    """
    points = sorted((float(r), float(v)) for r, v in losses.items() if v is not None)
    points = [(0.0, 0.0)] + [p for p in points if p[0] > 0]
    for (r0, l0), (r1, l1) in zip(points, points[1:], strict=False):
        if r0 <= ratio <= r1:
            return l0 if r1 == r0 else l0 + (ratio - r0) * (l1 - l0) / (r1 - r0)
    return points[-1][1]


def predicted_losses(sens: dict[str, Any], ratios: Mapping[str, float]) -> tuple[float, float]:
    """``(sum, max)`` over the pruned groups of each group's recorded loss at its ratio.

    The sum is the additive prediction of the combined model's loss (each group measured alone);
    the max is what ``per_group`` guarantees (at most the budget).
    """
    table = sens["sensitivities"]
    values = [loss_at(table[g], r) for g, r in ratios.items() if g in table]
    return float(sum(values)), float(max(values, default=0.0))


def relative_loss(baseline: float | None, value: float | None) -> float | None:
    """``(baseline - value) / baseline``, or None when either is unknown."""
    if baseline is None or value is None or not baseline > 0:
        return None
    return (baseline - value) / baseline


# -------------------------------------------------------------------------------- pruned nets
def prune_counted(
    net: nn.Module,
    ratios: float | Mapping[str, float],
    example_inputs: torch.Tensor,
    previous_plan: Any,
    criterion: str,
    round_to: int | None,
    verify: bool = False,
) -> tuple[nn.Module, Any, tuple[int, int], tuple[int, int]]:
    """Pruned net, composed plan, and (params, FLOPs) before and after.

    ``verify=True`` makes a mismatch with the masked original an error (see ``prune_model``).
    """
    from slimkit.prune import compose_plans, prune_model  # heavy, see above
    from slimkit.prune.counting import count_flops, count_params

    before = count_params(net), count_flops(net, example_inputs)
    requested = dict(ratios) if isinstance(ratios, Mapping) else ratios
    pruned, plan = prune_model(
        net,
        requested,
        example_inputs,
        criterion=criterion,
        round_to=round_to,
        return_plan=True,
        verify=verify,
    )
    if previous_plan is not None:
        plan = compose_plans(previous_plan, plan)
    after = count_params(pruned), count_flops(pruned, example_inputs)
    return pruned, plan, before, after


def _summary(before: tuple[int, int], after: tuple[int, int]) -> str:
    from slimkit.prune.counting import format_count  # heavy, see above

    return ", ".join(
        f"{name} {format_count(b)} -> {format_count(a)} ({a / b:.1%})"
        for name, b, a in zip(("params", "FLOPs"), before, after, strict=True)
    )


def prune_net(
    net: nn.Module,
    ratios: float | Mapping[str, float],
    example_inputs: torch.Tensor,
    previous_plan: Any = None,
    criterion: str = "l1",
    round_to: int | None = 8,
    verify: bool = False,
) -> tuple[nn.Module, Any, str]:
    """Physically prune ``net``; a net pruned before keeps both plans, applied in order.

    ``verify=True`` makes a mismatch with the masked original an error (see ``prune_model``).

    Returns:
        The pruned net, its plan (composed with ``previous_plan``) and a one-line summary of
        params and FLOPs before and after.
    """
    pruned, plan, before, after = prune_counted(
        net, ratios, example_inputs, previous_plan, criterion, round_to
    )
    return pruned, plan, _summary(before, after)


@dataclass
class Candidate:
    """One pruning of the net: its ratios, the pruned net and plan, sizes, and (once) its metrics."""

    ratios: dict[str, float]
    net: nn.Module
    plan: Any
    before: tuple[int, int]
    after: tuple[int, int]
    metrics: dict[str, float] | None = None
    probed: dict[str, float] | None = None  # metrics after a short fine-tune (budget.py's probe)

    @property
    def flops_kept(self) -> float:
        return self.after[1] / self.before[1] if self.before[1] else 1.0

    @property
    def params_kept(self) -> float:
        return self.after[0] / self.before[0] if self.before[0] else 1.0

    @property
    def summary(self) -> str:
        return _summary(self.before, self.after)
