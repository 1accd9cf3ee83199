"""The masked reference (slimkit.prune.verify) against hand-built pruned models, the self-check
in prune_model (verify=True), and no raw Python error escaping from the dependency code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from coupling_check import outputs, randomize_norms
from pattern_models import ConvNeXtLike, LayerNorm2d, cbr
from torch import nn

import slimkit.prune._shape_rules as shape_rules
import slimkit.prune._traverse as traverse
from slimkit.prune import (
    UnprunedGroupsWarning,
    channel_groups,
    compare_pruned,
    masked_model,
    prunable_groups,
    prune_model,
)
from slimkit.prune.plan import GroupPlan, PrunePlan

X = torch.randn(2, 3, 8, 8)


class Chain(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.norm(self.conv1(x))))


def by_hand(model: Chain, keep: list[int], norm: nn.Module) -> Chain:
    """The same network with only channels ``keep`` of conv1, built with index_select."""
    small = Chain(norm)
    small.conv1 = nn.Conv2d(3, len(keep), 3, padding=1)
    small.conv2 = nn.Conv2d(len(keep), 4, 1)
    index = torch.tensor(keep)
    with torch.no_grad():
        small.conv1.weight.copy_(model.conv1.weight[index])
        small.conv1.bias.copy_(model.conv1.bias[index])
        small.conv2.weight.copy_(model.conv2.weight[:, index])
        small.conv2.bias.copy_(model.conv2.bias)
        for name in ("weight", "bias", "running_mean", "running_var"):
            if isinstance(getattr(model.norm, name, None), torch.Tensor):
                getattr(small.norm, name).copy_(getattr(model.norm, name)[index])
    return small.eval()


@pytest.mark.parametrize(
    ("norm", "small_norm", "keep"),
    [
        (nn.BatchNorm2d(8), nn.BatchNorm2d(5), [0, 2, 3, 5, 7]),
        (LayerNorm2d(8), LayerNorm2d(3), [1, 4, 6]),  # statistics over the kept channels
        (nn.GroupNorm(2, 8), nn.GroupNorm(2, 6), [0, 1, 3, 4, 5, 7]),  # 3 per group
    ],
    ids=["batchnorm", "layernorm2d", "groupnorm"],
)
def test_masked_model_equals_a_network_pruned_by_hand(
    norm: nn.Module, small_norm: nn.Module, keep: list[int]
) -> None:
    model = randomize_norms(Chain(norm))
    group = channel_groups(model, X)[0]
    plan = PrunePlan("test", (GroupPlan("conv1", 8, tuple(keep)),))
    masked = masked_model(model, [group], plan)
    torch.testing.assert_close(
        outputs(masked, X)[0], outputs(by_hand(model, keep, small_norm), X)[0]
    )
    assert model.conv1.weight.abs().min() > 0  # the original is untouched


def test_compare_pruned_reports_shape_changes_as_infinite() -> None:
    model = randomize_norms(Chain(nn.BatchNorm2d(8)))
    group = channel_groups(model, X)[0]
    plan = PrunePlan("test", (GroupPlan("conv1", 8, (0, 1)),))
    assert compare_pruned(model, [group], nn.Conv2d(3, 2, 1), plan, X) == float("inf")


def wrong_concat_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a coupling bug: every concat input is mapped to offset 0."""
    original = shape_rules.Concat.in_map

    def in_map(self, op, dims, slot):  # type: ignore[no-untyped-def]
        mapping = original(self, op, dims, slot)
        return None if mapping is None else shape_rules.Spread(0, mapping.stop - mapping.start)

    monkeypatch.setattr(shape_rules.Concat, "in_map", in_map)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 4), cbr(3, 4)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


def test_a_wrong_coupling_is_caught_by_the_self_check(monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomize_norms(Concat())
    assert prunable_groups(model, X) == ["a.0", "b.0"]
    wrong_concat_offsets(monkeypatch)  # now a.0 reaches b's channels too, at the wrong places
    with pytest.warns(UnprunedGroupsWarning, match="a.0: pruning it breaks the model"):
        assert prunable_groups(model, X) == []
    with pytest.warns(UnprunedGroupsWarning, match="a.0"):
        pruned, plan = prune_model(model, 0.5, X, return_plan=True)
    assert list(plan.unpruned) == ["a.0"] and pruned.a[0].out_channels == 4
    with pytest.raises(ValueError, match="masked-vs-pruned self-check: a.0: "):
        prune_model(model, 0.5, X, verify=True)


def test_verify_true_passes_on_a_correct_pruning() -> None:
    model = randomize_norms(ConvNeXtLike())
    pruned, plan = prune_model(model, 0.6, torch.randn(2, 3, 16, 16), verify=True, return_plan=True)
    assert len(plan.groups) == 4 and not plan.unpruned


def test_raw_errors_from_the_graph_code_never_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    model = randomize_norms(Concat())

    def broken(i: int, block: object) -> list[int]:
        raise ZeroDivisionError("integer division by zero")

    monkeypatch.setattr(traverse, "_expand", broken)
    with pytest.warns(
        UnprunedGroupsWarning, match="a.0: following the channels .*ZeroDivisionError"
    ):
        assert prunable_groups(model, X) == []
    with pytest.warns(UnprunedGroupsWarning):
        pruned = prune_model(model, 0.5, X)
    assert outputs(pruned, X)[0].shape == outputs(model, X)[0].shape
    with pytest.raises(ValueError, match="group 'a.0' cannot be pruned: .*ZeroDivisionError"):
        prune_model(model, {"a.0": 0.5}, X)


def test_a_broken_rule_is_reported_as_a_slimkit_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, op):  # type: ignore[no-untyped-def]
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(shape_rules.Concat, "forward", broken)
    with pytest.raises(ValueError, match="could not read the model's graph .*IndexError.*report"):
        prune_model(Concat(), 0.5, X)
