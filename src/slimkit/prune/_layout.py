"""Where the channels lie in every tensor of a traced model, and the index mappings between nodes.

:class:`Layout` reads a Torch-Pruning dependency graph together with slimkit's :class:`Trace`:

1. channel dims of every node's output, seeded at conv/linear layers and propagated through the
   operations (forwards and backwards) by the rules in :mod:`._oprules`;
2. per operation, what a group passing through it must respect (:class:`OpFacts`);
3. every dependency's index mapping, replacing Torch-Pruning's own (which guesses channel counts
   by recursion and breaks on dual-path, shuffle and slicing patterns). Mappings are static, in
   the coordinates of the original model; :class:`~slimkit.prune.groups.GroupSet` translates them
   to the current channels of each layer when it prunes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp

from ._mapping import Mapping, chain, inverse
from ._opbase import Conflict, Dims, Op, OpFacts, Rule, Shape
from ._oprules import Composite, Pointwise, input_shapes, rule_for
from ._tracing import Trace, output_shape

_OPT = tp.ops.OPTYPE
OP_TYPES = frozenset(
    {_OPT.ELEMENTWISE, _OPT.RESHAPE, _OPT.SLICE, _OPT.CONCAT, _OPT.SPLIT, _OPT.UNBIND, _OPT.EXPAND}
)
PASS_TYPES = frozenset({_OPT.BN, _OPT.LN, _OPT.GN, _OPT.IN, _OPT.PRELU})  # keep channel indices
LAYER_TYPES = frozenset({_OPT.CONV, _OPT.DEPTHWISE_CONV, _OPT.LINEAR})
_LAYER_FUNCS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d"})
_LAYER_FUNCS |= {"conv_transpose3d", "linear", "_conv_forward", "convolution"}


@dataclass(frozen=True)
class Edge:
    """Output ``nr`` of node ``src`` is input ``slot`` of ``dst``'s autograd node ``fn``."""

    src: Any
    nr: int
    dst: Any
    slot: int
    fn: Any


