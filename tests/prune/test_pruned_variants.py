"""GroupSet.pruned: one trace, many (group, channels) variants, each equal to prune_model's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from slimkit.models import create_model
from slimkit.prune.criteria import get_criterion
from slimkit.prune.groups import GroupSet
from slimkit.prune.pruner import prune_model, select_channels


class ParamScale(nn.Module):
    """A bare per-channel parameter between two convs, and a chunk into two halves."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.b = nn.Conv2d(4, 6, 1)
        self.c = nn.Conv2d(4, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)
        self.prune_ignore = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = (self.a(x) * self.scale).relu().chunk(2, dim=1)
        return self.head(self.b(left) + self.c(right))


def same(a: object, b: object) -> bool:
    leaves_a, leaves_b = tree_leaves(a), tree_leaves(b)
    return len(leaves_a) == len(leaves_b) and all(map(torch.equal, leaves_a, leaves_b))


def models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        ("mobilenetv2", create_model("mobilenetv2", num_classes=3, width_mult=0.25), 32),
        ("unet", create_model("unet", num_classes=2, base_channels=4, depth=2), 16),
        (
            "yolov3",
            create_model("yolov3_mobilenetv1", num_classes=2, width_mult=0.25, input_size=(64, 64)),
            64,
        ),
        ("param_chunk", ParamScale(), 8),
    ]


@pytest.mark.parametrize("name, model, size", models(), ids=[m[0] for m in models()])
def test_variants_equal_prune_model_and_restore(name: str, model: nn.Module, size: int) -> None:
    model.eval()
    x = torch.randn(2, 3, size, size)
    template = copy.deepcopy(model)
    groups = GroupSet(template, x)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    with torch.no_grad():
        reference = model(x)
    assert groups.names
    score = get_criterion("l1")[1]
    for group in groups.names[:: max(1, len(groups.names) // 6)]:  # ~6 groups per model
        scores = score(groups.groups[group])  # scores from the unpruned weights
        for ratio in (0.3, 0.7):
            kept = set(select_channels(scores, ratio, groups.groups[group].ties))
            drop = [i for i in range(groups.groups[group].num_channels) if i not in kept]
            expected = prune_model(model, {group: ratio}, x).eval()
            with torch.no_grad(), groups.pruned(group, drop) as variant:
                assert variant is template
                got, want = variant(x), expected(x)
                shapes = {k: v.shape for k, v in variant.state_dict().items()}
                assert shapes == {k: v.shape for k, v in expected.state_dict().items()}
            assert same(got, want), (name, group, ratio)
    after = template.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with torch.no_grad():
        assert same(template(x), reference)
