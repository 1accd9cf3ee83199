"""Input-channel alignment of int8 convs (`align_conv_channels`): exact, only where it applies."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimkit.quant import OrtModel, QuantConfig, align_conv_channels, quantize
from slimkit.quant.qdq import INT8_KERNEL_OPS, int8_kernel_ops


class RGBNet(nn.Module):
    """An RGB stem with 16 channels (aligned), a depthwise conv, and a 3-channel side branch
    with 12 output channels (too few for onnxruntime's symmetric kernels: left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.side = nn.Conv2d(3, 12, 3, 2, 1)
        self.pw = nn.Conv2d(28, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.dw(self.stem(x)), self.side(x)], 1)
        return self.fc(self.pw(y).relu().mean((2, 3)))


def _conv_weights(path) -> dict[str, np.ndarray]:
    """``{conv name: its int8 weight}`` of a QDQ model."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return {
        n.name: inits[producer[n.input[1]].input[0]]
        for n in model.graph.node
        if n.op_type == "Conv"
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    net = RGBNet().eval()
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    out = tmp_path_factory.mktemp("align")
    common = {"batch_num": 4, "latency_check": False}
    plain = quantize(net, calib, out / "plain.onnx", QuantConfig(align_channels=False, **common))
    aligned = quantize(net, calib, out / "aligned.onnx", QuantConfig(**common))
    return plain, aligned


def test_only_the_stem_is_padded_with_zero_channels(pair):
    plain, aligned = (_conv_weights(r.model_path) for r in pair)
    stem = next(name for name, w in plain.items() if w.shape[:2] == (16, 3))
    side = next(name for name, w in plain.items() if w.shape[:2] == (12, 3))
    assert aligned[stem].shape == (16, 4, 3, 3)
    np.testing.assert_array_equal(aligned[stem][:, :3], plain[stem])
    assert not aligned[stem][:, 3].any()
    assert aligned[side].shape == plain[side].shape  # 12 outputs: not a fast-kernel shape
    for name in set(plain) - {stem}:
        np.testing.assert_array_equal(aligned[name], plain[name])


def test_aligned_model_gives_the_same_outputs_bit_for_bit(pair):
    plain, aligned = (OrtModel(r.model_path, threads=1) for r in pair)
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    a, b = plain(x)[0], aligned(x)[0]
    assert np.abs(a).max() > 0
    np.testing.assert_array_equal(a, b)


def test_onnxruntime_still_fuses_every_conv_into_an_int8_kernel(pair):
    plain, aligned = (int8_kernel_ops(r.model_path) for r in pair)
    assert aligned["QLinearConv"] == plain["QLinearConv"] == 4
    assert sum(aligned[op] for op in INT8_KERNEL_OPS) == sum(plain[op] for op in INT8_KERNEL_OPS)


def test_nothing_to_align_leaves_the_graph_as_it_is(pair):
    _, aligned = pair
    model = onnx.load(str(aligned.model_path))
    before = model.SerializeToString()
    assert align_conv_channels(model) == []  # already aligned: a second pass changes nothing
    assert model.SerializeToString() == before


def test_graphs_below_opset_11_are_left_alone(pair):
    plain, _ = pair
    model = onnx.load(str(plain.model_path))
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 10
    before = model.SerializeToString()
    assert align_conv_channels(model) == []
    assert model.SerializeToString() == before
