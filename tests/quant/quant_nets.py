"""Tiny networks for the quant tests (32 px, a few channels)."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv-BN-ReLU6, a depthwise conv with a residual add, a plain conv, pooling and an FC."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = y + self.dw(y)
        y = self.relu(self.pw(y))
        return self.fc(y.mean((2, 3)))


class TwoHeads(nn.Module):
    """Returns a tuple, like the YOLO head maps."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head_a = nn.Conv2d(4, 2, 1)
        self.head_b = nn.Conv2d(4, 3, 1, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.body(x))
        return self.head_a(y), self.head_b(y)