class Layout:
    """Channel dims, operation facts and index mappings of one traced model."""

    def __init__(self, dg: Any, trace: Trace, names: dict[Any, str]) -> None:
        self.dg, self.trace, self._names = dg, trace, names
        self.node_of = {
            fn: dg.module2node[m] for fn, m in dg._gfn2module.items() if m in dg.module2node
        }
        self.edges_in: dict[Any, list[Edge]] = defaultdict(list)
        self.edges_out: dict[Any, list[Edge]] = defaultdict(list)
        for fn, node in self.node_of.items():
            for slot, (prev, nr) in enumerate(fn.next_functions):
                src = self.node_of.get(prev)
                if src is not None:
                    edge = Edge(src, nr, node, slot, fn)
                    self.edges_in[node].append(edge)
                    self.edges_out[src].append(edge)
        self.data = self._data_nodes()
        self.dims: dict[Any, Dims] = {}
        self.conflicts: dict[Any, str] = {}
        self._propagate()
        self.facts: dict[Any, OpFacts] = {}
        self.layer_problems: dict[Any, str] = {}
        for node in dg.module2node.values():
            self._analyse(node)
        self._install_mappings()

    # ------------------------------------------------------------------------------ queries
    def kind(self, node: Any) -> str:
        """``"layer"`` (conv/linear), ``"pass"`` (BN-like), ``"param"``, ``"op"``, ``"internal"``
        (inside another call, or off the activation path) or ``"other"``."""
        if node.type in LAYER_TYPES:
            return "layer"
        if node.type in PASS_TYPES:
            return "pass"
        if node.type == _OPT.PARAMETER:
            return "param"
        if node.type in OP_TYPES:
            call = self.trace.calls.get(node.grad_fn)
            if (call is not None and call.internal) or node not in self.data:
                return "internal"
            return "op"
        return "other"

    def label(self, node: Any) -> str:
        """``"operation 'permute' after layer 'blocks.3.conv'"`` for messages."""
        func = self.trace.func(node.grad_fn)
        if self.kind(node) in ("layer", "pass"):
            return f"layer '{self._names.get(node.module, node.name)}'"
        seen, stack = set(), list(node.inputs)
        while stack:
            prev = stack.pop(0)
            if prev in seen:
                continue
            seen.add(prev)
            if self.kind(prev) in ("layer", "pass"):
                return f"operation '{func}' after layer '{self._names.get(prev.module, prev.name)}'"
            stack.extend(prev.inputs)
        return f"operation '{func}'"

    # ---------------------------------------------------------------------------- building
    def _data_nodes(self) -> set[Any]:
        """Nodes downstream of a layer, a bare parameter or a model input (not, e.g., the
        transpose of a Linear's own weight)."""
        stack = [
            n
            for n in self.dg.module2node.values()
            if n.type not in OP_TYPES | {_OPT.OUTPUT} or n.grad_fn in self.trace.input_fns
        ]
        seen: set[Any] = set()
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(e.dst for e in self.edges_out.get(node, ()))
        return seen

    def _rule(self, node: Any) -> Rule | None:
        """The rule of an op-like node (operations, BN-like layers, parameters)."""
        kind = self.kind(node)
        if kind in ("op", "pass"):
            return rule_for(node.grad_fn, self.trace.calls.get(node.grad_fn))
        return None

    def op(self, node: Any, fn: Any = None) -> Op:
        """What the rules see of ``node`` (its autograd node ``fn``, by default its own)."""
        fn = fn if fn is not None else node.grad_fn
        call = self.trace.calls.get(fn)
        if call is not None and call.composite:
            producers = [self.node_of.get(g) for g, _ in call.inputs]
            known = [self.dims.get(p) if p is not None else None for p in producers]
            shapes: list[Shape | None] = [output_shape(g, nr) for g, nr in call.inputs]
            return Op(fn, call, output_shape(fn), shapes, known, self.label(node))
        ins = input_shapes(fn, call)
        in_dims: list[Dims | None] = [None] * len(ins)
        for slot, (prev, _) in enumerate(fn.next_functions):
            src = self.node_of.get(prev)
            if src is not None:
                in_dims[slot] = self.dims.get(src)
        return Op(fn, call, output_shape(fn), ins, in_dims, self.label(node))

    def _seed(self, node: Any) -> Dims | None:
        if node.type not in LAYER_TYPES:
            return None
        nd = len(output_shape(node.grad_fn))
        if node.type == _OPT.LINEAR:
            return (nd - 1,)
        return (1,) if nd >= 2 else None

    def _topological(self) -> list[Any]:
        """Nodes with every producer before its consumers."""
        pending = {n: len(self.edges_in.get(n, ())) for n in self.dg.module2node.values()}
        ready = [n for n, k in pending.items() if k == 0]
        order = []
        while ready:
            node = ready.pop()
            order.append(node)
            for edge in self.edges_out.get(node, ()):
                pending[edge.dst] -= 1
                if pending[edge.dst] == 0:
                    ready.append(edge.dst)
        return order + [n for n, k in pending.items() if k > 0]

    def _propagate(self) -> None:
        """Channel dims for every node: seeded at layers, spread through operations."""
        for node in self.dg.module2node.values():
            seed = self._seed(node)
            if seed is not None:
                self.dims[node] = seed
        order = [n for n in self._topological() if self._rule(n) is not None]
        for _ in range(8):  # forward then backward passes until nothing changes
            changed = False
            for node in order:
                changed |= self._forward(node)
            for node in reversed(order):
                changed |= self._backward(node)
            if not changed:
                break

    def _forward(self, node: Any) -> bool:
        if node in self.dims or node in self.conflicts:
            return False
        try:
            dims = self._rule(node).forward(self.op(node))  # type: ignore[union-attr]
        except Conflict as err:
            self.conflicts[node] = str(err)
            return False
        if dims is None:
            return False
        self.dims[node] = dims
        return True

    def _backward(self, node: Any) -> bool:
        """Unknown dims of ``node``'s producers (operations, parameters) from its own."""
        rule = self._rule(node)
        if node not in self.dims or rule is None or isinstance(rule, Composite):
            return False
        changed = False
        op = self.op(node)
        for edge in self.edges_in.get(node, ()):
            if edge.src in self.dims or self.kind(edge.src) not in ("op", "param", "pass"):
                continue
            if edge.fn is not node.grad_fn:
                continue
            dims = rule.backward(op, self.dims[node], edge.slot)
            if dims is not None:
                self.dims[edge.src] = dims
                changed = True
        return changed

    def _analyse(self, node: Any) -> None:
        """Facts of an op-like node; input checks of a conv/linear layer."""
        kind = self.kind(node)
        if kind == "layer":
            self._check_layer(node)
            return
        if kind == "param":
            dims = self.dims.get(node)
            if dims is None or len(dims) != 1:
                self.facts[node] = OpFacts(
                    self.label(node),
                    problem=f"parameter '{node.name}' is combined with the "
                    "channels in a way slimkit cannot read",
                )
            else:
                node.pruning_dim = dims[0]
            return
        rule = self._rule(node)
        if rule is None:
            return
        op, label = self.op(node), self.label(node)
        if node in self.conflicts:
            self.facts[node] = OpFacts(label, problem=self.conflicts[node])
            return
        dims = op.in_dims[0] if rule.input_dims and op.in_dims else self.dims.get(node)
        if dims is None:
            problem = f"{label}: slimkit cannot tell which dims hold the channels"
            self.facts[node] = OpFacts(label, problem=problem)
            return
        self.facts[node] = rule.facts(op, dims)

    def _check_layer(self, node: Any) -> None:
        """A conv/linear layer must read the channels where it expects them."""
        call = self.trace.calls.get(node.grad_fn)
        func = self.trace.func(node.grad_fn)
        label = self.label(node)
        if func not in _LAYER_FUNCS and not isinstance(rule_for(node.grad_fn, call), Pointwise):
            self.layer_problems[node] = f"{label} ends with operation '{func}'"
            return
        if call is None or not call.inputs or func not in _LAYER_FUNCS:
            return
        prev, nr = call.inputs[0]
        src = self.node_of.get(prev)
        dims = self.dims.get(src) if src is not None else None
        if dims is None:
            return
        nd = len(output_shape(prev, nr))
        want = (nd - 1,) if node.type == _OPT.LINEAR else (1,)
        if dims != want:
            self.layer_problems[node] = (
                f"{label} reads features on dim {want[0]} but the channels are on dims {dims}"
            )

    # ---------------------------------------------------------------------------- mappings
    def _in_map(self, edge: Edge) -> Mapping | None:
        rule = self._rule(edge.dst)
        if rule is None or edge.dst not in self.dims:
            return None
        op = self.op(edge.dst, edge.fn)
        if op.call is not None and op.call.composite:  # edges come from its internal nodes
            return rule.in_map(op, self.dims[edge.dst], 0)
        return rule.in_map(op, self.dims[edge.dst], edge.slot)

    def _out_map(self, edge: Edge) -> Mapping | None:
        rule = self._rule(edge.src)
        if rule is None or not rule.narrowing:
            return None
        op = self.op(edge.src)
        dims = op.in_dims[0] if op.in_dims else None
        return None if dims is None else rule.out_map(op, dims, edge.nr)

    def _install_mappings(self) -> None:
        """Set every dependency's index mapping; make Torch-Pruning leave them alone."""
        for node in self.dg.module2node.values():
            if node.type in OP_TYPES:
                node.type = _OPT.ELEMENTWISE  # Torch-Pruning only remaps typed op nodes
                node.enable_index_mapping = False
            for dep in node.dependencies:
                dep.index_mapping = [None, None]
        pairs: dict[tuple[Any, Any], list[Edge]] = defaultdict(list)
        for node in self.dg.module2node.values():
            for edge in self.edges_in.get(node, ()):
                pairs[(edge.src, edge.dst)].append(edge)
        for (src, dst), edges in pairs.items():
            maps = [chain(self._out_map(e), self._in_map(e)) for e in edges]
            if len(set(map(repr, maps))) > 1 and len({e.fn for e in edges}) > 1:
                self.layer_problems.setdefault(
                    dst, f"{self.label(dst)} uses one tensor in several places"
                )
            forward = [d for d in src.dependencies[len(src.inputs) :] if d.target is dst]
            backward = [d for d in dst.dependencies[: len(dst.inputs)] if d.target is src]
            for dep, mapping in zip(forward, maps, strict=False):
                dep.index_mapping[0] = mapping
            for dep, mapping in zip(backward, maps, strict=False):
                dep.index_mapping[0] = inverse(mapping)
