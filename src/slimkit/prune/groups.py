"""Coupled channel groups, found with Torch-Pruning's dependency graph.

This is the only slimkit module that imports ``torch_pruning``. The rest of slimkit sees plain
data (:class:`ChannelGroup`) and one operation (:meth:`GroupSet.prune`).

A group is every set of channels that must be removed together: the output channels of a root
conv/linear layer and, with the same indices, the BatchNorms, depthwise convs and residual-add
partners that share them plus the input channels of every consumer (through concat, chunk,
upsample, flatten, ...). It is named by the qualified name of its root, the first root in module
order; names are therefore stable across runs and across save/load.

Torch-Pruning treats any operation it does not know as element-wise and silently follows hard-coded
channel slices; slimkit checks each operation a prunable group passes through and raises a
``ValueError`` naming it rather than return a wrong model.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.index_mapping import _SplitIndexMapping

from ._tracing import (
    ExampleInputs,
    OpRecorder,
    Trace,
    call_module,
    grad_fns,
    input_shapes,
    merge_ties,
    op_dim,
    operation_problem,
    output_shape,
    output_shapes,
    tie_by_position,
    traceable_inputs,
)

__all__ = [
    "ChannelGroup",
    "ExampleInputs",
    "GroupMember",
    "GroupSet",
    "IgnoreSpec",
    "channel_groups",
    "prunable_groups",
]

IgnoreSpec = Iterable[nn.Module | str] | nn.Module | str

_OPT = tp.ops.OPTYPE
_OP_TYPES = frozenset(
    {_OPT.ELEMENTWISE, _OPT.RESHAPE, _OPT.SLICE, _OPT.CONCAT, _OPT.SPLIT, _OPT.UNBIND, _OPT.EXPAND}
)
_NON_LAYER_TYPES = _OP_TYPES | {_OPT.OUTPUT, _OPT.PARAMETER, _OPT.CUSTOMIZED}
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_MEMBER_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.PReLU,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass(frozen=True)
class GroupMember:
    """One layer (or parameter) whose channels a group removes.

    Attributes:
        name: Qualified name in ``named_modules()`` (``named_parameters()`` for a bare parameter).
        module: The layer (or ``nn.Parameter``) in the module the group was found on.
        kind: ``"out"`` when output channels/features are removed (convs, BatchNorm, depthwise
            convs), ``"in"`` when input channels/features are removed (consumers).
        idxs: The member's own channel indices that belong to the group.
        root_idxs: For each entry of ``idxs``, the root channel it follows.
    """

    name: str
    module: nn.Module | nn.Parameter
    kind: Literal["out", "in"]
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable set of coupled channels, indexed by the output channels of its root.

    Attributes:
        name: Qualified name of the root layer; the group's stable name.
        root: The root conv/linear layer.
        num_channels: Output channels of the root.
        members: Every layer whose channels the group removes, root first.
        ties: Sets of root channels that can only be removed together (grouped convs,
            ``torch.chunk``); channels not listed are free.
        root_bn: The BatchNorm directly after the root, if any.
    """

    name: str
    root: nn.Module
    num_channels: int
    members: tuple[GroupMember, ...]
    ties: tuple[tuple[int, ...], ...]
    root_bn: nn.Module | None

    def member_channels(self, member: GroupMember, root_channels: Iterable[int]) -> list[int]:
        """Return the member's channel indices that follow the given root channels (sorted)."""
        wanted = set(root_channels)
        return sorted(
            {i for i, r in zip(member.idxs, member.root_idxs, strict=True) if r in wanted}
        )


