"""Make excluded nodes really run in FP32 on onnxruntime's CPU provider.

``nodes_to_exclude`` stops onnxruntime's quantizer from quantizing a node, but its neighbours still
quantize the tensors it shares with them, which leaves ``DQ -> node -> Q`` in the graph. At session
load onnxruntime fuses any such unit into an int8 kernel anyway (for Conv/Gemm it even quantizes
the float weights itself, per tensor: the ``WeightBiasQuantization`` transformer). To keep the node
in FP32, the Q/DQ pair on its output is removed: consumers read the float output directly. The
node's inputs stay as its neighbours quantized them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["float_output_edges"]

_PASS_THROUGH = ("Relu", "Clip")  # onnxruntime's QDQ units may hold these between op and Q


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _tail(model: onnx.ModelProto, tensor: str) -> str:
    """Follow a single-consumer Relu/Clip chain from ``tensor``; return its last output."""
    while True:
        users = _consumers(model, tensor)
        if len(users) != 1 or users[0].op_type not in _PASS_THROUGH:
            return tensor
        tensor = users[0].output[0]


def _rename_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _drop_unused_initializers(model: onnx.ModelProto, names: Iterable[str]) -> None:
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name in set(names) - used]:
        model.graph.initializer.remove(init)


def _dequantize_edge(model: onnx.ModelProto, tensor: str) -> bool:
    """Remove the Q (and its DQs) reading ``tensor``; their readers use ``tensor`` itself."""
    quantizers = [n for n in _consumers(model, tensor) if n.op_type == "QuantizeLinear"]
    outputs = {o.name for o in model.graph.output}
    removed = False
    for q in quantizers:
        dqs = [n for n in _consumers(model, q.output[0]) if n.op_type == "DequantizeLinear"]
        if len(dqs) != len(_consumers(model, q.output[0])) or q.output[0] in outputs:
            continue  # the quantized tensor itself is used (or returned): leave it
        params = [*q.input[1:], *(i for dq in dqs for i in dq.input[1:])]
        for dq in dqs:
            if dq.output[0] in outputs:  # keep the graph output's name on the float tensor
                producer = next(n for n in model.graph.node if tensor in n.output)
                producer.output[list(producer.output).index(tensor)] = dq.output[0]
                _rename_uses(model, tensor, dq.output[0])
                tensor = dq.output[0]
            else:
                _rename_uses(model, dq.output[0], tensor)
            model.graph.node.remove(dq)
        model.graph.node.remove(q)
        _drop_unused_initializers(model, params)
        removed = True
    return removed


def float_output_edges(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """Remove the Q/DQ pairs on the outputs of ``nodes`` (in place), so they run in FP32.

    Args:
        model: A QDQ model written by onnxruntime's quantizer.
        nodes: Names of the excluded nodes.

    Returns:
        The names of the nodes whose outputs were turned back to float.
    """
    by_name = {n.name: n for n in model.graph.node}
    changed = []
    for name in nodes:
        node = by_name.get(name)
        if node is None:
            continue
        edges = [_dequantize_edge(model, _tail(model, out)) for out in list(node.output)]
        if any(edges):
            changed.append(name)
    return changed
