"""Fixtures for the quant tests: a tiny conv net and calibration batches."""

import numpy as np
import pytest
import torch
from quant_nets import TinyNet


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        bn = net.stem[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    return net


@pytest.fixture
def calib_batches() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(2, 3, 32, 32)).astype(np.float32) for _ in range(4)]