class GroupSet:
    """The prunable channel groups of one module, on one dependency graph (built once).

    The graph keeps references to ``module``'s layers: :meth:`prune` changes ``module`` in place,
    so build a ``GroupSet`` on a copy when the original must stay untouched.
    """

    def __init__(
        self, module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
    ) -> None:
        """Trace ``module`` and find its groups.

        Args:
            module: Any ``nn.Module``; its ``prune_ignore`` attributes are honoured.
            example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
            ignore: Modules of ``module`` or their qualified names never to be group roots.

        Raises:
            ValueError: On an unknown ignore name, or when a prunable group passes through an
                operation or layer whose channel coupling slimkit cannot follow.
        """
        self.module = module
        self._example_inputs = example_inputs
        self._ignored = _resolve_ignore(module, ignore)
        self._dg, self._trace = _build_graph(module, example_inputs)
        self._splits = _take_over_channel_splits(self._dg)
        self._data = _data_nodes(self._dg, self._trace)
        self._names: dict[Any, str] = self._dg._module2name
        self.groups: dict[str, ChannelGroup] = {}
        self._find_groups()

    @property
    def names(self) -> list[str]:
        """Names of the prunable groups, in module order."""
        return list(self.groups)

    def get(self, name: str) -> ChannelGroup:
        """Return the group called ``name``; a ``ValueError`` lists the valid names."""
        if name not in self.groups:
            raise unknown_group_error(name, self.names)
        return self.groups[name]

    def prune(self, name: str, drop: Sequence[int]) -> None:
        """Remove the root channels ``drop`` (and their coupled channels) of group ``name``."""
        group = self.get(name)
        if not drop:
            return
        pruner = self._dg.get_pruner_of_module(group.root)
        tp_group = self._dg.get_pruning_group(group.root, pruner.prune_out_channels, list(drop))
        tp_group.prune()
        for item in tp_group.items:  # channel splits now have smaller chunks
            split = self._splits.get(item.dep.target)
            if split is not None:
                offsets = list(itertools.accumulate(split.sizes, initial=0))
                for i in item.idxs:
                    split.sizes[bisect.bisect_right(offsets, i) - 1] -= 1
                _map_split(item.dep.target, split)

    @contextlib.contextmanager
    def pruned(self, name: str, drop: Sequence[int]) -> Iterator[nn.Module]:
        """``self.module`` with the root channels ``drop`` of group ``name`` removed in place,
        for a ``with`` block only: each layer gets what :meth:`prune` would give it, then its own
        tensors and settings back. The graph is never changed, so one trace serves any number of
        variants (the sensitivity analysis prunes every point this way)."""
        group = self.get(name)
        pruner = self._dg.get_pruner_of_module(group.root)
        tp_group = self._dg.get_pruning_group(group.root, pruner.prune_out_channels, list(drop))
        saved: dict[int, tuple[Any, dict[str, Any]]] = {}
        params: list[tuple[nn.Module, str, nn.Parameter]] = []
        try:
            for item in tp_group.items if drop else ():
                node = item.dep.target
                if node.type == _OPT.PARAMETER:  # a bare parameter: set the pruned one on its owner
                    owner, _, attr = self._dg._param_to_name[node.module].rpartition(".")
                    params.append((self.module.get_submodule(owner), attr, node.module))
                    setattr(params[-1][0], attr, item.dep(item.idxs))
                elif node.type not in _OP_TYPES and node.type != _OPT.OUTPUT:
                    layer = node.module  # keep what pruning rebinds: attributes, tensor tables
                    tables = {
                        "_parameters": dict(layer._parameters),
                        "_buffers": dict(layer._buffers),
                    }
                    saved.setdefault(id(layer), (layer, {**vars(layer), **tables}))
                    item.dep(item.idxs)
            yield self.module
        finally:
            for module, state in saved.values():
                module.__dict__.clear()
                module.__dict__.update(state)
            for owner_module, attr, param in reversed(params):
                setattr(owner_module, attr, param)

    def verify(self) -> None:
        """Check that the module still runs on the example inputs with unchanged output shapes.

        Raises:
            ValueError: If it fails or an output shape changed (a coupling that was missed).
        """
        modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        try:
            with torch.no_grad():
                shapes = output_shapes(call_module(self.module, self._example_inputs))
        except RuntimeError as err:
            raise ValueError(
                f"the pruned model no longer runs on example_inputs ({err}); slimkit missed a "
                "channel coupling: pass the layers involved in ignore= and please report it"
            ) from err
        finally:
            for m, mode in modes.items():
                m.training = mode
        if shapes != self._trace.output_shapes:
            raise ValueError(
                f"pruning changed the output shapes {self._trace.output_shapes} -> {shapes}; "
                "slimkit missed a channel coupling: pass the layers involved in ignore="
            )

    def _find_groups(self) -> None:
        """Walk root candidates in module order, one group per set of coupled channels."""
        covered: dict[nn.Module, set[int]] = {}
        deferred: list[tuple[str, nn.Module]] = []
        for name, layer in self.module.named_modules():
            if not self._is_root_candidate(layer):
                continue
            done = covered.get(layer, set())
            if done:
                if len(done) < self._dg.get_out_channels(layer):
                    deferred.append((name, layer))
                continue
            pruner = self._dg.get_pruner_of_module(layer)
            channels = list(range(pruner.get_out_channels(layer)))
            tp_group = self._dg.get_pruning_group(layer, pruner.prune_out_channels, channels)
            for item in tp_group.items:
                if self._dg.is_out_channel_pruning_fn(item.dep.handler):
                    covered.setdefault(item.dep.target.module, set()).update(item.idxs)
            group = self._inspect(name, layer, tp_group)
            if group is not None:
                self.groups[name] = group
        for name, layer in deferred:
            if len(covered[layer]) < self._dg.get_out_channels(layer):
                raise ValueError(
                    f"the output channels of '{name}' are only partly coupled with the groups of "
                    "earlier layers (e.g. a concat added to a wider tensor); slimkit cannot name "
                    f"one group for them: pass '{name}' and its partners in ignore="
                )

    def _is_root_candidate(self, layer: nn.Module) -> bool:
        return (
            isinstance(layer, _ROOT_TYPES)
            and layer in self._dg.module2node
            and layer not in self._ignored
            and tp.ops.module2type(layer) != _OPT.DEPTHWISE_CONV
        )

    def _inspect(self, name: str, root: nn.Module, tp_group: Any) -> ChannelGroup | None:
        """Turn a Torch-Pruning group into a :class:`ChannelGroup`; ``None`` if not prunable."""
        members: list[GroupMember] = []
        ties: list[list[int]] = []
        problems: list[str] = []
        blocked = False
        for item in tp_group.items:
            node, idxs, root_idxs = item.dep.target, list(item.idxs), list(item.root_idxs)
            if not idxs:
                continue
            out = self._dg.is_out_channel_pruning_fn(item.dep.handler)
            if node.type == _OPT.OUTPUT or (out and node.grad_fn in self._trace.boundary_fns):
                blocked = True  # the group would change a model output or input
                continue
            if node.type not in _OP_TYPES:
                if out and node.module in self._ignored:
                    blocked = True
                member_name = self._names.get(node.module, node.name)
                kind: Literal["out", "in"] = "out" if out else "in"
                members.append(
                    GroupMember(member_name, node.module, kind, tuple(idxs), tuple(root_idxs))
                )
            problem, node_ties = self._check_node(node, out, idxs, root_idxs)
            if problem is not None:
                problems.append(problem)
            ties.extend(node_ties)
        if blocked:
            return None
        if problems:
            raise ValueError(
                f"cannot prune the channels of '{name}': {problems[0]}. Pass '{name}' in ignore= "
                "to leave this group alone."
            )
        num_channels = self._dg.get_out_channels(root)
        tie_sets = merge_ties(ties, num_channels, name)
        if any(len(t) == num_channels for t in tie_sets):
            return None  # every channel is tied to every other: nothing can be removed
        root_node = self._dg.module2node[root]
        bn = next((n.module for n in root_node.outputs if n.type == _OPT.BN), None)
        return ChannelGroup(name, root, num_channels, tuple(members), tie_sets, bn)

    def _check_node(
        self, node: Any, out: bool, idxs: list[int], root_idxs: list[int]
    ) -> tuple[str | None, list[list[int]]]:
        """Return a reason the group cannot follow ``node`` (or ``None``) and its channel ties."""
        if node.type == _OPT.PARAMETER:
            return None, []
        if node.type in _OP_TYPES:
            if node not in self._data:
                return None, []  # e.g. Linear's weight transpose: not on the activation path
            if node.type == _OPT.SPLIT:
                return self._split_ties(node, idxs, root_idxs)
            return self._op_problem(node), []
        layer, name = node.module, self._names.get(node.module, node.name)
        if not isinstance(layer, _MEMBER_TYPES):
            return f"layer '{name}' ({type(layer).__name__}) mixes or normalises channels", []
        limit = self._dg.get_out_channels(layer) if out else self._dg.get_in_channels(layer)
        if limit is not None and max(idxs) >= limit:
            return f"its channels are broadcast into layer '{name}' with {limit} channels", []
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            return _grouped_conv_ties(layer, name, out, idxs, root_idxs)
        return None, []

    def _split_ties(
        self, node: Any, idxs: list[int], root_idxs: list[int]
    ) -> tuple[str | None, list[list[int]]]:
        """A channel split survives pruning only as ``torch.chunk`` into equal parts."""
        grad_fn, label, split = node.grad_fn, self._op_label(node), self._splits[node]
        if -1 in split.edge_chunks:
            return f"{label}: slimkit cannot tell which chunk each consumer reads", []
        func = self._trace.ops.get(grad_fn, (grad_fn.name(),))[0]
        if func != "chunk" or len(set(split.sizes)) > 1:
            return (
                f"{label} splits channels into parts of fixed sizes {split.sizes}; only "
                "torch.chunk into equal parts can be pruned",
                [],
            )
        size = split.sizes[0]
        return tie_by_position(idxs, root_idxs, size, len(split.sizes), label)

    def _op_problem(self, node: Any) -> str | None:
        """Why channels cannot be followed through an operation, or ``None`` when they can."""
        grad_fn, label = node.grad_fn, self._op_label(node)
        if node.type == _OPT.CONCAT:
            return None
        if node.type == _OPT.SLICE:
            return f"{label} slices the channel dimension with fixed bounds"
        if node.type == _OPT.UNBIND:
            return f"{label} unbinds a tensor along its channels"
        ins, out = input_shapes(grad_fn), output_shape(grad_fn)
        if node.type == _OPT.RESHAPE:
            return self._reshape_problem(node, label, ins[0] if ins else (), out)
        return operation_problem(grad_fn, label, self._trace.ops.get(grad_fn, ("", []))[1])

    def _reshape_problem(
        self, node: Any, label: str, src: tuple[int, ...], out: tuple[int, ...]
    ) -> str | None:
        """Allow reshapes that keep dim 1 as channels, and ``flatten(1)`` before a Linear."""
        if len(src) >= 2 and len(out) >= 2 and src[:2] == out[:2]:
            return None
        if len(out) == 2 and len(src) >= 3 and out == (src[0], math.prod(src[1:])):
            stride = math.prod(src[2:])
            for in_node in node.inputs:
                for dep in in_node.dependencies:
                    mapping = dep.index_mapping[0]
                    if dep.target is node and getattr(mapping, "_stride", None) == stride:
                        return None
            return f"{label} flattens {src} in a way the dependency graph did not map"
        return f"{label} reshapes {src} -> {out}, mixing channels with other dimensions"

    def _op_label(self, node: Any) -> str:
        """``"operation 'permute' after layer 'blocks.3.conv'"`` for error messages."""
        func = self._trace.ops.get(node.grad_fn, (node.grad_fn.name(),))[0]
        seen, stack = set(), list(node.inputs)
        while stack:
            prev = stack.pop(0)
            if prev in seen:
                continue
            seen.add(prev)
            if prev.type not in _NON_LAYER_TYPES:
                return f"operation '{func}' after layer '{self._names.get(prev.module, prev.name)}'"
            stack.extend(prev.inputs)
        return f"operation '{func}'"


