"""Per-group pruning ratios chosen from sensitivities: under a loss budget, or for a FLOPs target.

The sensitivity file format itself (load, write, resume, merge) lives in
:mod:`slimkit.prune.sensitivity_file`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

from torch import nn

from .counting import count_macs, count_params
from .groups import IgnoreSpec
from .pruner import prune_model
from .sensitivity_file import as_sensitivities, check_criterion, load_sensitivities

__all__ = ["BudgetPruning", "get_ratios_by_loss", "ratios_for_flops"]


def _largest_ratio(losses: dict[float, float | None], budget: float) -> float | None:
    """PaddleSlim's rule for one group (see :func:`get_ratios_by_loss`)."""
    points = sorted((r, math.inf if v is None else v) for r, v in losses.items())
    for i in range(len(points) - 1, -1, -1):
        r0, l0 = points[i]
        if l0 <= budget:  # False for NaN
            if i == len(points) - 1 or not math.isfinite(points[i + 1][1]):
                return r0
            r1, l1 = points[i + 1]
            return r0 + (budget - l0) * (r1 - r0) / (l1 - l0)
    return None


def _record(sensitivities: Any) -> Any:
    """A path loaded into its record; anything else as given."""
    if isinstance(sensitivities, (str, os.PathLike)):
        return load_sensitivities(sensitivities)
    return sensitivities


def get_ratios_by_loss(
    sensitivities: Any, eval_metric_loss: float, *, criterion: str | Any | None = None
) -> dict[str, float]:
    """Per group, the largest pruning ratio whose relative loss stays within the budget.

    As PaddleSlim: the largest measured ratio with ``loss <= eval_metric_loss`` is found; if a
    larger ratio was measured, the result is interpolated linearly between that point and the next
    one (which is over budget). Points that were not measured (``None``, skipped by ``loss_cap``)
    count as over any budget and are never interpolated towards: the last measured ratio within
    budget is taken. A group already over budget at its smallest ratio is not pruned (omitted).
    Each group's loss is measured alone, so the combined loss of all chosen ratios is usually larger
    than the budget; fine-tuning recovers it.

    Args:
        sensitivities: ``{group: {ratio: loss}}``, a record from :func:`load_sensitivities` or
            :func:`merge_sensitivities`, or the path of a sensitivity file.
        eval_metric_loss: The relative loss budget, e.g. ``0.05``.
        criterion: The criterion the ratios will be pruned with; a record (or file) analysed
            with another one is an error. ``None``: not checked.

    Returns:
        ``{group: ratio}`` for the groups that can be pruned within the budget.

    Raises:
        TypeError: ``sensitivities`` or ``eval_metric_loss`` has the wrong type.
        ValueError: A negative or non-finite budget, a value the sensitivities cannot hold
            (NaN, a ratio outside (0, 1), ...), or another criterion than the record's.
    """
    if isinstance(eval_metric_loss, bool) or not isinstance(eval_metric_loss, (int, float)):
        raise TypeError(f"eval_metric_loss must be a number such as 0.05, got {eval_metric_loss!r}")
    if not math.isfinite(eval_metric_loss) or eval_metric_loss < 0:
        raise ValueError(
            f"eval_metric_loss must be a finite value >= 0 such as 0.05, got {eval_metric_loss}"
        )
    sensitivities = _record(sensitivities)
    if criterion is not None and isinstance(sensitivities, dict):
        check_criterion(sensitivities, criterion)
    ratios = {}
    for group, losses in as_sensitivities(sensitivities).items():
        ratio = _largest_ratio(losses, float(eval_metric_loss))
        if ratio is not None:
            ratios[group] = ratio
    return ratios


