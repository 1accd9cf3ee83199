"""Autograd-level tracing helpers for :mod:`slimkit.prune.groups` (no Torch-Pruning here).

They record which torch function made each autograd node, read shapes off the autograd graph and
decide whether an operation keeps channels independent (so pruning can follow it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from slimkit._utils import call_module as call_module  # re-exported for groups.py

ExampleInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]

# Autograd ops that act on each channel independently (broadcasting allowed off the channel dim).
_CHANNELWISE = frozenset(
    "Add Sub Mul Div Neg Rsub Pow Clamp ClampMin ClampMax Abs Exp Log Sqrt Rsqrt Maximum Minimum "
    "Where Relu Hardtanh LeakyRelu Elu Celu Sigmoid Tanh Hardsigmoid Hardswish Silu Mish Gelu "
    "Softplus Threshold MaxPool1DWithIndices MaxPool2DWithIndices MaxPool3DWithIndices AvgPool2D "
    "AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D AdaptiveMaxPool2D AdaptiveMaxPool3D "
    "UpsampleNearest1D UpsampleNearest2D UpsampleNearest3D UpsampleNearestExact1D "
    "UpsampleNearestExact2D UpsampleNearestExact3D UpsampleLinear1D UpsampleBilinear2D "
    "UpsampleBicubic2D UpsampleTrilinear3D ConstantPadNd ReflectionPad1D ReflectionPad2D "
    "ReflectionPad3D ReplicationPad1D ReplicationPad2D ReplicationPad3D Clone ToCopy Alias "
    "NativeDropout".split()
)
_VIEW_LIKE = frozenset({"Unsqueeze", "Squeeze", "Expand"})
# Concat/split/slice along a non-channel dim (channel ones keep their own node types).
_OFF_CHANNEL = frozenset({"Cat", "Split", "SplitWithSizes", "Slice"})
_REDUCTIONS = frozenset({"Mean", "Sum", "Amax", "Amin", "Max", "Min", "Std", "Var"})


@dataclass(frozen=True)
class Trace:
    """What one traced forward pass left behind besides the dependency graph."""

    ops: dict[Any, tuple[str, list[torch.Size]]]  # grad_fn -> (torch function, constant shapes)
    input_fns: frozenset[Any]  # grad_fns marking the model inputs
    output_fns: frozenset[Any]  # grad_fns that produced the model outputs
    output_shapes: list[tuple[int, ...]]

    @cached_property
    def boundary_fns(self) -> frozenset[Any]:
        return self.input_fns | self.output_fns


class OpRecorder(TorchFunctionMode):
    """Remembers which torch function produced each autograd node, and its constant tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[Any, tuple[str, list[torch.Size]]] = {}

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        consts = [
            t.shape
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and not t.requires_grad
        ]
        name = getattr(func, "__name__", str(func))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.ops.setdefault(t.grad_fn, (name, consts))
        return out