def prunable_groups(
    module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
) -> list[str]:
    """Return the names of every prunable set of coupled channels of ``module``.

    Args:
        module: Any ``nn.Module`` (left untouched); its ``prune_ignore`` names are honoured.
        example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
        ignore: Modules of ``module`` or their qualified names never to be pruned as a group root.

    Returns:
        Group names (qualified names of the root layers), in module order. Groups feeding a model
        output, coupled with an ignored layer's outputs, or touching the model input are left out.

    Raises:
        ValueError: If a group's coupling cannot be followed (the message names the layer).
    """
    return GroupSet(module, example_inputs, ignore).names


def channel_groups(
    module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
) -> list[ChannelGroup]:
    """Like :func:`prunable_groups`, but return the groups with their members and indices."""
    return list(GroupSet(module, example_inputs, ignore).groups.values())


def unknown_group_error(name: str, valid: Sequence[str]) -> ValueError:
    """A ``ValueError`` for an unknown group name, with close matches and all valid names."""
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown group {name!r}.{hint} Valid groups: {', '.join(valid) or 'none'}.")


def _resolve_ignore(module: nn.Module, ignore: IgnoreSpec) -> frozenset[nn.Module]:
    """Ignored modules (with all their submodules) from ``ignore`` and ``prune_ignore``."""
    by_name = dict(module.named_modules())
    items = [ignore] if isinstance(ignore, str | nn.Module) else list(ignore)
    for prefix, sub in by_name.items():
        for rel in getattr(sub, "prune_ignore", None) or ():
            items.append(f"{prefix}.{rel}" if prefix else rel)
    known = set(map(id, by_name.values()))
    ignored: set[nn.Module] = set()
    for item in items:
        if isinstance(item, str):
            if item not in by_name:
                close = difflib.get_close_matches(item, list(by_name), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"ignore names no module {item!r} of the model.{hint}")
            item = by_name[item]
        elif not isinstance(item, nn.Module):
            raise TypeError(f"ignore takes modules or qualified names, got {type(item).__name__}")
        elif id(item) not in known:
            raise ValueError(f"ignore holds a {type(item).__name__} that is not part of the model")
        ignored.update(item.modules())
    return frozenset(ignored)


