"""How channels pass through each kind of autograd operation.

A rule answers, for one operation in the traced graph: on which dims of its output the channels
lie (from those of its inputs, or back from its output), how channel indices map into it from each
input and out of it to each consumer, and what it demands of a group that passes through it
(:class:`OpFacts`): a reason it cannot be followed, channels that must stay (fixed slice bounds),
channels that go together (``chunk``, channel shuffle, GroupNorm), and tensors off the autograd
graph that span the channels and so must lose the same ones (buffers, constants).

This file holds the element-wise, normalisation and reduction rules and the table from autograd
node names to rules; :mod:`._shape_rules` holds those that move, join or cut the channel dim.
"""

from __future__ import annotations

from typing import Any

from ._mapping import Drop, Mapping
from ._opbase import Conflict, Dims, Need, Op, OpFacts, Rule, Shape, base_name, shift
from ._shape_rules import Concat, CopySlices, Narrow, Permutation, Reshape, Stack
from ._tracing import Call, Leaf, output_shape

POINTWISE = frozenset(
    "Add Sub Mul Div Neg Rsub Pow Clamp ClampMin ClampMax Abs Exp Exp2 Expm1 Log Log1p Log2 Sqrt "
    "Rsqrt Reciprocal Maximum Minimum Fmax Fmin Where Relu Hardtanh LeakyRelu Elu Celu Selu Rrelu "
    "RreluWithNoise Sigmoid LogSigmoid Tanh Hardsigmoid Hardswish Silu Mish Gelu Softplus "
    "Softshrink Hardshrink Threshold Clone ToCopy Alias NativeDropout Erf Sin Cos Sign Sgn Floor "
    "Ceil Round Trunc Frac Lerp Addcmul Addcdiv MaskedFill Expand Copy Atan Tan PreluKernel "
    "NanToNum Xlogy Atan2 Hypot Fmod Remainder Lgamma Digamma Erfc Erfinv Asinh Sinh Cosh "
    "Acos Asin Acosh Atanh Logit HardtanhBackward".split()
)
SPATIAL = frozenset(
    "MaxPool1DWithIndices MaxPool2DWithIndices MaxPool3DWithIndices AvgPool1D AvgPool2D AvgPool3D "
    "AdaptiveAvgPool1D AdaptiveAvgPool2D AdaptiveAvgPool3D AdaptiveMaxPool1D AdaptiveMaxPool2D "
    "AdaptiveMaxPool3D UpsampleNearest1D UpsampleNearest2D UpsampleNearest3D "
    "UpsampleNearestExact1D UpsampleNearestExact2D UpsampleNearestExact3D UpsampleLinear1D "
    "UpsampleBilinear2D UpsampleBicubic2D UpsampleTrilinear3D UpsampleBilinear2DAa "
    "UpsampleBicubic2DAa ReflectionPad1D ReflectionPad2D ReflectionPad3D ReplicationPad1D "
    "ReplicationPad2D ReplicationPad3D MaxPool2D LpPool2D".split()
)
BATCH_NORMS = frozenset({"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"})
REDUCTIONS = frozenset(
    "Mean Sum Amax Amin Max Min Std Var StdMean VarMean Norm LinalgVectorNorm Logsumexp Prod "
    "Median Nanmean Nansum".split()
)
DIMWISE = frozenset({"Softmax", "LogSoftmax", "Cumsum", "Cumprod", "Flip", "Roll", "Sort"})
VIEWS = frozenset({"View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze"})
COPY_SLICES = "torch::autograd::CopySlices"
# Composite functions (several autograd nodes) that keep each channel's index.
COMPOSITE = {"instance_norm": "channel", "batch_norm": "channel", "group_norm": "group_norm"}
COMPOSITE.update({"layer_norm": "layer_norm", "rms_norm": "layer_norm", "linear": "module"})
_SPATIAL_FUNCS = "adaptive_avg_pool avg_pool max_pool adaptive_max_pool lp_pool fractional_max_pool"
for _f in _SPATIAL_FUNCS.split():  # pooling to 1x1 runs as mean + as_strided, for example
    COMPOSITE.update({f"{_f}{d}d": "spatial" for d in (1, 2, 3)})
COMPOSITE.update(
    dict.fromkeys(("interpolate", "upsample", "_max_pool2d", "_max_pool1d"), "spatial")
)
COMPOSITE.update(dict.fromkeys(("dropout", "gelu", "silu", "hardswish", "mish"), "pointwise"))


