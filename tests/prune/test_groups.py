"""Group discovery: stable names, ignore/prune_ignore, model boundaries, unsupported coupling."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from coupling_check import check_model, randomize_norms
from pattern_models import cbr
from torch import nn

from slimkit.models import create_model
from slimkit.prune import UnprunedGroupsWarning, channel_groups, prunable_groups, prune_model

X = torch.randn(1, 3, 16, 16)


class Chain(nn.Module):
    """conv1 -> conv2 -> conv3 (the last one produces the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = cbr(3, 8)
        self.conv2 = cbr(8, 8)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class OpAfterConv(nn.Module):
    """conv1 -> ``op`` -> conv2 -> head; ``op`` is a channel-mixing operation."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv1 = cbr(3, 8)
        self.conv2 = cbr(8 if op != "pixel_shuffle" else 2, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        b, c, h, w = y.shape
        if self.op == "permute":
            y = y.permute(0, 2, 3, 1).flip(-1).permute(0, 3, 1, 2)
        elif self.op == "shuffle":
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        elif self.op == "split":
            p, q = torch.split(y, [3, 5], dim=1)
            y = torch.cat([q, p], dim=1)
        elif self.op == "slice":
            y = torch.cat([y[:, :4], y[:, 4:] * 2], dim=1)
        elif self.op == "channel_mean":
            y = y - y.mean(1, keepdim=True)
        elif self.op == "pixel_shuffle":
            y = F.pixel_shuffle(y, 2)
        elif self.op == "buffer":
            y = y + torch.arange(c, dtype=y.dtype).view(1, c, 1, 1)
        return self.head(self.conv2(y))


def test_names_are_module_paths_and_stable_across_instances() -> None:
    model = create_model("mobilenetv2", num_classes=4, width_mult=0.25)
    names = prunable_groups(model, torch.randn(1, 3, 32, 32))
    assert names == prunable_groups(
        create_model("mobilenetv2", num_classes=4, width_mult=0.25), torch.randn(2, 3, 64, 64)
    )
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Conv2d | nn.Linear) for n in names)
    assert "classifier" not in names  # prune_ignore
    assert not any(modules[n].groups > 1 for n in names if isinstance(modules[n], nn.Conv2d))


def test_output_group_is_not_prunable() -> None:
    assert prunable_groups(Chain(), X) == ["conv1.0", "conv2.0"]


@pytest.mark.parametrize("how", ["name", "module", "container"])
def test_ignore_by_name_module_or_container(how: str) -> None:
    model = Chain()
    ignore = {"name": ["conv2.0"], "module": [model.conv2[0]], "container": "conv2"}[how]
    assert prunable_groups(model, X, ignore=ignore) == ["conv1.0"]


def test_ignore_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="conv_2"):
        prunable_groups(Chain(), X, ignore=["conv_2"])
    with pytest.raises(ValueError, match="not part of the model"):
        prunable_groups(Chain(), X, ignore=[nn.Conv2d(1, 1, 1)])


def test_prune_ignore_attribute_is_honoured_also_when_nested() -> None:
    model = Chain()
    model.prune_ignore = ("conv1.0",)
    assert prunable_groups(model, X) == ["conv2.0"]
    wrapper = nn.Sequential(model)
    assert prunable_groups(wrapper, X) == ["0.conv2.0"]


def test_ignored_member_blocks_its_whole_residual_group() -> None:
    class Residual(Chain):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            return self.conv3(y + self.conv2(y))

    assert prunable_groups(Residual(), X) == ["conv1.0"]
    assert prunable_groups(Residual(), X, ignore=["conv2.0"]) == []


def test_ignored_output_layers_still_lose_input_channels() -> None:
    model = create_model("yolov3_mobilenetv1", num_classes=2, width_mult=0.25, neck_width=0.25)
    x = torch.randn(1, 3, 64, 64)
    names = prunable_groups(model, x)
    assert not any(n.startswith("heads") for n in names)
    pruned = prune_model(model, 0.5, x)
    for head, orig in zip(pruned.heads, model.heads, strict=True):
        conv = next(m for m in head.modules() if isinstance(m, nn.Conv2d))
        conv0 = next(m for m in orig.modules() if isinstance(m, nn.Conv2d))
        assert conv.in_channels < conv0.in_channels
        assert conv.out_channels == conv0.out_channels
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    with torch.no_grad():
        maps = pruned(x)
        losses = pruned.compute_loss(maps, targets, (64, 64))
        detections = pruned.postprocess(maps, (64, 64))
    assert torch.isfinite(losses["loss"])
    assert len(detections) == 1 and detections[0]["boxes"].shape[1] == 4


def test_group_coupled_with_model_input_is_not_prunable() -> None:
    class InputResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = cbr(3, 3)
            self.conv2 = cbr(3, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv2(x + self.conv1(x)))

    assert prunable_groups(InputResidual(), X) == ["conv2.0"]


def test_members_and_indices_of_a_concat_group() -> None:
    class Cat(Chain):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            return self.conv3(torch.cat([self.conv2(y), y], dim=1))

    model = Cat()
    model.conv3 = nn.Conv2d(16, 4, 1)
    group = {g.name: g for g in channel_groups(model, X)}["conv1.0"]
    members = {(m.name, m.kind): m for m in group.members}
    assert set(members) == {
        ("conv1.0", "out"),
        ("conv1.1", "out"),
        ("conv2.0", "in"),
        ("conv3", "in"),
    }
    assert members[("conv3", "in")].idxs == tuple(range(8, 16))
    assert group.member_channels(members[("conv3", "in")], [0, 5]) == [8, 13]
    assert group.root_bn is model.conv1[1]


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ("permute", "'flip' .* works across the channel dimension"),
        ("split", "fixed sizes \\[3, 5\\]"),
        ("channel_mean", "'mean' .* works across the channel dimension"),
        ("pixel_shuffle", "pixel_shuffle"),
        ("buffer", "tensor made during the forward pass"),
    ],
)
def test_unfollowable_group_is_left_unpruned_with_one_warning(op: str, message: str) -> None:
    model = OpAfterConv(op)
    with pytest.warns(UnprunedGroupsWarning, match=f"conv1.0: .*{message}"):
        assert prunable_groups(model, X) == ["conv2.0"]
    with pytest.warns(UnprunedGroupsWarning) as caught:
        pruned, plan = prune_model(model, 0.5, X, return_plan=True)
    assert len(caught) == 1 and [e.name for e in plan.groups] == ["conv2.0"]
    assert re.search(message, plan.unpruned["conv1.0"])
    assert pruned.conv1[0].out_channels == 8 and pruned.conv2[0].out_channels == 4
    with pytest.raises(ValueError, match=f"group 'conv1.0' cannot be pruned: .*{message}"):
        prune_model(model, {"conv1.0": 0.5}, X)  # named explicitly: a clear error


@pytest.mark.parametrize("op", ["shuffle", "slice"])
def test_channel_shuffle_and_slices_are_followed(op: str) -> None:
    model = randomize_norms(OpAfterConv(op))
    check_model(model, X)
    group = channel_groups(model, X)[0]
    if op == "slice":  # y[:, :4] and y[:, 4:]: channels 0-3 are read with fixed bounds
        assert group.fixed == (0, 1, 2, 3)
    else:
        assert sorted(group.ties) == [(0, 4), (1, 5), (2, 6), (3, 7)]