class BudgetPruning:
    """What a loss budget prunes: the ratios it picks and the fractions of params and FLOPs removed.

    Calling it with a budget runs :func:`get_ratios_by_loss`, prunes a copy of ``model`` at those
    ratios and counts it; each distinct set of ratios is pruned and counted once.
    """

    def __init__(
        self,
        sensitivities: Any,
        model: nn.Module,
        example_inputs: Any,
        *,
        ignore: IgnoreSpec = (),
        criterion: str | None = None,
    ) -> None:
        """Args as for :func:`ratios_for_flops`; ``criterion=None``: the record's, else ``"l1"``;
        another criterion than the record's is a ``ValueError``."""
        sensitivities = _record(sensitivities)
        if isinstance(sensitivities, dict) and "format" in sensitivities:
            if criterion is None:
                criterion = sensitivities.get("criterion")
            check_criterion(sensitivities, criterion)
        self.criterion = criterion or "l1"
        self.losses = as_sensitivities(sensitivities)
        self.model, self.example_inputs, self.ignore = model, example_inputs, ignore
        self._base = (count_params(model), count_macs(model, example_inputs))
        self._seen: dict[tuple[tuple[str, float], ...], tuple[float, float]] = {}

    def __call__(self, budget: float) -> tuple[dict[str, float], float, float]:
        """``(ratios, params pruned, FLOPs pruned)`` for ``eval_metric_loss=budget``."""
        ratios = {g: r for g, r in get_ratios_by_loss(self.losses, budget).items() if r > 0}
        key = tuple(sorted(ratios.items()))
        if key not in self._seen:
            sizes = (0.0, 0.0)
            if ratios:
                pruned = prune_model(
                    self.model, ratios, self.example_inputs, self.ignore, self.criterion
                )
                params, macs = count_params(pruned), count_macs(pruned, self.example_inputs)
                sizes = (1 - params / self._base[0], 1 - macs / self._base[1])
            self._seen[key] = sizes
        return ratios, *self._seen[key]


def ratios_for_flops(
    sensitivities: Any,
    model: nn.Module,
    example_inputs: Any,
    pruned_flops: float = 0.5,
    *,
    ignore: Iterable[str | nn.Module] = (),
    criterion: str | None = None,
    tolerance: float = 0.01,
    max_iters: int = 25,
) -> dict[str, float]:
    """The ratios of the loss budget that removes ``pruned_flops`` of the model's FLOPs.

    Binary-searches ``eval_metric_loss`` for :func:`get_ratios_by_loss`, measuring each candidate
    with ``prune_model`` + ``count_macs``, until the FLOPs reduction is within ``tolerance`` of the
    target; otherwise returns the smallest budget found that reaches at least the target.

    Args:
        sensitivities: As for :func:`get_ratios_by_loss`.
        model: The unpruned model the sensitivities were measured on.
        example_inputs: Inputs to trace the model and count MACs.
        pruned_flops: Fraction of FLOPs to remove, in (0, 1).
        ignore: As for ``prune_model``.
        criterion: As for ``prune_model``; default: the record's criterion, else ``"l1"``
            (another one than the record's is an error).
        tolerance: Accepted absolute difference between achieved and asked reduction.
        max_iters: Most bisection steps.

    Returns:
        ``{group: ratio}`` (groups not pruned omitted).

    Raises:
        ValueError: ``pruned_flops`` is not in (0, 1), or the measured ratios cannot reach it.
    """
    if not 0 < pruned_flops < 1:
        raise ValueError(
            f"pruned_flops must be a fraction in (0, 1) such as 0.5, got {pruned_flops}"
        )
    prune_at = BudgetPruning(
        sensitivities, model, example_inputs, ignore=ignore, criterion=criterion
    )
    finite = [
        v
        for g in prune_at.losses.values()
        for v in g.values()
        if v is not None and math.isfinite(v)
    ]
    lo, hi = 0.0, max(0.0, *finite)
    best_ratios, _, best = prune_at(hi)
    if best < pruned_flops - tolerance:
        raise ValueError(
            f"pruning every group at its largest measured ratio removes {best:.1%} of the "
            f"FLOPs, less than the {pruned_flops:.1%} asked; lower pruned_flops or analyse "
            "larger ratios"
        )
    for _ in range(max_iters):
        mid = (lo + hi) / 2
        ratios, _, reduction = prune_at(mid)
        if abs(reduction - pruned_flops) <= tolerance:
            return ratios
        if reduction < pruned_flops:
            lo = mid
        else:
            hi, best_ratios = mid, ratios
    return best_ratios
