"""Small models in the styles of timm / torchvision / onnx2torch networks, one pattern each.

Written for the tests (no timm or torchvision needed): each reproduces a way real networks wire
their channels that a pruner has to follow, or has to leave alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm subclass that calls ``F.batch_norm`` itself."""

    def __init__(self, num_features: int, act: bool = True) -> None:
        super().__init__(num_features)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum or 0.0,
            self.eps,
        )
        return self.act(x)


class SqueezeExcite(nn.Module):
    """timm/torchvision SE: pooled, reduced, expanded, gated with hard-sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(s)


class MobileNetV3Like(nn.Module):
    """Stem, inverted residual blocks with BatchNormAct2d, SE and a residual add, a Linear head."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(16)
        self.pw = nn.Conv2d(16, 32, 1, bias=False)
        self.bn_pw = BatchNormAct2d(32)
        self.dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False)
        self.bn_dw = BatchNormAct2d(32)
        self.se = SqueezeExcite(32, 8)
        self.pwl = nn.Conv2d(32, 16, 1, bias=False)
        self.bn_pwl = BatchNormAct2d(16, act=False)
        self.head = nn.Conv2d(16, 24, 1)
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        y = self.se(self.bn_dw(self.dw(self.bn_pw(self.pw(x)))))
        x = x + self.bn_pwl(self.pwl(y))
        x = F.hardswish(self.head(x)).mean((2, 3))
        return self.classifier(x)


