"""QDQ models written through onnxruntime with slimkit's ranges: accuracy, graph, int8 kernels."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimkit.quant import OrtModel, QuantConfig, quantize
from slimkit.quant.qdq import INT8_KERNEL_OPS, int8_kernel_ops, quantized_nodes, write_qdq_model


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


@pytest.fixture
def quantized(tmp_path, tiny_net, calib_batches):
    return quantize(tiny_net, calib_batches, tmp_path / "model.onnx", QuantConfig(batch_num=4))


def test_int8_output_close_to_fp32(quantized, calib_batches, tiny_net):
    int8, fp32 = OrtModel(quantized.model_path), OrtModel(quantized.fp32_path)
    x = calib_batches[0][:1]
    assert _rel_error(int8(x)[0], fp32(x)[0]) < 0.05
    assert fp32.input_shape == [1, 3, 32, 32] and int8.input_name == "input"


def test_qdq_around_conv_with_int8_per_channel_weights(quantized):
    model = onnx.load(str(quantized.model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        act_dq, weight_dq = (_producer(model, name) for name in conv.input[:2])
        assert act_dq.op_type == weight_dq.op_type == "DequantizeLinear"
        assert _producer(model, act_dq.input[0]).op_type == "QuantizeLinear"
        assert any(c.op_type == "QuantizeLinear" for c in _consumers(model, conv.output[0]))
        weight, scale, zero = (inits[name] for name in weight_dq.input)
        assert weight.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        # symmetric abs-max: the largest |w| of every channel maps to 127
        assert np.all(np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) == 127)


def test_zero_points_follow_the_asymmetric_ranges(quantized):
    model = onnx.load(str(quantized.model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    params = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            params[node.input[0]] = (inits[node.input[1]], inits[node.input[2]])
    unsigned = [name for name, (lo, _) in quantized.ranges.items() if lo == 0.0]
    signed = [name for name, (lo, hi) in quantized.ranges.items() if lo < 0.0 and name in params]
    assert unsigned and signed
    assert all(params[n][1] == 0 for n in unsigned if n in params)
    for name in signed:  # uint8 over [lo, hi]: zero point round(-lo / scale), not always 128
        lo, hi = quantized.ranges[name]
        scale, zero = params[name]
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
        assert abs(int(zero) - (-lo / scale)) <= 0.5 + 1e-6
    assert any(params[n][1] != 128 for n in signed)


def test_ort_runs_convs_and_adds_in_int8(quantized):
    ops = int8_kernel_ops(quantized.model_path)
    assert ops["QLinearConv"] == 3
    assert ops["QLinearAdd"] == 1
    assert "Conv" not in ops
    assert sum(ops[k] for k in INT8_KERNEL_OPS) >= 5


def test_exclude_by_name_and_pattern(tmp_path, tiny_net, calib_batches):
    config = QuantConfig(batch_num=2, exclude=("/dw/Conv", "/fc/*"))
    result = quantize(tiny_net, calib_batches, tmp_path / "m.onnx", config)
    model = onnx.load(str(result.model_path))
    dw = next(n for n in model.graph.node if n.name == "/dw/Conv")
    weight = next(i for i in model.graph.initializer if i.name == dw.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT  # kept FP32
    assert "/dw/Conv" not in result.quantized_nodes and "/fc/Gemm" not in result.quantized_nodes
    assert result.fp32_nodes == ["/dw/Conv", "/fc/Gemm"]
    ops = int8_kernel_ops(result.model_path)
    # onnxruntime would fuse DQ -> Conv -> Q back into an int8 kernel: slimkit keeps it float
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 1 and ops["Gemm"] == 1
    assert "QGemm" not in ops
    x = calib_batches[0][:1]
    out, ref = OrtModel(result.model_path)(x)[0], OrtModel(result.fp32_path)(x)[0]
    assert out.shape == ref.shape and _rel_error(out, ref) < 0.05
    assert [o.name for o in model.graph.output] == ["output"]


def test_unknown_exclude_name_is_reported(tmp_path, tiny_net, calib_batches):
    with pytest.raises(ValueError, match="matches no ONNX node.*close names"):
        quantize(tiny_net, calib_batches, tmp_path / "m.onnx", QuantConfig(exclude=("/dw/Cnv",)))


def test_nothing_quantizable_fails_clearly(tmp_path, tiny_net, calib_batches):
    everything = QuantConfig(exclude=("*",))
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize(tiny_net, calib_batches, tmp_path / "m.onnx", everything)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Softplus", ["x"], ["y"], name="sp")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "softplus.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="Softplus"):
        quantize(path, [np.ones((1, 4), np.float32)], tmp_path / "q.onnx")


def test_qdq_quantizer_fallback_writes_the_same_graph(tmp_path, quantized):
    paths = {}
    for use_cache_api in (True, False):
        paths[use_cache_api] = tmp_path / f"{use_cache_api}.onnx"
        write_qdq_model(
            quantized.fp32_path, paths[use_cache_api], quantized.ranges, use_cache_api=use_cache_api
        )
    a, b = (onnx.load(str(p)) for p in paths.values())
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))
    assert quantized_nodes(a) == quantized_nodes(b)


def test_int8_activations_and_per_tensor_weights(tmp_path, tiny_net, calib_batches):
    config = QuantConfig(batch_num=2, activation_type="int8", per_channel=False, algo="percentile")
    result = quantize(tiny_net, calib_batches, tmp_path / "m.onnx", config)
    model = onnx.load(str(result.model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    activation_zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zps and all(z.dtype == np.int8 for z in activation_zps)
    assert any(z == -128 for z in activation_zps)  # [0, T] in int8: asymmetric
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    assert inits[weight_dq.input[1]].ndim == 0  # one scale per weight tensor
    x = calib_batches[1][:1]
    out, ref = OrtModel(result.model_path)(x)[0], OrtModel(result.fp32_path)(x)[0]
    assert _rel_error(out, ref) < 0.1
