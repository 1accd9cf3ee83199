"""Choosing ratios from sensitivities (hand-computed), FLOPs targets, and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.prune import prunable_groups
from slimkit.prune.counting import count_macs
from slimkit.prune.plots import plot_budget_curve, plot_group_curves
from slimkit.prune.pruner import prune_model
from slimkit.prune.ratios import get_ratios_by_loss, ratios_for_flops
from slimkit.prune.sensitivity_file import FORMAT, load_sensitivities, merge_sensitivities

SENS = {
    "a": {0.1: 0.0, 0.2: 0.02, 0.3: 0.08},  # interpolated between 0.2 and 0.3
    "b": {0.1: 0.001, 0.2: 0.01, 0.3: 0.04},  # all within budget: the largest ratio
    "c": {0.1: 0.2, 0.2: 0.5},  # over budget at the smallest ratio: not pruned
    "d": {0.1: 0.1, 0.2: 0.01, 0.3: 0.2},  # not monotone: the largest ratio within budget wins
    "e": {0.1: 0.01, 0.2: 0.03, 0.3: None},  # 0.3 skipped (loss_cap): over budget, no interpolation
    "f": {0.2: 0.05, 0.1: 0.0, 0.3: 0.09},  # exactly on budget (unsorted keys)
}


def test_get_ratios_by_loss_hand_computed() -> None:
    ratios = get_ratios_by_loss(SENS, 0.05)
    assert set(ratios) == {"a", "b", "d", "e", "f"}
    assert ratios["a"] == pytest.approx(0.2 + (0.05 - 0.02) * 0.1 / (0.08 - 0.02))  # 0.25
    assert ratios["b"] == 0.3
    assert ratios["d"] == pytest.approx(0.2 + (0.05 - 0.01) * 0.1 / (0.2 - 0.01))
    assert ratios["e"] == 0.2
    assert ratios["f"] == pytest.approx(0.2)
    assert get_ratios_by_loss(SENS, 0.0) == {"a": 0.1, "f": 0.1}
    everything = get_ratios_by_loss(SENS, 10.0)
    assert everything == {"a": 0.3, "b": 0.3, "c": 0.2, "d": 0.3, "e": 0.2, "f": 0.3}


def test_get_ratios_by_loss_accepts_records_files_and_string_keys(tmp_path: Path) -> None:
    as_json = {g: {f"{r:g}": v for r, v in losses.items()} for g, losses in SENS.items()}
    record = {
        "format": FORMAT,
        "version": 1,
        "architecture": "Net",
        "fingerprint": "sha256:x",
        "metric": "acc1",
        "baseline": 0.9,
        "ratios": [0.1, 0.2, 0.3],
        "criterion": "l1",
        "sensitivities": as_json,
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(record))
    expected = get_ratios_by_loss(SENS, 0.05)
    assert get_ratios_by_loss(as_json, 0.05) == pytest.approx(expected)
    assert get_ratios_by_loss(record, 0.05) == pytest.approx(expected)
    assert get_ratios_by_loss(path, 0.05) == pytest.approx(expected)
    assert get_ratios_by_loss(str(path), 0.05) == pytest.approx(expected)
    loaded = load_sensitivities(path)
    assert loaded["sensitivities"]["e"] == {0.1: 0.01, 0.2: 0.03, 0.3: None}
    assert get_ratios_by_loss(loaded, 0.05) == pytest.approx(expected)
    assert merge_sensitivities([path])["sensitivities"] == loaded["sensitivities"]


def test_get_ratios_by_loss_rejects_bad_budgets() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        get_ratios_by_loss(SENS, -0.1)
    with pytest.raises(TypeError, match="number"):
        get_ratios_by_loss(SENS, "0.05")
    with pytest.raises(TypeError, match="sensitivities must be"):
        get_ratios_by_loss([1, 2], 0.05)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()


def synthetic_sensitivities(model: nn.Module, x: torch.Tensor) -> dict:
    """Loss grows linearly with the ratio, at a different slope per group."""
    groups = prunable_groups(model, x)
    assert len(groups) >= 2
    ratios = [round(0.1 * k, 1) for k in range(1, 10)]
    return {g: {r: r * (0.2 + 0.3 * i) for r in ratios} for i, g in enumerate(groups)}


def flops_reduction(model: nn.Module, ratios: dict, x: torch.Tensor) -> float:
    return 1 - count_macs(prune_model(model, ratios, x), x) / count_macs(model, x)


@pytest.mark.parametrize("target", [0.2, 0.4, 0.45])
def test_ratios_for_flops_reaches_the_target(target: float) -> None:
    model, x = net(), torch.randn(1, 3, 8, 8)
    sens = synthetic_sensitivities(model, x)
    ratios = ratios_for_flops(sens, model, x, pruned_flops=target, tolerance=0.02)
    reduction = flops_reduction(model, ratios, x)
    assert abs(reduction - target) <= 0.02, (reduction, ratios)


def test_ratios_for_flops_in_a_gap_and_out_of_reach() -> None:
    model, x = net(), torch.randn(1, 3, 8, 8)
    sens = synthetic_sensitivities(model, x)
    # the last group enters at its smallest ratio (0.1, loss 0.08): 27% -> 35% in one step
    ratios = ratios_for_flops(sens, model, x, pruned_flops=0.3, tolerance=0.01)
    assert 0.3 <= flops_reduction(model, ratios, x) <= 0.36
    with pytest.raises(ValueError, match="lower pruned_flops"):
        ratios_for_flops(sens, model, x, pruned_flops=0.999, tolerance=0.0001)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ratios_for_flops(sens, model, x, pruned_flops=1.5)


def test_plots_write_pngs(tmp_path: Path) -> None:
    model, x = net(), torch.randn(1, 3, 8, 8)
    sens = synthetic_sensitivities(model, x)
    sens[next(iter(sens))][0.9] = None  # a skipped point is drawn as missing
    curve = plot_budget_curve(sens, model, x, tmp_path / "budget.png", budgets=(0.05, 0.1, 0.3))
    assert curve["budgets"] == [0.05, 0.1, 0.3]
    for key in ("params_pruned", "flops_pruned"):
        values = curve[key]
        assert values == sorted(values) and 0 < values[-1] < 1
    chosen = plot_group_curves(sens, tmp_path / "curves.png", eval_metric_loss=0.05)
    assert chosen == get_ratios_by_loss(sens, 0.05)
    plot_group_curves(sens, tmp_path / "sub" / "heat.png", eval_metric_loss=0.05, max_curves=1)
    for name in ("budget.png", "curves.png", "sub/heat.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000, name
    with pytest.raises(ValueError, match="empty"):
        plot_group_curves({}, tmp_path / "none.png")