def traceable_inputs(example_inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Copies of the inputs that carry autograd history, so the graph shows where they go."""

    def prep(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().clone().requires_grad_(True).clone()
        return x

    if isinstance(example_inputs, torch.Tensor):
        return (prep(example_inputs),), {}
    if isinstance(example_inputs, Mapping):
        return (), {k: prep(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, list | tuple):
        return tuple(prep(v) for v in example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple/list of positional inputs or a dict of keyword "
        f"inputs, got {type(example_inputs).__name__}"
    )


def grad_fns(tensors: Any) -> frozenset[Any]:
    """The autograd nodes that produced the tensors in a nested structure."""
    return frozenset(
        t.grad_fn for t in tree_leaves(tensors) if isinstance(t, torch.Tensor) and t.grad_fn
    )


def output_shapes(outputs: Any) -> list[tuple[int, ...]]:
    """Shapes of the tensors in a nested output structure, in order."""
    return [tuple(t.shape) for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def tie_by_position(
    idxs: list[int], root_idxs: list[int], size: int, parts: int, label: str
) -> tuple[str | None, list[list[int]]]:
    """Tie the channels at the same position of each of ``parts`` blocks of ``size`` channels."""
    by_pos: dict[int, list[int]] = {}
    for i, r in zip(idxs, root_idxs, strict=True):
        by_pos.setdefault(i % size, []).append(r)
    if any(len(v) != parts for v in by_pos.values()):
        return f"{label} takes only part of its channel blocks from this group", []
    return None, list(by_pos.values())


def merge_ties(ties: list[list[int]], num_channels: int, name: str) -> tuple[tuple[int, ...], ...]:
    """Union the tie lists into disjoint sets of equal size (sets of one are left out)."""
    parent = list(range(num_channels))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        for other in tie[1:]:
            parent[find(other)] = find(tie[0])
    sets: dict[int, list[int]] = {}
    for i in range(num_channels):
        sets.setdefault(find(i), []).append(i)
    if len({len(s) for s in sets.values()}) > 1:
        raise ValueError(
            f"cannot prune the channels of '{name}': grouped convs or chunks tie its channels in "
            f"sets of different sizes. Pass '{name}' in ignore= to leave this group alone."
        )
    return tuple(tuple(s) for s in sets.values() if len(s) > 1)


def _base_name(grad_fn: Any) -> str:
    """``"AddBackward0"`` -> ``"Add"``."""
    return grad_fn.name().rstrip("0123456789").removesuffix("Backward")


def _signed_dim(dim: int, ndim: int) -> int:
    """Autograd saves negative dims as unsigned 64-bit ints; return the dim in ``[0, ndim)``."""
    if dim >= 2**63:
        dim -= 2**64
    return dim + ndim if dim < 0 else dim


def op_dim(grad_fn: Any) -> int | None:
    """The (non-negative) ``dim`` a cat/split/slice node worked on, if it saved one."""
    dim = getattr(grad_fn, "_saved_dim", None)
    if not isinstance(dim, int):
        return None
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None) or output_shape(grad_fn)
    return _signed_dim(dim, len(sizes))


def output_shape(grad_fn: Any) -> tuple[int, ...]:
    """Shape of the (first) tensor an autograd node produced in the forward pass."""
    return tuple(grad_fn._input_metadata[0].shape)


def input_shapes(grad_fn: Any) -> list[tuple[int, ...]]:
    """Shapes of the inputs of an operation that are part of the autograd graph."""
    shapes = []
    for fn, nr in grad_fn.next_functions:
        if fn is None:
            continue
        variable = getattr(fn, "variable", None)
        shapes.append(
            tuple(variable.shape if variable is not None else fn._input_metadata[nr].shape)
        )
    return shapes


def _reduction_problem(grad_fn: Any, label: str) -> str | None:
    dims = getattr(grad_fn, "_saved_dim", None)
    sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
    if dims is None or sizes is None:
        return f"{label} reduces over all dimensions"
    dims = (dims,) if isinstance(dims, int) else dims
    if {_signed_dim(d, len(sizes)) for d in dims} & {0, 1}:
        return f"{label} reduces over the batch or channel dimension"
    return None


def _broadcast_problem(
    label: str, ins: list[tuple[int, ...]], consts: list[tuple[int, ...]], out: tuple[int, ...]
) -> str | None:
    """Channel-wise ops must keep channels on dim 1 and broadcast nothing along them."""
    if len(out) < 2:
        return f"{label} drops the channel dimension"
    for shape in ins:  # tensors in the graph are pruned with the group: they must align
        offset = len(out) - len(shape)
        if offset > 1 or offset < 0 or shape[1 - offset] != out[1]:
            return f"{label} broadcasts a {shape} tensor against channels of {out}"
    for shape in consts:  # constants are not pruned: they must not span the channels
        offset = len(out) - len(shape)
        if 0 <= 1 - offset < len(shape) and shape[1 - offset] != 1:
            return f"{label} combines the channels with a constant {shape} tensor (a buffer?)"
    return None


def operation_problem(grad_fn: Any, label: str, consts: Sequence[torch.Size]) -> str | None:
    """Why channels cannot be followed through an element-wise-typed autograd node, or ``None``."""
    base = _base_name(grad_fn)
    ins, out = input_shapes(grad_fn), output_shape(grad_fn)
    if base in _REDUCTIONS:
        return _reduction_problem(grad_fn, label)
    if base in _OFF_CHANNEL:
        same = all(len(s) >= 2 and len(out) >= 2 and s[1] == out[1] for s in ins)
        return None if same else f"{label} changes the channel count ({ins} -> {out})"
    if base in _VIEW_LIKE:
        same = all(len(s) >= 2 and len(out) >= 2 and s[:2] == out[:2] for s in ins)
        return None if same else f"{label} moves the channel dimension ({ins} -> {out})"
    if base in _CHANNELWISE:
        return _broadcast_problem(label, ins, [tuple(c) for c in consts], out)
    return f"{label} is an operation whose channel coupling slimkit cannot follow"
