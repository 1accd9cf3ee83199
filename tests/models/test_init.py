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
