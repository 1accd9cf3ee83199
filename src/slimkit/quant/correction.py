"""Bias correction of quantized convolutions and Gemms (empirical, layer-local).

Quantizing a layer's weights and input shifts the mean of its output: ``E[W x] != E[W_q x_q]``,
most for depthwise convs (nine weights a channel). NNCF applies a bias correction by default
(FastBiasCorrection); Nagel et al. (Data-Free Quantization, 2019) derive it. slimkit measures the
shift of every quantized Conv/Gemm on the calibration batches, layer by layer in one run: the QDQ
model gets, next to each quantized layer, a float copy of it (FP32 weights) reading the *float*
tensor that is quantized for it, so ``ref - quant`` is the error that this layer alone adds, on the
inputs it really sees. The mean of that difference per output channel is added to the layer's FP32
bias, and onnxruntime writes the QDQ model again from the corrected FP32 model (same ranges and
weight scales; only the int32 biases change). Channels whose shift is not significant (below
twice its standard error over the calibration values) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .runtime import make_session, split_feed

if TYPE_CHECKING:
    import onnx

__all__ = ["apply_bias_corrections", "bias_corrections"]

_LAYERS = ("Conv", "Gemm")
_PREFIX = "slimkit_bc_"


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _quant_inputs(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]
) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    """``(Q, DQ)`` of a QDQ layer's activation input and the DQ of its weight, or None."""
    dq = producers.get(node.input[0])
    q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    weight_dq = producers.get(node.input[1])
    if q is None or q.op_type != "QuantizeLinear" or weight_dq is None:
        return None
    if weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] in producers:
        return None  # weights not quantized (or not constant): nothing to correct
    assert dq is not None
    return q, dq, weight_dq


def _reduce_mean(opset: int, name: str, axes: list[int], out: str) -> list[Any]:
    """``ReduceMean`` over ``axes`` (an attribute before opset 18, an input after), + initializer."""
    import onnx

    if opset >= 18:
        axes_init = onnx.numpy_helper.from_array(np.array(axes, dtype=np.int64), f"{out}_axes")
        return [
            onnx.helper.make_node("ReduceMean", [name, axes_init.name], [out], keepdims=0),
            axes_init,
        ]
    return [onnx.helper.make_node("ReduceMean", [name], [out], axes=axes, keepdims=0)]


def _copy_node(node: onnx.NodeProto, inputs: list[str], output: str) -> onnx.NodeProto:
    import onnx

    copy = onnx.helper.make_node(node.op_type, inputs, [output], name=output)
    copy.attribute.extend(node.attribute)
    return copy


def _add_probe(
    fp32: onnx.ModelProto,
    layer: onnx.NodeProto,
    quant: tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto],
    qdq_inits: dict[str, Any],
    k: int,
) -> tuple[str, str]:
    """In the FP32 model: ``layer`` with its QDQ model's quantized input and weights, and the
    per-channel means of (FP32 output - quantized output) and of its square."""
    q, dq, weight_dq = quant
    p = f"{_PREFIX}{k}_"
    for name in {*q.input[1:], *dq.input[1:], *weight_dq.input}:
        if name:
            init = type(qdq_inits[name])()
            init.CopyFrom(qdq_inits[name])
            init.name = p + name
            fp32.graph.initializer.append(init)
    x_q, x_dq, w_dq, y_q, diff, square = (p + s for s in ("xq", "xdq", "w", "y", "d", "d2"))
    nodes = [
        _copy_node(q, [layer.input[0], *(p + i for i in q.input[1:])], x_q),
        _copy_node(dq, [x_q, *(p + i for i in dq.input[1:])], x_dq),
        _copy_node(weight_dq, [p + i for i in weight_dq.input], w_dq),
        _copy_node(layer, [x_dq, w_dq, *layer.input[2:3]], y_q),
    ]
    import onnx

    nodes += [
        onnx.helper.make_node("Sub", [layer.output[0], y_q], [diff]),
        onnx.helper.make_node("Mul", [diff, diff], [square]),
    ]
    rank = {"Gemm": 2}.get(layer.op_type, len(qdq_inits[weight_dq.input[0]].dims))
    axes = [0, *range(2, rank)] if layer.op_type == "Conv" else [0]
    opset = next((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), 13)
    mean, mean_sq = p + "mean", p + "mean_sq"
    for item in [
        *_reduce_mean(opset, diff, axes, mean),
        *_reduce_mean(opset, square, axes, mean_sq),
    ]:
        (fp32.graph.node if isinstance(item, onnx.NodeProto) else fp32.graph.initializer).append(
            item
        )
    fp32.graph.node.extend(nodes)
    fp32.graph.output.extend([onnx.ValueInfoProto(name=mean), onnx.ValueInfoProto(name=mean_sq)])
    return mean, mean_sq


