"""Turning one Torch-Pruning group into a :class:`ChannelGroup`, or the reason it is left alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch_pruning as tp
from torch import nn

from ._layout import Layout
from ._opbase import Need, OpFacts
from ._tracing import Trace
from ._traverse import Coupling

_OPT = tp.ops.OPTYPE
SkipKind = Literal["unsupported", "output", "ignored", "tied"]
# Tensors Torch-Pruning prunes with each layer type (the rest of a layer's tensors it leaves).
_PRUNED = {
    nn.modules.batchnorm._BatchNorm: {"weight", "bias", "running_mean", "running_var"},
    nn.modules.instancenorm._InstanceNorm: {"weight", "bias"},
    nn.LayerNorm: {"weight", "bias"},
    nn.GroupNorm: {"weight", "bias"},
    nn.PReLU: {"weight"},
    nn.modules.conv._ConvNd: {"weight", "bias"},
    nn.Linear: {"weight", "bias"},
}


@dataclass(frozen=True)
class GroupMember:
    """One layer (or tensor) whose channels a group removes.

    Attributes:
        name: Qualified name in ``named_modules()``; for a bare tensor (``dim`` set), its name in
            ``named_parameters()``/``named_buffers()``.
        module: The layer, or for a bare tensor its ``nn.Parameter`` or owning module.
        kind: ``"out"`` when output channels/features are removed (convs, BatchNorm, depthwise
            convs, tensors), ``"in"`` when input channels/features are removed (consumers).
        idxs: The member's own channel indices that belong to the group.
        root_idxs: For each entry of ``idxs``, the root channel it follows.
        dim: For a bare tensor (parameter or buffer), the dim that loses the channels.
    """

    name: str
    module: nn.Module | nn.Parameter
    kind: Literal["out", "in"]
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]
    dim: int | None = None


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable set of coupled channels, indexed by the output channels of its root.

    Attributes:
        name: Qualified name of the root layer; the group's stable name.
        root: The root conv/linear layer.
        num_channels: Output channels of the root.
        members: Every layer (and tensor) whose channels the group removes, root first.
        ties: Sets of root channels that can only be removed together (grouped convs,
            ``torch.chunk``, channel shuffles, GroupNorm); channels not listed are free.
        root_bn: The BatchNorm right after the root, if any.
        fixed: Root channels that must stay: coupled with an earlier group, or read by code with
            fixed channel bounds (``x[:, :64]``, ``torch.split(x, [a, b])``).
    """

    name: str
    root: nn.Module
    num_channels: int
    members: tuple[GroupMember, ...]
    ties: tuple[tuple[int, ...], ...]
    root_bn: nn.Module | None
    fixed: tuple[int, ...] = ()

    def member_channels(self, member: GroupMember, root_channels: Iterable[int]) -> list[int]:
        """Return the member's channel indices that follow the given root channels (sorted)."""
        wanted = set(root_channels)
        return sorted(
            {i for i, r in zip(member.idxs, member.root_idxs, strict=True) if r in wanted}
        )

    @property
    def free(self) -> list[int]:
        """Root channels the group may remove."""
        fixed = set(self.fixed)
        return [i for i in range(self.num_channels) if i not in fixed]


@dataclass(frozen=True)
class Skip:
    """Why a root layer's channels are left alone.

    ``kind`` is ``"unsupported"`` (slimkit cannot prove the coupling: warned about),
    ``"output"`` (they reach a model output or input), ``"ignored"`` (``ignore=``) or
    ``"tied"`` (no channel can go without all the others).
    """

    reason: str
    kind: SkipKind