class OwnBatchNorm(nn.Module):
    """A norm layer that is no BatchNorm subclass: own parameters and buffers, F.batch_norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias)


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over channels of NCHW through permutes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FunctionalNorms(nn.Module):
    """Functional batch norm on own tensors, LayerNorm2d, GroupNorm, F.group_norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm1 = OwnBatchNorm(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.norm2 = LayerNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.norm3 = nn.GroupNorm(4, 16)
        self.conv4 = nn.Conv2d(16, 12, 3, padding=1)
        self.gn_weight = nn.Parameter(torch.rand(12) + 0.5)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.gelu(self.norm2(self.conv2(x)))
        x = F.silu(self.norm3(self.conv3(x)))
        x = F.group_norm(self.conv4(x), 3, self.gn_weight)
        return self.head(F.relu(x))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise conv, permute, LayerNorm, Linear x4, GELU, Linear, gamma, permute."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(F.gelu(self.fc1(self.norm(x))))
        return shortcut + (x * self.gamma).permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    """Patchify stem + LayerNorm2d, two blocks, a LayerNorm2d + strided-conv downsample."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 2, 2), LayerNorm2d(16))
        self.block1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, 2))
        self.block2 = ConvNeXtBlock(24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class GhostModule(nn.Module):
    """GhostNet: a primary conv, a cheap depthwise conv on its output, concat, slice to ``oup``."""

    def __init__(self, inp: int, oup: int) -> None:
        super().__init__()
        self.out_chs = oup
        init = (oup + 1) // 2
        self.primary_conv = cbr(inp, init, 1)
        self.cheap_operation = cbr(init, init, 3, groups=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, : self.out_chs]


class GhostNetLike(nn.Module):
    """Ghost bottlenecks (odd and even widths), a residual, and an in-place slice write."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.ghost1 = GhostModule(16, 16)  # even: the slice keeps everything
        self.ghost2 = GhostModule(16, 11)  # odd: the slice drops the last cheap channel
        self.partial = nn.Conv2d(4, 4, 3, padding=1)  # FasterNet: x[:, :4] = conv(x[:, :4])
        self.mix = cbr(11, 12, 1)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.ghost1(x)
        x = self.ghost2(x)
        x = x.clone()
        x[:, :4] = self.partial(x[:, :4])
        return self.head(self.mix(x))


class RexNetLike(nn.Module):
    """ReXNet: a block widens the channels; the shortcut is added to the first ``cin``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand = cbr(8, 16, 1)
        self.conv = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.widen = nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv(self.expand(x))
        y = torch.cat([y[:, :8] + x, y[:, 8:]], dim=1)
        z = self.widen(y)
        z[:, 0:12] += y
        return self.head(F.relu(z))


class DualPathBlock(nn.Module):
    """DPN: a residual path (added) and a dense path (concatenated), split by slicing."""

    def __init__(self, in_chs: int, mid: int, num_1x1_c: int, inc: int) -> None:
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.c1x1_a = cbr(in_chs, mid, 1)
        self.c3x3_b = cbr(mid, mid, 3, groups=2)
        self.c1x1_c = nn.Conv2d(mid, num_1x1_c + inc, 1, bias=False)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = torch.cat(x, dim=1)
        x_s1, x_s2 = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        out1, out2 = out[:, : self.num_1x1_c], out[:, self.num_1x1_c :]
        return x_s1 + out1, torch.cat([x_s2, out2], dim=1)


class DPNLike(nn.Module):
    """A projection block (splitting a conv's output into both paths) and two dual-path blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.num_1x1_c = 24
        self.stem = cbr(3, 16)
        self.proj = nn.Conv2d(16, 24 + 8, 1, bias=False)
        self.block1 = DualPathBlock(32, 16, 24, 4)
        self.block2 = DualPathBlock(36, 16, 24, 4)
        self.bn = nn.BatchNorm2d(40)
        self.head = nn.Conv2d(40, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_s = self.proj(self.stem(x))
        paths = (x_s[:, : self.num_1x1_c], x_s[:, self.num_1x1_c :])
        paths = self.block2(self.block1(paths))
        return self.head(F.relu(self.bn(torch.cat(paths, dim=1))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleNetV1Like(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1 conv, channel shuffle, depthwise, grouped 1x1, add."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.stem = cbr(3, 16)
        self.gconv1 = cbr(16, 12, 1, groups=groups)
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.BatchNorm2d(12))
        self.gconv2 = nn.Sequential(nn.Conv2d(12, 16, 1, groups=groups), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.gconv2(self.dw(channel_shuffle(self.gconv1(x), self.groups)))
        return self.head(F.relu(x + y))


class ShuffleNetV2Like(nn.Module):
    """ShuffleNet v2 units: chunk in two, one branch convolved, concat, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.branch_a = nn.Sequential(cbr(8, 8, 1), cbr(8, 8, 3, groups=8), cbr(8, 8, 1))
        self.branch_b = nn.Sequential(cbr(8, 8, 1), cbr(8, 8, 3, groups=8), cbr(8, 8, 1))
        self.head = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch in (self.branch_a, self.branch_b):
            x1, x2 = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat([x1, branch(x2)], dim=1), 2)
        return self.head(x)


class ConstantBuffers(nn.Module):
    """onnx2torch-style: conv without bias plus a bias buffer, a per-channel scale buffer, and a
    constant made during the forward pass (which cannot be pruned)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.register_buffer("bias1", torch.randn(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.register_buffer("scale2", torch.rand(8) + 0.5)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x) + self.bias1)
        x = F.relu(self.conv2(x) * self.scale2.view(1, -1, 1, 1))
        offset = torch.arange(6, dtype=x.dtype).view(1, 6, 1, 1)
        return self.head(self.conv3(x) + offset)


class FixedShapeHead(nn.Module):
    """onnx2torch-style classifier: the flatten before the Linear reshapes to a fixed shape
    read from a buffer, so the last conv's channels can never change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = cbr(3, 8, stride=2)
        self.conv2 = cbr(8, 8, stride=2)
        self.register_buffer("shape", torch.tensor([-1, 8 * 4 * 4]))
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        return self.fc(torch.reshape(x, [int(s) for s in self.shape]))


class MixedConv2d(nn.ModuleDict):
    """timm MixNet: split the channels by fixed sizes, a kernel size per part, concat."""

    def __init__(self, channels: int, splits: list[int]) -> None:
        super().__init__()
        self.splits = splits
        for i, s in enumerate(splits):
            self[str(i)] = nn.Conv2d(s, s, 3 + 2 * i, padding=1 + i, groups=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.values(), parts, strict=True)], 1)


class C2f(nn.Module):
    """YOLOv8's C2f: one conv's output split in two equal parts by ``(self.c, self.c)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = cbr(cin, 2 * self.c, 1)
        self.m = cbr(self.c, self.c)
        self.cv2 = cbr(3 * self.c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SplitSizes(nn.Module):
    """Splits with sizes: by a list attribute (MixNet), by half a total (CSPNet), by a pair of
    one attribute (YOLOv8), by a literal (no attribute to update), and ``chunk``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = cbr(3, 12)
        self.mixed = MixedConv2d(12, [8, 4])
        self.mixed_even = MixedConv2d(12, [6, 6])  # equal parts held in a list
        self.expand_chs = 16
        self.conv2 = cbr(12, self.expand_chs, 1)
        self.left = cbr(8, 8)
        self.c2f = C2f(16, 12)
        self.conv3 = cbr(12, 8, 1)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(F.relu(self.mixed_even(F.relu(self.mixed(self.conv1(x))))))
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        x = self.c2f(torch.cat([self.left(xs), xb], dim=1))
        lit, rest = torch.split(x, [5, 7], dim=1)  # literal sizes: these channels stay
        a, b = self.conv3(torch.cat([rest, lit], dim=1)).chunk(2, dim=1)
        return self.head(torch.cat([a, b, a * b], dim=1))


PATTERN_MODELS = [
    MobileNetV3Like,
    FunctionalNorms,
    ConvNeXtLike,
    GhostNetLike,
    RexNetLike,
    DPNLike,
    ShuffleNetV1Like,
    ShuffleNetV2Like,
    ConstantBuffers,
    FixedShapeHead,
    SplitSizes,
]