def _build_graph(module: nn.Module, example_inputs: ExampleInputs) -> tuple[Any, Trace]:
    """Trace ``module`` once: the dependency graph plus what :class:`Trace` records."""
    args, kwargs = traceable_inputs(example_inputs)
    recorder, outputs = OpRecorder(), []

    def forward_fn(model: nn.Module, _: Any) -> Any:
        with recorder:
            outputs.append(model(*args, **kwargs))
        return outputs[-1]

    modes = {m: m.training for m in module.modules()}
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                module, example_inputs=args, forward_fn=forward_fn, verbose=False
            )
    finally:
        for m, mode in modes.items():
            m.training = mode
    trace = Trace(
        recorder.ops,
        grad_fns((args, kwargs)),
        grad_fns(outputs[-1]),
        output_shapes(outputs[-1]),
    )
    _drop_non_channel_mappings(dg, trace)
    return dg, trace


def _drop_non_channel_mappings(dg: Any, trace: Trace) -> None:
    """Concat/split/slice along a non-channel dim couple channels one to one.

    Torch-Pruning reads a negative ``dim`` as the channel dim; turn such nodes into plain
    element-wise nodes and clear the index mappings it already set.
    """
    for node in dg.module2node.values():
        if node.type not in (_OPT.CONCAT, _OPT.SPLIT, _OPT.SLICE):
            continue
        dim = op_dim(node.grad_fn)
        if dim is None or dim == 1:
            continue
        slot = 1 if node.type == _OPT.CONCAT else 0
        node.type, node.enable_index_mapping = _OPT.ELEMENTWISE, False
        for dep in node.dependencies:
            dep.index_mapping[slot] = None
        for other in (*node.inputs, *node.outputs):
            for dep in other.dependencies:
                if dep.target is node:
                    dep.index_mapping[slot] = None


