"""The proof of coupling: removing a group's channels equals zeroing them in every coupled place.

Zoo models at tiny size and hand-written models covering residual adds, SE, concat of several
branches, ``torch.chunk``, grouped/depthwise/transposed convs, Linear after flatten and spatial
split/concat.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from coupling_check import check_model, randomize_norms
from pattern_models import cbr
from torch import nn

from slimkit.models import create_model, list_models
from slimkit.prune import channel_groups, prune_model

TINY_KWARGS = {
    "mobilenetv1": {"num_classes": 5, "width_mult": 0.25},
    "mobilenetv2": {"num_classes": 5, "width_mult": 0.25},
    "yolov3_mobilenetv1": {"num_classes": 3, "width_mult": 0.25, "neck_width": 0.25},
    "unet": {"num_classes": 3, "base_channels": 8},
}


class ResidualSE(nn.Module):
    """Identity and projection residual adds, and a squeeze-excite gate."""

    prune_ignore = ("fc",)

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = cbr(8, 8)
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.se_fc1 = nn.Conv2d(8, 4, 1)
        self.se_fc2 = nn.Conv2d(4, 8, 1)
        self.c = cbr(8, 16, stride=2)
        self.d = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.e = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        gate = torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * gate
        x = F.relu(self.d(self.c(x)) + self.e(x))
        return self.fc(x.mean((2, 3)))


class ConcatBranches(nn.Module):
    """Inception-like concat of the input and three branches, then an upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = cbr(8, 4, k=1)
        self.b2 = cbr(8, 6)
        self.b3 = cbr(8, 6, k=1)
        self.fuse = cbr(24, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = F.max_pool2d(x, 3, 1, 1)
        x = torch.cat([x, self.b1(x), self.b2(x), self.b3(pooled)], dim=1)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.out(F.avg_pool2d(self.fuse(x), 2))


class ChunkShuffle(nn.Module):
    """``torch.chunk`` along channels (ShuffleNetV2-style: one half kept, one half convolved)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cbr(3, 16)
        self.left = cbr(8, 6)
        self.right = cbr(8, 6, k=1)
        self.out = nn.Conv2d(20, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.conv0(x), 2, dim=1)
        return self.out(torch.cat([self.left(a), self.right(b), a], dim=1))


class GroupedDepthwise(nn.Module):
    """Depthwise, grouped (as consumer and as root) convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cbr(3, 16)
        self.dw = cbr(16, 16, groups=16)
        self.g4 = cbr(16, 16, groups=4)
        self.g2 = cbr(16, 24, k=1, groups=2)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.g2(self.g4(self.dw(self.conv0(x)))))


class Transposed(nn.Module):
    """Transposed convs as consumers and as roots."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cbr(3, 8, stride=2)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.conv1 = cbr(6, 6)
        self.up2 = nn.ConvTranspose2d(6, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(self.bn(self.up(self.conv0(x)))))
        return self.out(F.relu(self.up2(x)))


class FlattenLinear(nn.Module):
    """Linear after flattening a 2x2 map (4 features per channel), then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cbr(3, 8)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.conv0(x), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class SpatialSplit(nn.Module):
    """Chunk and concat along the width (negative dims): channels stay one to one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = cbr(3, 8)
        self.side = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.chunk(self.conv0(x), 2, dim=-1)
        return self.out(F.relu(torch.cat([right, left], dim=-1) + self.side(x)))


class SharedWeights(nn.Module):
    """One conv+BN applied to two branches (siamese), one conv applied twice in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(3, 8)
        self.shared = cbr(8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(self.a(x)) + self.shared(self.b(x))
        return self.out(self.shared(y))


HAND_MODELS = [ResidualSE, ConcatBranches, ChunkShuffle, GroupedDepthwise, Transposed]
HAND_MODELS += [FlattenLinear, SpatialSplit, SharedWeights]


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_pruning_equals_masking(name: str) -> None:
    model = randomize_norms(create_model(name, **TINY_KWARGS.get(name, {})))
    x = torch.randn(2, 3, 32, 32)
    assert check_model(model, x, all_ratios=3) >= 5


def test_unet_deconv_pruning_equals_masking() -> None:
    model = create_model("unet", num_classes=3, base_channels=8, depth=2, upsample="deconv")
    check_model(randomize_norms(model), torch.randn(2, 3, 32, 32), all_ratios=3)


@pytest.mark.parametrize("cls", HAND_MODELS, ids=lambda c: c.__name__)
def test_hand_model_pruning_equals_masking(cls: type[nn.Module]) -> None:
    check_model(randomize_norms(cls()), torch.randn(2, 3, 16, 16))


def test_residual_adds_form_one_group_named_by_first_root() -> None:
    names = [g.name for g in channel_groups(ResidualSE(), torch.randn(1, 3, 16, 16))]
    assert "stem.0" in names and "b.0" not in names  # stem and b feed one add
    assert "d.0" in names and "e.0" not in names
    assert "fc" not in names  # prune_ignore


def test_grouped_conv_channels_are_tied() -> None:
    groups = {g.name: g for g in channel_groups(GroupedDepthwise(), torch.randn(1, 3, 8, 8))}
    assert "dw.0" not in groups  # depthwise convs are members, never roots
    assert sorted(groups["conv0.0"].ties) == [
        (0, 4, 8, 12),
        (1, 5, 9, 13),
        (2, 6, 10, 14),
        (3, 7, 11, 15),
    ]
    assert {len(t) for t in groups["g2.0"].ties} == {2}
    pruned = prune_model(GroupedDepthwise(), 0.5, torch.randn(1, 3, 8, 8))
    assert (pruned.g4[0].in_channels, pruned.g4[0].groups) == (8, 4)


def test_chunk_halves_stay_equal() -> None:
    pruned = prune_model(ChunkShuffle(), {"conv0.0": 0.5}, torch.randn(1, 3, 8, 8))
    assert pruned.conv0[0].out_channels == 8
    assert pruned.left[0].in_channels == pruned.right[0].in_channels == 4
    assert pruned.out.in_channels == 6 + 6 + 4
