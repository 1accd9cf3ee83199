"""Parameter / MAC / size counting against hand-computed values."""

import pytest
import torch
from torch import nn

from slimkit.prune.counting import (
    count_flops,
    count_macs,
    count_params,
    file_size,
    format_bytes,
    format_count,
)


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # out 8x8x8 = 512 elems * 3*9 = 13824 MACs
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise: 8*4*4 = 128 * 1*9 = 1152
        nn.Conv2d(8, 16, 1),  # pointwise: 16*4*4 = 256 * 8 = 2048
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # 16 * 10 = 160
    )


TINY_MACS = 13824 + 1152 + 2048 + 160


def test_count_params_by_hand():
    # conv 8*3*9+8 = 224, bn 8+8 = 16, dw 8*9+8 = 80, pw 16*8+16 = 144, fc 16*10+10 = 170
    assert count_params(tiny_net()) == 224 + 16 + 80 + 144 + 170
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, shared)) == 20  # shared weights count once


def test_count_macs_tiny_net_per_sample_and_flops():
    net = tiny_net()
    assert count_macs(net, torch.randn(1, 3, 8, 8)) == TINY_MACS
    assert count_macs(net, torch.randn(4, 3, 8, 8)) == TINY_MACS  # batch divided out
    assert count_flops(net, (torch.randn(2, 3, 8, 8),)) == 2 * TINY_MACS


def test_count_macs_grouped_conv1d_and_kernel_shapes():
    # Conv2d groups=2, kernel 3x1 on 4x5x5: out 6x3x5 = 90 elems * (4/2)*3*1 = 540
    assert count_macs(nn.Conv2d(4, 6, (3, 1), groups=2), torch.randn(1, 4, 5, 5)) == 540
    # Conv1d groups=2, kernel 3 on 4x10: out 6x8 = 48 * (4/2)*3 = 288
    assert count_macs(nn.Conv1d(4, 6, 3, groups=2), torch.randn(2, 4, 10)) == 288


def test_count_macs_transposed_conv_uses_input_elements():
    # ConvTranspose2d(4, 6, k=2, s=2, groups=2) on 4x3x3: 36 input elems * (6/2)*2*2 = 432.
    # (An output-based count would give 6*6*6 * (4/2)*4 = 1728.)
    deconv = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    assert count_macs(deconv, torch.randn(3, 4, 3, 3)) == 432


def test_count_macs_linear_with_leading_dims():
    # [3, 5, 7] -> Linear(7, 4): 3*5 rows * 7 * 4 = 420 for the batch of 3 -> 140 per sample.
    assert count_macs(nn.Linear(7, 4), torch.randn(3, 5, 7)) == 140


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 2, 1, bias=False)  # twice: 2 * (2*4*4 out elems * 2) = 128
        self.head = nn.Linear(4, 3)  # 1*2 rows * 4 * 3 = 24

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        a = self.stem(self.stem(x))
        return a, [self.head(y)]


def test_count_macs_multiple_inputs_tuple_outputs_and_reused_layers():
    x, y = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4)
    assert count_macs(TwoHeads(), (x, y)) == 128 + 24


def test_count_macs_restores_training_flags_and_bn_stats():
    net = tiny_net().train()
    net[1].eval()  # a submodule deliberately left in eval mode
    stats = net[1].running_mean.clone()
    count_macs(net, torch.randn(2, 3, 8, 8))
    assert net.training and net[0].training and not net[1].training
    assert torch.equal(net[1].running_mean, stats)
    net[1].train()
    count_macs(net, torch.randn(2, 3, 8, 8))
    assert torch.equal(net[1].running_mean, stats)  # eval during counting: no stat update
    assert not net[0]._forward_hooks  # hooks removed


def test_count_macs_rejects_bad_inputs():
    with pytest.raises(TypeError, match="batch dimension"):
        count_macs(tiny_net(), [3, 8, 8])
    with pytest.raises(ValueError, match="batch size 0"):
        count_macs(tiny_net(), torch.randn(0, 3, 8, 8))
    with pytest.raises(TypeError, match="nn.Module"):
        count_params("not a module")


def test_file_size_file_and_directory(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 32)
    assert file_size(tmp_path / "a.bin") == 10
    assert file_size(str(tmp_path)) == 42
    with pytest.raises(FileNotFoundError, match="missing"):
        file_size(tmp_path / "missing")


def test_format_count_and_bytes():
    assert format_count(999) == "999"
    assert format_count(1234567) == "1.23M"
    assert format_count(999_999) == "1.00M"  # rounds up into the next unit, not "1000.00K"
    assert format_count(3_400_000_000) == "3.40G"
    assert format_count(1500, precision=1) == "1.5K"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(5 * 1024**2) == "5.00 MiB"
    with pytest.raises(TypeError):
        format_count("12")