@dataclass
class _Split:
    """A channel split's chunk sizes and, per outgoing edge of its node, the chunk it carries."""

    sizes: list[int]
    edge_chunks: list[int]


def _take_over_channel_splits(dg: Any) -> dict[Any, _Split]:
    """Map channel splits (chunk/split along dim 1) by the chunk each consumer really reads.

    Torch-Pruning assumes the i-th consumer of a split reads the i-th chunk, which breaks when a
    chunk has several consumers (or none). The autograd graph says which chunk (``output_nr``)
    each consumer reads; slimkit sets the index mappings from that and keeps them up to date.
    """
    splits = {}
    for node in dg.module2node.values():
        if node.type != _OPT.SPLIT:
            continue
        grad_fn = node.grad_fn
        sizes = getattr(grad_fn, "_saved_split_sizes", None)
        if sizes is None:
            size, total = grad_fn._saved_split_size, grad_fn._saved_self_sym_sizes[1]
            sizes = [min(size, total - start) for start in range(0, total, size)]
        seen: dict[Any, int] = {}
        edge_chunks = []
        for consumer in node.outputs:
            nrs = [nr for fn, nr in consumer.grad_fn.next_functions if fn is grad_fn]
            k = seen[consumer] = seen.get(consumer, -1) + 1
            edge_chunks.append(nrs[k] if k < len(nrs) else -1)
        node.enable_index_mapping = False  # stop Torch-Pruning from remapping it
        splits[node] = _Split(list(sizes), edge_chunks)
        if -1 not in edge_chunks:  # else groups through it report it (see _split_ties)
            _map_split(node, splits[node])
    if splits:  # concat sizes were inferred from the wrong split sizes: infer them again
        for node in dg.module2node.values():
            if node.type == _OPT.CONCAT:
                node.module.concat_sizes = None
        tp.dependency.index_mapping.update_index_mapping(dg)
    return splits


