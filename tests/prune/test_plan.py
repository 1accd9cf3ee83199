"""Pruning plans: JSON round trip, rebuilding from the architecture, validation, composition."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from coupling_check import outputs, randomize_norms
from torch import nn

from slimkit.models import create_model
from slimkit.prune import apply_plan, compose_plans, load_plan, prune_model, save_plan
from slimkit.prune.plan import GroupPlan, PrunePlan

X = torch.randn(2, 3, 32, 32)


def small_model() -> nn.Module:
    return randomize_norms(create_model("mobilenetv2", num_classes=4, width_mult=0.25))


def test_json_round_trip_rebuilds_an_identical_model(tmp_path: Path) -> None:
    model = small_model()
    pruned, plan = prune_model(model, 0.5, X, criterion="fpgm", round_to=4, return_plan=True)
    save_plan(plan, tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())  # plain JSON, no pickle
    assert data["format"] == "slimkit.prune_plan" and data["criterion"] == "fpgm"
    loaded = load_plan(tmp_path / "plan.json")
    assert loaded == plan
    fresh = create_model("mobilenetv2", num_classes=4, width_mult=0.25)  # other weights
    rebuilt = apply_plan(fresh, loaded, X)
    rebuilt.load_state_dict(pruned.state_dict())
    for got, want in zip(outputs(rebuilt.eval(), X), outputs(pruned.eval(), X), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert apply_plan(fresh, plan.to_dict(), X).state_dict().keys() == pruned.state_dict().keys()


def test_plan_lists_kept_channels_per_group_in_module_order() -> None:
    model = small_model()
    pruned, plan = prune_model(
        model, {"blocks.3.conv_pw": 0.25, "stem.conv": 0.5}, X, return_plan=True
    )
    assert [g.name for g in plan.groups] == ["stem.conv", "blocks.3.conv_pw"]
    stem, block = plan.groups
    assert (stem.num_channels, len(stem.kept)) == (8, 4)
    assert len(block.kept) == block.num_channels - round(block.num_channels * 0.25)
    assert pruned.stem.conv.out_channels == 4
    weights = model.stem.conv.weight.abs().sum(dim=(1, 2, 3))
    assert set(stem.kept) == set(weights.argsort(descending=True)[:4].tolist())  # L1 default


def test_composed_plans_rebuild_a_twice_pruned_model() -> None:
    model = small_model()
    once, first = prune_model(model, 0.5, X, return_plan=True)
    twice, second = prune_model(
        once, {"stem.conv": 0.5, "blocks.1.conv_pw": 0.3}, X, return_plan=True
    )
    composed = compose_plans(first, second)
    rebuilt = apply_plan(model, composed, X)
    for got, want in zip(outputs(rebuilt, X), outputs(twice, X), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="do not chain"):
        compose_plans(second, first)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a slimkit pruning plan"),
        (lambda d: d.update(version=99), "unsupported plan version"),
        (lambda d: d["groups"][0].update(kept=[0, 99]), "out of range"),
        (lambda d: d["groups"][0].update(kept=[3, 1]), "sorted"),
        (lambda d: d["groups"][0].update(kept=[]), "non-empty"),
        (lambda d: d["groups"][0].pop("num_channels"), "exactly"),
        (lambda d: d["groups"].append(dict(d["groups"][0])), "more than once"),
    ],
)
def test_load_rejects_corrupt_plans(
    tmp_path: Path, mutate: Callable[[dict], object], message: str
) -> None:
    data = {
        "format": "slimkit.prune_plan",
        "version": 1,
        "criterion": "l1",
        "groups": [{"name": "stem.conv", "num_channels": 8, "kept": [0, 1, 2]}],
    }
    mutate(data)
    with pytest.raises(ValueError, match=message):
        load_plan(write(tmp_path, data))


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        load_plan(write(tmp_path, "{not json"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (GroupPlan("stem.cnv", 8, (0, 1)), "unknown group 'stem.cnv'.*Did you mean 'stem.conv'"),
        (GroupPlan("classifier", 4, (0, 1)), "cannot be pruned.*ignore"),
        (GroupPlan("stem.conv", 16, (0, 1)), "another architecture"),
    ],
)
def test_apply_rejects_plans_that_do_not_fit(entry: GroupPlan, message: str) -> None:
    model = small_model()
    with pytest.raises(ValueError, match=message):
        apply_plan(model, PrunePlan("l1", (entry,)), X)


def test_apply_rejects_splitting_tied_channels() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.grouped(torch.relu(self.conv(x)))))

    plan = PrunePlan("l1", (GroupPlan("conv", 8, (0, 1, 2, 4, 5, 6)),))
    assert apply_plan(Grouped(), plan, X).grouped.in_channels == 6  # 3 and 7 are tied
    with pytest.raises(ValueError, match="tied channels"):
        apply_plan(Grouped(), PrunePlan("l1", (GroupPlan("conv", 8, (0, 1, 2, 3, 4, 5)),)), X)