class Pointwise(Rule):
    """Element-wise with broadcasting; channel-first ops (pools, batch norm) need dims ``(1,)``."""

    def __init__(self, channel_first: bool = False, vector_leaves: bool = False) -> None:
        self.channel_first = channel_first
        self.vector_leaves = vector_leaves  # 1-D weights along dim 1 (F.batch_norm, group_norm)

    def forward(self, op: Op) -> Dims | None:
        found = set()
        for shape, dims in zip(op.ins, op.in_dims, strict=True):
            if shape is not None and dims is not None:
                found.add(shift(dims, len(op.out) - len(shape)))
        if len(found) > 1:
            raise Conflict(f"{op.label} combines tensors with channels on dims {sorted(found)}")
        return found.pop() if found else None

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        shape = op.ins[slot]
        if shape is None:
            return None
        local = shift(dims, len(shape) - len(op.out))
        return local if all(d >= 0 for d in local) else None

    def span(self, op: Op, dims: Dims, shape: Shape) -> bool | None:
        """True: ``shape`` spans the channels; False: broadcast along them; None: partly."""
        off = len(op.out) - len(shape)
        sizes = [shape[d - off] if d - off >= 0 else 1 for d in dims]
        full = [op.out[d] for d in dims]
        if sizes == full:
            return True
        return False if all(s == 1 for s in sizes) else None

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        facts = OpFacts(op.label)
        if self.channel_first and dims != (1,):
            facts.problem = f"{op.label} expects channels on dim 1, not on dims {dims}"
            return facts
        for shape in op.ins:
            if shape is not None and self.span(op, dims, shape) is None:
                facts.problem = (
                    f"{op.label} broadcasts a {shape} tensor against channels of {op.out}"
                )
                return facts
        for leaf in op.call.leaves if op.call is not None else ():
            problem = self._leaf(op, dims, leaf, facts)
            if problem:
                facts.problem = problem
                return facts
        return facts

    def _leaf(self, op: Op, dims: Dims, leaf: Leaf, facts: OpFacts) -> str | None:
        if self.vector_leaves and len(leaf.shape) == 1:  # F.batch_norm/group_norm weights
            if leaf.shape[0] == 1:
                return None
            if dims != (1,) or leaf.shape[0] != op.out[1]:
                return f"{op.label} uses a {leaf.shape} tensor that does not match its channels"
            dim = 0
        else:
            span = self.span(op, dims, leaf.shape)
            if span is False:
                return None
            if span is None or len(dims) > 1:
                return f"{op.label} combines the channels with a {leaf.shape} tensor partly"
            dim = dims[0] - (len(op.out) - len(leaf.shape))
        if leaf.shape[dim] > 1:
            facts.needs.append(
                Need(leaf.owner, leaf.shape, dim, leaf.requires_grad, leaf.whole_owner)
            )
        return None

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        shape = op.ins[slot]
        return None if shape is None or self.span(op, dims, shape) else Drop()


