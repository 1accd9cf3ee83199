"""Small trained nets with an SE gate and with ReLU6: KL INT8 keeps the FP32 predictions."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimkit.quant import OrtModel, QuantConfig, quantize


def quadrant_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 noisy images; the label is the quadrant holding a bright 4x4 square."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    offsets = torch.randint(0, 5, (n, 2), generator=g)
    for i in range(n):
        top = 8 * int(y[i] // 2) + int(offsets[i, 0])
        left = 8 * int(y[i] % 2) + int(offsets[i, 1])
        x[i, :, top : top + 4, left : left + 4] += 1.5
    return x, y


class SEGateNet(nn.Module):
    """Conv-ReLU6, a squeeze-excitation gate (hard-sigmoid, biased away from 0), hard-swish."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.squeeze, self.excite = nn.Linear(16, 8), nn.Linear(8, 16)
        with torch.no_grad():
            self.excite.bias.fill_(2.0)  # gates in ~[0.3, 0.9]: no mass near zero
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.Hardswish())
        self.fc = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        gate = nn.functional.hardsigmoid(self.excite(torch.relu(self.squeeze(y.mean((2, 3))))))
        y = self.body(y * gate[:, :, None, None])
        return self.fc(y.flatten(1))


class ReLU6Net(nn.Module):
    """A MobileNetV2 inverted residual (expand, depthwise, linear project, add) with ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(8, 32, 1), nn.ReLU6(), nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.ReLU6(), nn.Conv2d(32, 8, 1),
        )  # fmt: skip
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y + self.block(y)
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 4).flatten(1))


def train(net: nn.Module, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    x, y = quadrant_data(1024, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    net.train()
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def _gate_tensor(model_path: str) -> str:
    model = onnx.load(model_path)
    return next(n.output[0] for n in model.graph.node if n.op_type == "HardSigmoid")


@pytest.mark.parametrize("net_class", [SEGateNet, ReLU6Net], ids=["se_gate", "relu6"])
def test_kl_int8_keeps_the_predictions_of_a_trained_net(tmp_path, net_class):
    torch.set_num_threads(1)
    net = train(net_class())
    test_x, test_y = quadrant_data(300, seed=1)
    with torch.no_grad():
        fp32_pred = net(test_x).argmax(1)
    assert (fp32_pred == test_y).float().mean() >= 0.9  # FP32 is accurate
    calib = [quadrant_data(8, seed=2)[0][k : k + 1] for k in range(8)]
    config = QuantConfig(batch_num=8, latency_check=False)
    result = quantize(net, calib, tmp_path / "int8.onnx", config)
    int8 = OrtModel(result.model_path, threads=1)
    int8_pred = np.array([int(np.argmax(int8(test_x[i : i + 1])[0])) for i in range(300)])
    agreement = float(np.mean(int8_pred == fp32_pred.numpy()))
    assert agreement >= 0.95
    if net_class is SEGateNet:
        gate = _gate_tensor(str(result.fp32_path))
        assert result.range_methods[gate] == "bound"
        assert result.ranges[gate][0] == 0.0 and 0.25 < result.ranges[gate][1] <= 1.0