@dataclass
class _Scan:
    """What one pass over a Torch-Pruning group collects."""

    members: list[GroupMember] = field(default_factory=list)
    ties: list[list[int]] = field(default_factory=list)
    pinned: dict[int, str] = field(default_factory=dict)
    needs: list[tuple[Need, Any, Any, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    blocked: Skip | None = None
    out_layers: set[nn.Module] = field(default_factory=set)
    params: set[int] = field(default_factory=set)
    gfns: set[Any] = field(default_factory=set)


class Inspector:
    """Checks Torch-Pruning groups of one graph against slimkit's layout and trace."""

    def __init__(
        self, module: nn.Module, dg: Any, trace: Trace, layout: Layout, ignored: frozenset[Any]
    ) -> None:
        self.module, self.dg, self.trace, self.layout = module, dg, trace, layout
        self.ignored = ignored
        self.names: dict[Any, str] = dg._module2name

    def name_of(self, node: Any) -> str:
        names = self.dg._param_to_name if node.type == _OPT.PARAMETER else self.names
        return str(names.get(node.module, node.name))

    def inspect(
        self, name: str, root: nn.Module, coupling: Coupling, covered: Iterable[int]
    ) -> tuple[ChannelGroup | Skip, list[tuple[Any, GroupMember]]]:
        """The group rooted at ``root`` (``coupling`` of its free channels), or a ``Skip``;
        plus its buffer members with the node whose coordinates they follow."""
        scan = _Scan()
        scan.ties = [list(t) for t in coupling.ties]
        for item in coupling.items:
            if item.idxs:
                self._scan_item(scan, item)
        if scan.blocked is not None:
            return scan.blocked, []
        buffers = self._resolve_needs(scan)
        if scan.problems:
            reason = f"cannot prune the channels of '{name}': {scan.problems[0]}"
            return Skip(reason, "unsupported"), []
        return self._finish(name, root, scan, set(covered)), buffers

    def _scan_item(self, scan: _Scan, item: Any) -> None:
        node, idxs, roots = item.dep.target, list(item.idxs), list(item.root_idxs)
        kind = self.layout.kind(node)
        out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
        scan.gfns.add(node.grad_fn)
        if kind == "internal":
            return
        if node.type == _OPT.OUTPUT or (out and node.grad_fn in self.trace.output_fns):
            scan.blocked = Skip("its channels reach a model output", "output")
            return
        if node.grad_fn in self.trace.input_fns:
            scan.blocked = Skip("its channels are added to a model input", "output")
            return
        if kind in ("layer", "pass"):
            self._scan_layer(scan, node, out, idxs, roots)
        if kind == "param":
            dim = node.pruning_dim
            member = GroupMember(
                self.name_of(node), node.module, "out", tuple(idxs), tuple(roots), dim
            )
            scan.members.append(member)
            scan.params.add(id(node.module))
        if kind == "other":
            layer = type(node.module).__name__
            scan.problems.append(f"layer '{self.name_of(node)}' ({layer}) is not supported")
        facts = self.layout.facts.get(node)
        if facts is not None:
            self._apply_facts(scan, node, facts, idxs, roots)

    def _scan_layer(
        self, scan: _Scan, node: Any, out: bool, idxs: list[int], roots: list[int]
    ) -> None:
        layer, name = node.module, self.name_of(node)
        if out and layer in self.ignored:
            scan.blocked = Skip(f"its channels are coupled with ignored layer '{name}'", "ignored")
            return
        member = GroupMember(name, layer, "out" if out else "in", tuple(idxs), tuple(roots))
        scan.members.append(member)
        if out:
            scan.out_layers.add(layer)
        problem = self.layout.layer_problems.get(node)
        limit = self.dg.get_out_channels(layer) if out else self.dg.get_in_channels(layer)
        if problem is None and limit is not None and max(idxs) >= limit:
            problem = f"its channels are broadcast into layer '{name}' with {limit} channels"
        if problem is None and isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            problem = _grouped_conv_problem(layer, name)
        if problem is not None:
            scan.problems.append(problem)

    def _apply_facts(
        self, scan: _Scan, node: Any, facts: OpFacts, idxs: list[int], roots: list[int]
    ) -> None:
        if facts.problem is not None:
            scan.problems.append(facts.problem)
            return
        if facts.pin or facts.keep:
            keep = set(facts.keep)
            for i, r in zip(idxs, roots, strict=True):
                if i < facts.pin or i in keep:
                    scan.pinned.setdefault(r, facts.label)
        for need in facts.needs:
            scan.needs.append((need, node, (tuple(idxs), tuple(roots)), facts.label))

    def _resolve_needs(self, scan: _Scan) -> list[tuple[Any, GroupMember]]:
        """Tensors off the graph spanning the channels: pruned by a member layer, or added as
        buffer members slimkit prunes itself; a problem otherwise."""
        buffers: dict[str, tuple[Any, GroupMember]] = {}
        for need, node, (idxs, roots), label in scan.needs:
            if need.owner is None:
                scan.problems.append(
                    f"{label} combines the channels with a {need.shape} tensor made during the "
                    "forward pass (register it as a buffer so slimkit can prune it)"
                )
                continue
            owner_name, _, attr = need.owner.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            tensor = getattr(owner, attr)
            if id(tensor) in scan.params:
                continue
            if owner in self.dg.module2node or any(isinstance(owner, t) for t in _PRUNED):
                if owner in scan.out_layers and attr in _pruned_attrs(owner):
                    continue
                if not isinstance(owner, nn.modules.instancenorm._InstanceNorm):
                    scan.problems.append(
                        f"{label} uses '{need.owner}', which is not pruned with these channels"
                    )
                    continue
            dim = _owner_dim(tensor.shape, need)
            users = self.trace.leaf_users.get(need.owner, set())
            if dim is None or not users <= scan.gfns:
                where = "in a shape slimkit cannot map" if dim is None else "elsewhere too"
                scan.problems.append(f"{label} uses '{need.owner}' {where}")
                continue
            member = GroupMember(need.owner, owner, "out", idxs, roots, dim)
            buffers.setdefault(need.owner, (node, member))
        for _, member in buffers.values():
            scan.members.append(member)
        return list(buffers.values())

    def _finish(
        self, name: str, root: nn.Module, scan: _Scan, covered: set[int]
    ) -> ChannelGroup | Skip:
        num_channels = self.dg.get_out_channels(root)
        ties = tuple(tuple(t) for t in scan.ties)
        if len({len(t) for t in ties}) > 1 or (
            ties and sum(map(len, ties)) < num_channels - len(covered)
        ):
            reason = (
                f"cannot prune the channels of '{name}': grouped convs, chunks or shuffles tie "
                "them in sets of different sizes"
            )
            return Skip(reason, "unsupported")
        fixed = covered | set(scan.pinned)
        for tie in ties:
            if fixed.intersection(tie):
                fixed.update(tie)
        if len(fixed) == num_channels:
            why = next(iter(scan.pinned.values()), "the coupling with earlier groups")
            return Skip(f"cannot prune the channels of '{name}': {why} keeps them", "unsupported")
        if not fixed and any(len(t) == num_channels for t in ties):
            return Skip(f"no channel of '{name}' can go without all the others", "tied")
        members = sorted(scan.members, key=lambda m: m.module is not root)
        return ChannelGroup(
            name,
            root,
            num_channels,
            tuple(members),
            ties,
            self._root_bn(root),
            tuple(sorted(fixed)),
        )

    def _root_bn(self, root: nn.Module) -> nn.Module | None:
        """The BatchNorm right after the root, through functional batch-norm calls."""
        stack, seen = [self.dg.module2node[root]], set[Any]()
        while stack:
            node = stack.pop()
            for nxt in node.outputs:
                if nxt.type == _OPT.BN:
                    bn: nn.Module = nxt.module
                    return bn
                if (
                    self.layout.kind(nxt) in ("op", "internal")
                    and nxt not in seen
                    and len(seen) < 4
                ):
                    seen.add(nxt)
                    stack.append(nxt)
        return None


def _pruned_attrs(layer: nn.Module) -> set[str]:
    for cls, attrs in _PRUNED.items():
        if isinstance(layer, cls):
            return attrs
    return set()


def _owner_dim(shape: Sequence[int], need: Need) -> int | None:
    """The dim of the owning tensor that spans the channels."""
    if tuple(shape) == need.shape:
        return need.dim
    size = need.shape[need.dim]
    non_one = [d for d, s in enumerate(shape) if s != 1]
    if len(non_one) == 1 and shape[non_one[0]] == size and need.whole_owner:
        return non_one[0]
    return None


def _grouped_conv_problem(conv: nn.modules.conv._ConvNd, name: str) -> str | None:
    """Grouped convs keep ``groups`` (the walk ties their positions); some cannot be pruned."""
    if tp.ops.module2type(conv) == _OPT.DEPTHWISE_CONV:
        return None
    if conv.transposed:
        return f"grouped transposed conv '{name}' is not supported"
    return None
