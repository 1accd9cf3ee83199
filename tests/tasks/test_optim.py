"""The training recipe's optimizer: parameter groups, relative rates of scale-invariant weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.models import create_model
from slimkit.tasks.optim import SCALE_INVARIANT_RMS, build_optimizer, param_groups


def _depthwise(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]


def _relative_moves(opt: torch.optim.Optimizer, net: nn.Module, steps: int = 20) -> list[float]:
    """Relative change of every depthwise weight after ``steps`` steps on a fixed random batch."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    before = [m.weight.detach().clone() for m in _depthwise(net)]
    net.train()
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [
        float((m.weight.detach() - w).norm() / w.norm())
        for m, w in zip(_depthwise(net), before, strict=True)
    ]


def test_adam_moves_scale_invariant_weights_at_the_same_relative_rate():
    torch.manual_seed(0)
    net = create_model("mobilenetv2", num_classes=4, width_mult=0.35)
    opt, _ = build_optimizer(net, "adam", 2e-3, 4e-5, total_steps=20)
    ours = _relative_moves(opt, net)
    torch.manual_seed(0)
    net = create_model("mobilenetv2", num_classes=4, width_mult=0.35)
    plain = _relative_moves(torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=4e-5), net)
    # The root cause of the lazy regime: plain AdamW barely moves the depthwise weights (RMS 0.47),
    # so the features never change and the classifier memorises (0.04 over a 300-step run).
    assert max(plain) < 0.05
    # ~20x more in every layer (the last blocks run at 1x1 here and move less in both runs)
    assert all(o > 10 * p for o, p in zip(ours, plain, strict=True))
    assert sorted(ours)[len(ours) // 2] > 0.3


def test_param_groups():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.Flatten()
    )
    conv, bn, head = net[0], net[1], net[2]
    groups = param_groups(net, "adam", 1e-3, 0.01)
    by_param = {id(p): g for g in groups for p in g["params"]}
    rms = conv.weight.detach().pow(2).mean().sqrt().item()
    assert by_param[id(conv.weight)]["lr"] == pytest.approx(1e-3 * rms / SCALE_INVARIANT_RMS)
    assert by_param[id(conv.weight)]["weight_decay"] == 0.01
    assert (
        by_param[id(head.weight)]["lr"] == 1e-3
        and by_param[id(head.weight)]["weight_decay"] == 0.01
    )
    for p in (bn.weight, bn.bias, head.bias):
        assert by_param[id(p)]["lr"] == 1e-3 and by_param[id(p)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    sgd = param_groups(net, "sgd", 1e-3, 0.01)
    assert {g["lr"] for g in sgd} == {1e-3}


def test_frozen_and_shared_parameters():
    conv = nn.Conv2d(3, 3, 1, bias=False)
    net = nn.Sequential(conv, conv, nn.BatchNorm2d(3))  # shared: listed once
    net[2].weight.requires_grad_(False)
    params = [p for g in param_groups(net, "adam", 1e-3, 0.0) for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 2


def test_schedule_and_errors():
    net = nn.Linear(2, 2)
    opt, sched = build_optimizer(net, "sgd", 0.1, 0.0, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.1) and lrs[-1] < 0.01
    opt, sched = build_optimizer(net, "adam", 0.1, 0.0, total_steps=10, milestones=[5])
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(net, "rmsprop", 0.1, 0.0, total_steps=1)
    with pytest.raises(ValueError, match="learning_rate"):
        build_optimizer(net, "adam", 0.0, 0.0, total_steps=1)
