"""Pruning for the task API: sensitivity files (method 1/2) → per-group ratios → a pruned net.

This module works on plain pieces (a net, its plan, a sensitivity key) so that it sits below
:mod:`slimkit.tasks.base`; ``BaseTask.prune`` is the one path that ``train``, ``slim.prune`` and the
CLI use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def ratios_within_loss(
    path: Path, eval_metric_loss: float, key: str, architecture: str
) -> dict[str, float]:
    """Per-group ratios whose recorded relative loss stays within ``eval_metric_loss`` (> 0 only).

    Raises:
        ValueError: the budget is outside (0, 1) or the file was computed for another model.
    """
    # slimkit.prune imports torch-pruning (heavy): loaded only when pruning runs, so that
    # `import slimkit` stays light (tests/quant/test_quant_api.py checks it)
    from slimkit.prune import get_ratios_by_loss, load_sensitivities

    if not 0 < eval_metric_loss < 1:
        raise ValueError(f"eval_metric_loss must be in (0, 1), got {eval_metric_loss}")
    sens = load_sensitivities(path)
    if sens.get("architecture") not in (None, key, architecture):
        raise ValueError(
            f"{str(path)!r} was computed for {sens['architecture']!r}, this model is "
            f"{key!r}; run the sensitivity analysis on this model"
        )
    ratios = get_ratios_by_loss(sens, eval_metric_loss)
    return {g: r for g, r in ratios.items() if r > 0}


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
    from slimkit.prune import compose_plans, prune_model  # heavy, see above
    from slimkit.prune.counting import count_flops, count_params, format_count

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
    summary = ", ".join(
        f"{name} {format_count(b)} -> {format_count(a)} ({a / b:.1%})"
        for name, b, a in (("params", before[0], after[0]), ("FLOPs", before[1], after[1]))
    )
    return pruned, plan, summary