def bias_corrections(
    qdq_path: str | Path, fp32_path: str | Path, feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-output-channel bias shift of every quantized Conv/Gemm, measured on ``feeds``.

    Every quantized layer of ``qdq_path`` is re-created inside the FP32 model next to its FP32
    twin, reading the FP32 activation through the same Q/DQ and its dequantized weights; the
    difference of the two outputs is the error that layer alone adds (NNCF's fast bias
    correction).

    Args:
        qdq_path: The QDQ model written from ``fp32_path``.
        fp32_path: The FP32 model.
        feeds: Calibration feeds (read once).

    Returns:
        ``{node name: correction}`` to add to each node's FP32 bias (zeros where a channel's shift
        is below twice its standard error); empty when nothing is quantized or no feed is given.
    """
    import onnx

    qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))
    qdq_inits = {i.name: i for i in qdq.graph.initializer}
    producers = _producers(qdq)
    layers = {n.name: n for n in qdq.graph.node if n.op_type in _LAYERS and n.name}
    probes: dict[str, tuple[str, str]] = {}
    for k, layer in enumerate(list(fp32.graph.node)):
        quant = _quant_inputs(layers[layer.name], producers) if layer.name in layers else None
        if quant is not None and layer.op_type in _LAYERS:
            probes[layer.name] = _add_probe(fp32, layer, quant, qdq_inits, k)
    if not probes:
        return {}
    session = make_session(fp32.SerializeToString(), optimize="none")
    dims = {i.name: (i.shape[0] if i.shape else None) for i in session.get_inputs()}
    names = [n for pair in probes.values() for n in pair]
    sums: list[np.ndarray] | None = None
    runs = 0
    for feed in feeds:
        for chunk in split_feed(feed, dims):
            values = [v.astype(np.float64) for v in session.run(names, chunk)]
            sums = values if sums is None else [s + v for s, v in zip(sums, values, strict=True)]
            runs += 1
    if sums is None:
        return {}
    return _significant(probes, dict(zip(names, (s / runs for s in sums), strict=True)), runs)


def _significant(
    probes: dict[str, tuple[str, str]], means: dict[str, np.ndarray], runs: int
) -> dict[str, np.ndarray]:
    """Mean shifts, zeroed where below twice their standard error (``runs`` independent runs)."""
    out = {}
    for node, (mean_name, sq_name) in probes.items():
        mean, mean_sq = means[mean_name], means[sq_name]
        stderr = np.sqrt(np.maximum(mean_sq - mean**2, 0.0) / max(runs, 1))
        out[node] = np.where(np.abs(mean) > 2.0 * stderr, mean, 0.0)
    return out


def apply_bias_corrections(
    fp32_path: str | Path, corrections: dict[str, np.ndarray], out_path: str | Path
) -> int:
    """Write ``fp32_path`` with ``corrections`` added to the named nodes' biases to ``out_path``.

    A node without a bias gets one; a bias initializer shared with another node is copied first.

    Returns:
        The number of layers whose bias changed.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        delta = corrections.get(node.name)
        if delta is None or not np.any(delta):
            continue
        bias_name = node.input[2] if len(node.input) > 2 else ""
        if bias_name:
            bias = numpy_helper.to_array(inits[bias_name])
        else:
            bias = np.zeros(delta.shape, numpy_helper.to_array(inits[node.input[1]]).dtype)
        corrected = (bias + delta).astype(bias.dtype)
        if bias_name and uses[bias_name] == 1:
            inits[bias_name].CopyFrom(numpy_helper.from_array(corrected, bias_name))
        else:
            new = numpy_helper.from_array(corrected, f"{node.name}_bias_bc")
            model.graph.initializer.append(new)
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = new.name
        changed += 1
    onnx.save(model, str(out_path))
    return changed