def _map_split(node: Any, split: _Split) -> None:
    """Set the index mappings between a split node and its consumers from the chunk sizes."""
    offsets = list(itertools.accumulate(split.sizes, initial=0))
    node.module.split_sizes = [split.sizes[k] for k in split.edge_chunks]
    node.module.offsets = offsets
    out_deps = node.dependencies[len(node.inputs) :]
    seen: dict[Any, int] = {}
    for dep, consumer, k in zip(out_deps, node.outputs, split.edge_chunks, strict=True):
        offset = offsets[k : k + 2]
        dep.index_mapping[0] = _SplitIndexMapping(offset=offset, reverse=False)
        nth = seen[consumer] = seen.get(consumer, -1) + 1
        slot = [j for j, n in enumerate(consumer.inputs) if n is node][nth]
        consumer.dependencies[slot].index_mapping[0] = _SplitIndexMapping(
            offset=offset, reverse=True
        )


def _data_nodes(dg: Any, trace: Trace) -> set[Any]:
    """Nodes downstream of a layer or a model input, i.e. on the activation path."""
    stack = [
        n
        for n in dg.module2node.values()
        if n.type not in _NON_LAYER_TYPES or n.grad_fn in trace.input_fns
    ]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.outputs)
    return seen


def _grouped_conv_ties(
    conv: nn.modules.conv._ConvNd, name: str, out: bool, idxs: list[int], root_idxs: list[int]
) -> tuple[str | None, list[list[int]]]:
    """Grouped convs keep ``groups``: each group loses the channels at the same positions."""
    if tp.ops.module2type(conv) == _OPT.DEPTHWISE_CONV:
        if conv.in_channels != conv.out_channels:
            return f"depthwise conv '{name}' changes the channel count", []
        return None, []
    if conv.transposed:
        return f"grouped transposed conv '{name}' is not supported", []
    per_group = (conv.out_channels if out else conv.in_channels) // conv.groups
    return tie_by_position(idxs, root_idxs, per_group, conv.groups, f"grouped conv '{name}'")
