"""Weight init: group-aware fan-out, so depthwise convs are not ~sqrt(C) times too small."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.models import create_model


@pytest.mark.parametrize("name", ["mobilenetv1", "mobilenetv2"])
def test_depthwise_init_uses_group_aware_fan_out(name):
    net = create_model(name, num_classes=4, width_mult=1.0)
    dws = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert dws
    for m in dws:
        # He-normal with fan_out = 3 * 3 * out / groups = 9, whatever the channel count.
        assert m.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.25)


def test_eval_mode_follows_train_mode_after_a_few_steps():
    # With PyTorch's group-blind fan-out the eval-mode output was constant across inputs here.
    torch.manual_seed(0)
    net = create_model("mobilenetv2", num_classes=4, width_mult=0.5)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(30):
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.std(0).mean().item() > 1e-2


def test_residual_blocks_start_as_the_identity():
    # timm's zero_init_last: the 8-epoch MobileNetV2 run went from 0.79 to 0.95 val acc1.
    net = create_model("mobilenetv2", num_classes=4, width_mult=0.5)
    skips = [b for b in net.blocks if b.has_skip]
    assert len(skips) == 10
    x = torch.randn(2, skips[0].conv_pw.in_channels, 8, 8)
    assert torch.equal(skips[0](x), x)


def test_yolo_objectness_starts_at_the_prior():
    net = create_model("yolov3_mobilenetv1", num_classes=3, width_mult=0.25, input_size=64).eval()
    with torch.no_grad():
        maps = net._split_heads(net(torch.randn(2, 3, 64, 64)))
    for m in maps:
        assert m[..., 4].sigmoid().mean().item() == pytest.approx(0.01, rel=0.2)
        assert m[..., 5:].sigmoid().mean().item() == pytest.approx(0.5, abs=0.05)
