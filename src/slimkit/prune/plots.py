"""Plots of sensitivity results: what a loss budget buys, and each group's loss curve.

matplotlib is imported only when a plot is drawn, and drawn on its Agg canvas (no display, no
change to the user's pyplot backend).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._utils import agg_figure

from .ratios import BudgetPruning, get_ratios_by_loss
from .sensitivity_file import as_sensitivities

__all__ = ["DEFAULT_BUDGETS", "budget_curve", "plot_budget_curve", "plot_group_curves"]

DEFAULT_BUDGETS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _save(fig: Any, save_path: str | os.PathLike[str]) -> None:
    path = Path(save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)


def budget_curve(
    sensitivities: Any,
    model: nn.Module,
    example_inputs: Any,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    *,
    ignore: Iterable[str | nn.Module] = (),
    criterion: str | None = None,
) -> dict[str, list[float]]:
    """Fractions of parameters and FLOPs that each ``eval_metric_loss`` budget prunes.

    Args:
        sensitivities: ``{group: {ratio: loss}}``, a loaded record or a sensitivity file path.
        model: The unpruned model the sensitivities were measured on.
        example_inputs: Inputs to trace the model and count MACs.
        budgets: The ``eval_metric_loss`` values, e.g. 0.05 .. 0.95.
        ignore: As for ``prune_model``.
        criterion: As for ``prune_model``; default: the record's criterion, else ``"l1"``.

    Returns:
        ``{"budgets": [...], "params_pruned": [...], "flops_pruned": [...]}`` (fractions).
    """
    prune_at = BudgetPruning(
        sensitivities, model, example_inputs, ignore=ignore, criterion=criterion
    )
    curve: dict[str, list[float]] = {"budgets": [], "params_pruned": [], "flops_pruned": []}
    for budget in budgets:
        _, params, flops = prune_at(budget)
        curve["budgets"].append(float(budget))
        curve["params_pruned"].append(params)
        curve["flops_pruned"].append(flops)
    return curve


def plot_budget_curve(
    sensitivities: Any,
    model: nn.Module,
    example_inputs: Any,
    save_path: str | os.PathLike[str],
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    *,
    ignore: Iterable[str | nn.Module] = (),
    criterion: str | None = None,
) -> dict[str, list[float]]:
    """Plot ``eval_metric_loss`` (x) against the fraction of parameters and FLOPs pruned (y).

    This is PaddleX's ``slim.visualize`` figure: it shows which budget to pass to ``train``.

    Args:
        sensitivities: As for :func:`budget_curve`.
        model: The unpruned model.
        example_inputs: Inputs to trace the model and count MACs.
        save_path: The image file to write (PNG by its suffix).
        budgets: The ``eval_metric_loss`` values on the x axis.
        ignore: As for ``prune_model``.
        criterion: As for ``prune_model``.

    Returns:
        The plotted values, as :func:`budget_curve` returns them.
    """
    curve = budget_curve(
        sensitivities, model, example_inputs, budgets, ignore=ignore, criterion=criterion
    )
    fig = agg_figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(curve["budgets"], curve["params_pruned"], "o-", label="parameters pruned")
    ax.plot(curve["budgets"], curve["flops_pruned"], "s-", label="FLOPs pruned")
    ax.set_xlabel("eval_metric_loss")
    ax.set_ylabel("fraction pruned")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("What each loss budget prunes")
    _save(fig, save_path)
    return curve


def plot_group_curves(
    sensitivities: Any,
    save_path: str | os.PathLike[str],
    eval_metric_loss: float = 0.05,
    *,
    max_curves: int = 12,
) -> dict[str, float]:
    """Plot every group's relative loss against its pruning ratio, marking the chosen ratios.

    With up to ``max_curves`` groups, one curve per group with the ratio
    :func:`get_ratios_by_loss` picks for ``eval_metric_loss`` marked on it; with more, a heat map
    (groups × ratios, green under the budget, red over it, grey not measured) with a marker at
    each group's chosen ratio.

    Args:
        sensitivities: ``{group: {ratio: loss}}``, a loaded record or a sensitivity file path.
        save_path: The image file to write (PNG by its suffix).
        eval_metric_loss: The budget whose chosen ratios are marked.
        max_curves: Most groups drawn as curves before switching to the heat map.

    Returns:
        The chosen ``{group: ratio}``.
    """
    losses = as_sensitivities(sensitivities)
    if not losses:
        raise ValueError("no groups to plot: the sensitivities are empty")
    chosen = get_ratios_by_loss(losses, eval_metric_loss)
    if len(losses) <= max_curves:
        fig = _curves(losses, chosen, eval_metric_loss)
    else:
        fig = _heatmap(losses, chosen, eval_metric_loss)
    _save(fig, save_path)
    return chosen


def _curves(
    losses: dict[str, dict[float, float | None]], chosen: dict[str, float], budget: float
) -> Any:
    fig = agg_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for i, (group, points) in enumerate(losses.items()):
        measured = sorted((r, v) for r, v in points.items() if v is not None)
        colour = f"C{i % 10}"
        ax.plot([r for r, _ in measured], [v for _, v in measured], ".-", color=colour, label=group)
        if group in chosen:
            ax.plot([chosen[group]], [budget], "*", color=colour, markersize=12)
    ax.axhline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("relative metric loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title("Sensitivity per group (★ ratio chosen for the budget)")
    return fig


def _heatmap(
    losses: dict[str, dict[float, float | None]], chosen: dict[str, float], budget: float
) -> Any:
    import matplotlib
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    groups = list(losses)
    ratios = sorted({r for points in losses.values() for r in points})
    grid = np.full((len(groups), len(ratios)), np.nan)
    for i, group in enumerate(groups):
        for j, r in enumerate(ratios):
            value = losses[group].get(r)
            grid[i, j] = np.nan if value is None else value
    finite = grid[np.isfinite(grid)]
    low = min(float(finite.min()) if finite.size else 0.0, 0.0, budget) - 1e-9
    high = max(min(float(finite.max()) if finite.size else 0.0, 1.0), 2 * budget) + 1e-9
    fig = agg_figure(1.2 + 0.55 * len(ratios) + 2.5, 1.5 + 0.2 * len(groups))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="lightgrey")
    norm = TwoSlopeNorm(vcenter=budget, vmin=low, vmax=high)
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm)
    rows = [i for i, g in enumerate(groups) if g in chosen]
    cols = [float(np.interp(chosen[groups[i]], ratios, np.arange(len(ratios)))) for i in rows]
    ax.scatter(cols, rows, marker="|", s=120, color="k", label=f"chosen for {budget:g}")
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(groups)), groups, fontsize="x-small")
    ax.set_xlabel("pruning ratio")
    ax.legend(loc="lower right", fontsize="x-small")
    fig.colorbar(image, ax=ax, label="relative metric loss")
    ax.set_title("Sensitivity per group")
    return fig
