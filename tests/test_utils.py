"""Shared helpers (slimkit._utils): training modes, module calls, sizes, ORT sessions."""

import numpy as np
import pytest
import torch
from torch import nn

from slimkit._utils import as_hw, call_module, eval_mode, keep_training_modes, make_ort_session
from slimkit.quant import export_onnx


def mixed_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.Dropout())
    )
    net.train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    return net


def test_modes_of_every_submodule_come_back():
    net = mixed_net()
    before = [m.training for m in net.modules()]
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before
    with pytest.raises(RuntimeError), keep_training_modes(net):
        net.train()
        raise RuntimeError
    assert [m.training for m in net.modules()] == before  # net.train() undone, BN still frozen


class Three(nn.Module):
    def forward(self, a, b=None):
        return a if b is None else a + b


@pytest.mark.parametrize(
    "inputs, expected",
    [
        (torch.ones(2), torch.ones(2)),
        ((torch.ones(2), torch.ones(2)), 2 * torch.ones(2)),
        ([torch.ones(2), torch.ones(2)], 2 * torch.ones(2)),
        ({"a": torch.ones(2), "b": 2 * torch.ones(2)}, 3 * torch.ones(2)),
        (5, 5),
    ],
)
def test_call_module_spreads_tuples_and_dicts(inputs, expected):
    out = call_module(Three(), inputs)
    assert torch.equal(torch.as_tensor(out), torch.as_tensor(expected))


@pytest.mark.parametrize(
    "size, hw",
    [
        (32, (32, 32)),
        ((16, 24), (16, 24)),
        ([8, 4], (8, 4)),
        (np.int64(7), (7, 7)),
        (torch.Size([3, 5]), (3, 5)),
    ],
)
def test_as_hw_accepts_ints_and_pairs(size, hw):
    assert as_hw(size) == hw


@pytest.mark.parametrize("size", [0, -1, (1, 2, 3), (4,), "32", (2.5, 3), True, None, (0, 4)])
def test_as_hw_names_the_argument_on_bad_sizes(size):
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        as_hw(size, "input_size")


def test_ort_session_runs_and_checks_the_level(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    net = nn.Conv2d(3, 2, 1).eval()
    x = torch.randn(1, 3, 4, 4)
    export_onnx(net, x, path)
    session = make_ort_session(path, threads=1, optimize="basic")
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-5)
    assert session.get_session_options().intra_op_num_threads == 1
    assert make_ort_session(path.read_bytes()).get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="optimize must be one of"):
        make_ort_session(path, optimize="max")