class Pad(Pointwise):
    """``F.pad`` with zeros: fine unless it pads the channel dim."""

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        pad = op.saved("pad") or ()
        padded = {len(op.out) - 1 - i // 2 for i, p in enumerate(pad) if p}
        if padded & set(dims):
            return OpFacts(op.label, problem=f"{op.label} pads the channel dimension")
        return super().facts(op, dims)


class LayerNorm(Pointwise):
    """``layer_norm``/``rms_norm``: normalises over the last dims, channels last or not."""

    def _normalized(self, op: Op) -> int:
        shape = op.saved("normalized_shape")
        if shape is None and op.call is not None and len(op.call.args) > 1:
            shape = op.call.args[1]
        return len(shape) if isinstance(shape, tuple | list) else 1

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        k, nd = self._normalized(op), len(op.out)
        normed = set(range(nd - k, nd))
        if not normed & set(dims):
            return super().facts(op, dims)
        if dims != (nd - 1,):
            return OpFacts(op.label, problem=f"{op.label} normalises channels that are not last")
        facts = super().facts(op, dims)
        facts.mixes = True
        return facts


class GroupNorm(Pointwise):
    """``group_norm``: statistics per block of ``C / groups`` channels; blocks stay equal."""

    def __init__(self) -> None:
        super().__init__(channel_first=True, vector_leaves=True)

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        facts = super().facts(op, dims)
        groups = op.saved("group")
        if groups is None and op.call is not None and len(op.call.args) > 1:
            groups = op.call.args[1]
        channels = op.out[1] if len(op.out) > 1 else 0
        if not isinstance(groups, int) or groups < 1 or channels % groups:
            facts.problem = facts.problem or f"{op.label} has an unknown number of groups"
        elif groups > 1:
            facts.tie = (channels // groups, groups)
        facts.mixes = True
        return facts


class Reduce(Rule):
    """Reductions and dim-wise ops (softmax, flip): fine along other dims than the channels."""

    input_dims = True  # facts are about the input's channels (the output may have none)

    def __init__(self, keeps_dims: bool) -> None:
        self.keeps_dims = keeps_dims  # softmax/flip/roll/cumsum keep the shape

    def _reduced(self, op: Op, nd: int) -> tuple[set[int], bool] | None:
        dims = op.dims_of("dims", nd) if op.base in {"Flip", "Roll"} else op.dims_of("dim", nd)
        if dims is None:
            return None
        keep = self.keeps_dims or bool(op.saved("keepdim", False))
        return set(dims), keep

    def forward(self, op: Op) -> Dims | None:
        if op.in_dims[0] is None or op.ins[0] is None:
            return None
        found = self._reduced(op, len(op.ins[0]))
        if found is None or found[0] & set(op.in_dims[0]):
            return None
        reduced, keep = found
        return tuple(d - (0 if keep else sum(r < d for r in reduced)) for d in op.in_dims[0])

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        shape = op.ins[slot]
        if shape is None:
            return None
        found = self._reduced(op, len(shape))
        if found is None:
            return None
        kept = [d for d in range(len(shape)) if found[1] or d not in found[0]]
        return tuple(kept[d] for d in dims) if all(d < len(kept) for d in dims) else None

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        return OpFacts(op.label, problem=self.problem(op, op.in_dims[0]))

    def problem(self, op: Op, in_dims: Dims | None) -> str | None:
        if op.ins[0] is None or in_dims is None:
            return f"{op.label}: slimkit cannot tell which dims hold the channels"
        found = self._reduced(op, len(op.ins[0]))
        if found is None:
            return f"{op.label} reduces over all dimensions, channels included"
        if found[0] & set(in_dims):
            return f"{op.label} works across the channel dimension"
        return None


class Composite(Rule):
    """A function made of several autograd nodes that keeps channel indices (``instance_norm``,
    ``layer_norm`` on some backends, ``F.linear`` on 3-D inputs, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def forward(self, op: Op) -> Dims | None:
        return op.in_dims[0] if op.in_dims else None

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        return dims if slot == 0 else None

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        if self.kind == "module":
            return OpFacts(op.label, problem=f"{op.label} is a functional layer (not a module)")
        if self.kind == "layer_norm":
            return LayerNorm().facts(op, dims)
        if self.kind == "group_norm":
            return GroupNorm().facts(op, dims)
        if self.kind == "pointwise":
            return Pointwise().facts(op, dims)
        if self.kind == "spatial":
            return Pointwise(channel_first=True).facts(op, dims)
        return Pointwise(channel_first=True, vector_leaves=True).facts(op, dims)


POINTWISE_RULE = Pointwise()
RULES: dict[str, Rule] = dict.fromkeys(POINTWISE, POINTWISE_RULE)
RULES.update(dict.fromkeys(SPATIAL, Pointwise(channel_first=True)))
RULES.update(dict.fromkeys(BATCH_NORMS, Pointwise(channel_first=True, vector_leaves=True)))
RULES.update(dict.fromkeys(REDUCTIONS, Reduce(keeps_dims=False)))
RULES.update(dict.fromkeys(DIMWISE, Reduce(keeps_dims=True)))
RULES.update(dict.fromkeys(VIEWS, Reshape()))
RULES.update(dict.fromkeys(("Permute", "Transpose", "T"), Permutation()))
RULES.update(dict.fromkeys(("Slice", "Select", "Split", "SplitWithSizes", "Unbind"), Narrow()))
RULES.update(
    {
        "ConstantPadNd": Pad(),
        "NativeLayerNorm": LayerNorm(),
        "NativeGroupNorm": GroupNorm(),
        "Cat": Concat(),
        "Stack": Stack(),
        "AsStrided": Narrow(),
        COPY_SLICES: CopySlices(),
    }
)
UNKNOWN = Rule()


def rule_for(grad_fn: Any, call: Call | None) -> Rule:
    """The rule of the operation that made ``grad_fn``."""
    rule = RULES.get(base_name(grad_fn), UNKNOWN)
    if call is not None and call.composite and call.func in COMPOSITE:
        return Composite(COMPOSITE[call.func])
    if call is not None and call.composite:  # e.g. reshape = clone + view: judged end to end
        return rule if isinstance(rule, Reshape) else UNKNOWN
    return rule


def input_shapes(grad_fn: Any, call: Call | None) -> list[Shape | None]:
    """Shape per ``next_functions`` slot (``None`` for inputs off the autograd graph)."""
    shapes: list[Shape | None] = []
    for fn, nr in grad_fn.next_functions:
        shapes.append(None if fn is None else output_shape(fn, nr))
    if base_name(grad_fn) == "Cat" and call is not None and len(call.tensor_shapes) == len(shapes):
        shapes = [
            s if s is not None else c for s, c in zip(shapes, call.tensor_shapes, strict=True)
        ]
    return shapes
