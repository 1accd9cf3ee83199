"""Any ONNX file: old opsets upgraded or per tensor, the INT8 model always loads; bias correction."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import slimkit.quant.qdq as qdq
from slimkit.quant import OrtModel, QuantConfig, export_onnx, quantize

FAST = {"latency_check": False}


@pytest.fixture
def opset11(tmp_path, tiny_net):
    path = tmp_path / "old.onnx"
    torch.onnx.export(tiny_net, (torch.randn(1, 3, 32, 32),), str(path), opset_version=11,
                      dynamo=False, input_names=["input"])  # fmt: skip
    assert onnx.load(str(path)).opset_import[0].version == 11
    return path


def _weight_scales(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    return [inits[producers[c.input[1]].input[1]] for c in convs]


def test_opset_11_is_upgraded_and_quantized_per_channel(tmp_path, opset11, calib_batches):
    result = quantize(opset11, calib_batches, tmp_path / "q.onnx", {"batch_num": 2, **FAST})
    assert result.opset == 13 and result.per_channel
    model = onnx.load(str(result.model_path))
    assert model.opset_import[0].version >= 13
    onnx.checker.check_model(model)
    assert all(scale.ndim == 1 for scale in _weight_scales(result.model_path))
    x = calib_batches[0][:1]
    out, ref = OrtModel(result.model_path)(x)[0], OrtModel(opset11)(x)[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def test_failed_upgrade_falls_back_to_per_tensor(tmp_path, opset11, calib_batches, monkeypatch):
    from onnx import version_converter

    def refuse(model, target):
        raise RuntimeError("no adapter")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    result = quantize(opset11, calib_batches, tmp_path / "q.onnx", {"batch_num": 2, **FAST})
    assert result.opset == 11 and not result.per_channel
    assert all(scale.ndim == 0 for scale in _weight_scales(result.model_path))
    OrtModel(result.model_path)(calib_batches[0][:1])  # loads and runs


def test_a_model_onnxruntime_cannot_load_is_an_error_and_no_file(
    tmp_path, tiny_net, calib_batches, monkeypatch
):
    real = qdq.make_session

    def broken(path, *args, **kwargs):
        if str(path).endswith("q.onnx") and ".slimkit_qdq_" in str(path):
            raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(qdq, "make_session", broken)
    with pytest.raises(RuntimeError, match="does not load in onnxruntime.*INVALID_GRAPH"):
        quantize(tiny_net, calib_batches, tmp_path / "q.onnx", {"batch_num": 2, **FAST})
    assert not (tmp_path / "q.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".slimkit")]


class DepthwiseNet(nn.Module):
    """A depthwise conv (nine weights a channel, no bias) between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))))


def _mean_shift(int8: OrtModel, fp32: OrtModel, feeds: list[np.ndarray]) -> float:
    """Largest per-channel mean of (FP32 - INT8) of the output over ``feeds``."""
    diff = np.mean([fp32(x)[0] - int8(x)[0] for x in feeds], axis=(0, 1, 3, 4))
    return float(np.abs(diff).max())


def test_bias_correction_removes_the_output_mean_shift(tmp_path):
    torch.manual_seed(0)
    net = DepthwiseNet().eval()
    with torch.no_grad():
        net.dw.weight.mul_(torch.linspace(0.2, 3.0, 16)[:, None, None, None])
    rng = np.random.default_rng(0)
    calib = [rng.uniform(0, 1, size=(1, 3, 32, 32)).astype(np.float32) for _ in range(10)]
    fresh = [rng.uniform(0, 1, size=(1, 3, 32, 32)).astype(np.float32) for _ in range(10)]
    src = export_onnx(net, (1, 3, 32, 32), tmp_path / "net.onnx")
    shifts = {}
    for correct in (False, True):
        # per-tensor 7-bit weights: coarse enough that the depthwise conv's mean shifts
        config = QuantConfig(
            batch_num=10, bias_correction=correct, per_channel=False, reduce_range=True, **FAST
        )
        result = quantize(src, calib, tmp_path / f"q{correct}.onnx", config)
        fp32, int8 = OrtModel(result.fp32_path), OrtModel(result.model_path)
        shifts[correct] = (_mean_shift(int8, fp32, calib), _mean_shift(int8, fp32, fresh))
        if correct:
            assert "/dw/Conv" in result.bias_corrected  # a bias was added where there was none
    assert shifts[True][0] < 0.5 * shifts[False][0]  # on the calibration data
    assert shifts[True][1] < 0.7 * shifts[False][1]  # and on data it never saw
