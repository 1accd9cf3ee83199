"""Coupled channel groups, found with Torch-Pruning's dependency graph.

Only this package's private modules import ``torch_pruning``. The rest of slimkit sees plain data
(:class:`ChannelGroup`) and one operation (:meth:`GroupSet.remove`).

A group is every set of channels that must be removed together: the output channels of a root
conv/linear layer and, with the same indices, the BatchNorms, depthwise convs, residual-add and
concat partners, buffers added per channel, and the input channels of every consumer. It is named
by the qualified name of its root, the first root in module order; names are stable across runs
and across save/load.

slimkit follows the channels through every operation itself (:mod:`._layout`, rules in
:mod:`._oprules`) instead of trusting Torch-Pruning's guesses. A group whose coupling it cannot
prove is *left unpruned* with the reason (:attr:`GroupSet.skipped`); it never fails the model.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from slimkit._utils import eval_mode

from ._graph import build_graph
from ._inspect import ChannelGroup, GroupMember, Inspector, Skip
from ._layout import OP_TYPES, Layout
from ._tracing import ExampleInputs, call_module, output_shapes
from ._traverse import Coupling, positions, traverse

__all__ = [
    "ChannelGroup",
    "ExampleInputs",
    "GroupMember",
    "GroupSet",
    "IgnoreSpec",
    "UnprunedGroupsWarning",
    "resolve_ignore",
]

IgnoreItem = nn.Module | str | type[nn.Module]
IgnoreSpec = Iterable[IgnoreItem] | IgnoreItem
_OPT = tp.ops.OPTYPE
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class UnprunedGroupsWarning(UserWarning):
    """Some groups are left unpruned because slimkit cannot prove their channel coupling."""


class GroupSet:
    """The channel groups of one module, on one dependency graph (built once).

    The graph keeps references to ``module``'s layers: :meth:`remove` changes ``module`` in
    place, so build a ``GroupSet`` on a copy when the original must stay untouched.

    Attributes:
        groups: The prunable groups by name, in module order.
        skipped: Root layers whose channels are left alone, with the reason.
        coupled: Root layers whose channels all belong to an earlier group, with that group.
    """

    def __init__(
        self, module: nn.Module, example_inputs: ExampleInputs, ignore: IgnoreSpec = ()
    ) -> None:
        """Trace ``module`` and find its groups.

        Args:
            module: Any ``nn.Module``; its ``prune_ignore`` attributes are honoured.
            example_inputs: A tensor, a tuple of positional inputs or a dict of keyword inputs.
            ignore: Modules of ``module``, their qualified names, or module types whose
                instances are never group roots.

        Raises:
            ValueError: On an unknown ignore name or a model that fails on ``example_inputs``.
            TypeError: On ``example_inputs`` or ``ignore`` of the wrong type.
        """
        self.module = module
        self._example_inputs = example_inputs
        self._ignored = frozenset(
            m for n in resolve_ignore(module, ignore) for m in module.get_submodule(n).modules()
        )
        self._dg, self._trace = build_graph(module, example_inputs)
        self._names: dict[Any, str] = self._dg._module2name
        try:
            self.layout = Layout(self._dg, self._trace, self._names)
        except Exception as err:  # a bug in slimkit: say so instead of a bare traceback
            raise ValueError(
                f"slimkit could not read the model's graph ({type(err).__name__}: {err}); "
                "please report it with the model definition"
            ) from err
        self._inspector = Inspector(module, self._dg, self._trace, self.layout, self._ignored)
        self._tied = positions(self.layout, self._dg)
        self.groups: dict[str, ChannelGroup] = {}
        self.skipped: dict[str, Skip] = {}
        self.coupled: dict[str, str] = {}
        self._buffers: dict[str, list[tuple[Any, GroupMember]]] = {}
        self._alive: dict[tuple[str, Any], list[int]] = {}
        self._find_groups()

    @property
    def names(self) -> list[str]:
        """Names of the prunable groups, in module order."""
        return list(self.groups)

    @property
    def unsupported(self) -> dict[str, str]:
        """Groups left unpruned because their coupling cannot be proven: ``{name: reason}``."""
        return {n: s.reason for n, s in self.skipped.items() if s.kind == "unsupported"}

    def get(self, name: str) -> ChannelGroup:
        """Return the group called ``name``.

        Raises:
            ValueError: If it is not prunable (with the reason) or unknown (with the valid names).
        """
        if name in self.groups:
            return self.groups[name]
        raise group_error(name, self)

    def prune(self, name: str, drop: Sequence[int]) -> None:
        """Remove channels of group ``name`` given as positions among the root's current output
        channels (after earlier calls removed some), with their coupled channels."""
        alive = self._alive_of(("out", self._dg.module2node[self.get(name).root]))
        self.remove(name, [alive[i] for i in drop])

    def remove(self, name: str, channels: Iterable[int]) -> None:
        """Remove the root channels ``channels`` (indices of the original model) of group
        ``name`` and every channel coupled with them.

        Raises:
            ValueError: If a channel is out of range, fixed, or splits a tie; or if Torch-Pruning
                fails (the message names the group).
        """
        group = self.get(name)
        channels = sorted(set(channels))
        _check_removal(group, channels)
        if not channels:
            return
        root = self._dg.module2node[group.root]
        try:
            coupling = traverse(self._dg, root, channels, self._tied)
            self._execute(coupling)
            self._prune_buffers(name, coupling)
            self._resize_splits(coupling)
        except Exception as err:
            raise ValueError(
                f"pruning group '{name}' failed ({type(err).__name__}: {err}); leave it out or "
                "pass it in ignore= and please report it"
            ) from err

    def verify(self) -> None:
        """Check that the module still runs on the example inputs with unchanged output shapes.

        Raises:
            ValueError: If it fails or an output shape changed (a coupling that was missed).
        """
        try:
            with eval_mode(self.module), torch.no_grad():
                shapes = output_shapes(call_module(self.module, self._example_inputs))
        except Exception as err:
            raise ValueError(
                f"the pruned model no longer runs on example_inputs ({type(err).__name__}: "
                f"{err}); a size fixed in the model's code, or a coupling slimkit missed"
            ) from err
        if shapes != self._trace.output_shapes:
            raise ValueError(
                f"pruning changed the output shapes {self._trace.output_shapes} -> {shapes}; a "
                "size fixed in the model's code, or a coupling slimkit missed"
            )

    # --------------------------------------------------------------------------- internals
    def _find_groups(self) -> None:
        """Walk root candidates in module order; one group per set of coupled channels."""
        covered: dict[nn.Module, set[int]] = {}
        owner: dict[nn.Module, str] = {}
        for name, layer in self.module.named_modules():
            node = self._dg.module2node.get(layer)
            if (
                not isinstance(layer, _ROOT_TYPES)
                or node is None
                or node.type
                not in (
                    _OPT.CONV,
                    _OPT.LINEAR,
                )
            ):
                continue
            total = self._dg.get_out_channels(layer)
            done = covered.get(layer, set())
            free = [c for c in range(total) if c not in done]
            if not free:
                self.coupled[name] = owner[layer]
                continue
            if layer in self._ignored:
                self.skipped[name] = Skip(f"'{name}' is in ignore= or prune_ignore", "ignored")
                continue
            result = self._group_of(name, layer, free, covered, owner)
            if isinstance(result, ChannelGroup):
                self.groups[name] = result
            else:
                self.skipped[name] = result

    def _group_of(
        self,
        name: str,
        layer: nn.Module,
        free: list[int],
        covered: dict[nn.Module, set[int]],
        owner: dict[nn.Module, str],
    ) -> ChannelGroup | Skip:
        try:
            coupling = traverse(self._dg, self._dg.module2node[layer], free, self._tied)
        except Exception as err:  # never let a raw error from the graph code escape
            reason = f"following the channels of '{name}' failed ({type(err).__name__}: {err})"
            return Skip(reason, "unsupported")
        for item in coupling.items:
            target = item.dep.target.module
            if self._dg.is_out_channel_pruning_fn(item.dep.handler) and item.idxs:
                covered.setdefault(target, set()).update(item.idxs)
                owner.setdefault(target, name)
        done = covered.get(layer, set()) - set(free)
        try:
            result, buffers = self._inspector.inspect(name, layer, coupling, done)
        except Exception as err:
            reason = f"checking the channels of '{name}' failed ({type(err).__name__}: {err})"
            return Skip(reason, "unsupported")
        if isinstance(result, ChannelGroup):
            self._buffers[name] = buffers
        return result

    def _alive_of(self, key: tuple[str, Any], size: int | None = None) -> list[int]:
        """Original indices still present in a pruned layer's (tensor's, split's) channels."""
        if key not in self._alive:
            kind, node = key
            if size is None:
                out = kind == "out"
                size = self._dg.get_out_channels(node) if out else self._dg.get_in_channels(node)
            self._alive[key] = list(range(size))
        return self._alive[key]

    @contextlib.contextmanager
    def pruned(self, name: str, channels: Sequence[int]) -> Iterator[nn.Module]:
        """``self.module`` with the root channels ``channels`` (original indices) of group
        ``name`` removed in place, for a ``with`` block only: each layer (tensor, split size)
        gets what :meth:`remove` would give it, then its own state back. The graph is never
        changed, so one trace serves any number of variants (the sensitivity analysis)."""
        group = self.get(name)
        channels = sorted(set(channels))
        _check_removal(group, channels)
        saved: dict[int, tuple[nn.Module, dict[str, Any]]] = {}

        def keep(module: nn.Module) -> None:
            tables = {"_parameters": dict(module._parameters), "_buffers": dict(module._buffers)}
            saved.setdefault(id(module), (module, {**vars(module), **tables}))

        alive = {k: list(v) for k, v in self._alive.items()}
        try:
            if channels:
                coupling = traverse(
                    self._dg, self._dg.module2node[group.root], channels, self._tied
                )
                for item, current in self._current(coupling):
                    node = item.dep.target
                    if node.type == _OPT.PARAMETER:  # set the pruned parameter on its owner
                        owner, _, attr = self._dg._param_to_name[node.module].rpartition(".")
                        keep(self.module.get_submodule(owner))
                        setattr(self.module.get_submodule(owner), attr, item.dep(current))
                    else:
                        keep(node.module)
                        item.dep(current)
                for _, member in self._buffers.get(name, ()):
                    keep(self.module.get_submodule(member.name.rpartition(".")[0]))
                self._prune_buffers(name, coupling)
                for item in coupling.items:
                    facts = self.layout.facts.get(item.dep.target)
                    if facts is not None and facts.resize is not None:
                        keep(facts.resize.owner)
                self._resize_splits(coupling)
            yield self.module
        finally:
            for module, state in saved.values():
                module.__dict__.clear()
                module.__dict__.update(state)
            self._alive = alive

    def _current(self, coupling: Coupling) -> list[tuple[Any, list[int]]]:
        """Each layer's (or parameter's) item with its channels as current positions; the
        positions they leave are forgotten in the bookkeeping of what is alive."""
        out = []
        for item in coupling.items:
            node = item.dep.target
            if node.type in OP_TYPES | {_OPT.OUTPUT}:
                continue
            key = ("out" if self._dg.is_out_channel_pruning_fn(item.dep.handler) else "in", node)
            alive, removed = self._alive_of(key), set(item.idxs)
            current = [i for i, c in enumerate(alive) if c in removed]
            if current:
                out.append((item, current))
                self._alive[key] = [c for c in alive if c not in removed]
        return out

    def _execute(self, coupling: Coupling) -> None:
        """Prune a group given in original indices: translate them to current positions."""
        group = tp.dependency.Group()
        group._DG = self._dg
        for item, current in self._current(coupling):
            group.add_dep(item.dep, current)
        group.prune(record_history=False)

    def _resize_splits(self, coupling: Coupling) -> None:
        """``torch.split`` sizes kept in module attributes follow the parts' new sizes."""
        for item in coupling.items:
            facts = self.layout.facts.get(item.dep.target)
            if facts is None or facts.resize is None or not item.idxs:
                continue
            resize, removed = facts.resize, set(item.idxs)
            key = ("split", item.dep.target)
            total = resize.sizes[-1] if resize.kind == "bounds" else sum(resize.sizes)
            alive = [c for c in self._alive_of(key, total) if c not in removed]
            self._alive[key] = alive
            if resize.kind == "bounds":
                for attr, bound in zip(resize.names, resize.sizes[:2], strict=True):
                    if attr:
                        setattr(resize.owner, attr, sum(c < bound for c in alive))
                continue
            bounds = list(itertools.accumulate(resize.sizes, initial=0))
            counts = [sum(a <= c < b for c in alive) for a, b in itertools.pairwise(bounds)]
            if resize.kind == "list":
                old = getattr(resize.owner, resize.names[0])
                setattr(resize.owner, resize.names[0], type(old)(counts))
            elif resize.kind == "ints":
                for attr, count in zip(resize.names, counts, strict=True):
                    setattr(resize.owner, attr, count)
            else:
                assert len(set(counts)) == 1, "tied split parts must stay equal"
                value = counts[0] if resize.kind == "int" else sum(counts)
                setattr(resize.owner, resize.names[0], value)

    def _prune_buffers(self, name: str, coupling: Coupling) -> None:
        """Buffers that span the group's channels lose the same ones."""
        for node, member in self._buffers.get(name, ()):
            item = next((i for i in coupling.items if i.dep.target is node), None)
            if item is None or not item.idxs:
                continue
            owner_name, _, attr = member.name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            tensor = getattr(owner, attr)
            key = ("buffer", member.name)
            alive = self._alive_of(key, tensor.shape[member.dim])
            removed = set(item.idxs)
            keep = [i for i, c in enumerate(alive) if c not in removed]
            index = torch.tensor(keep, dtype=torch.long, device=tensor.device)
            new = tensor.detach().index_select(member.dim, index)
            if isinstance(tensor, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
            else:
                owner._buffers[attr] = new
            self._alive[key] = [c for c in alive if c not in removed]


def _check_removal(group: ChannelGroup, channels: list[int]) -> None:
    if channels and (channels[0] < 0 or channels[-1] >= group.num_channels):
        raise ValueError(
            f"group '{group.name}' has channels 0..{group.num_channels - 1}, got {channels}"
        )
    fixed = set(group.fixed).intersection(channels)
    if fixed:
        raise ValueError(f"group '{group.name}' must keep channels {sorted(fixed)}")
    chosen = set(channels)
    for tie in group.ties:
        if 0 < len(chosen.intersection(tie)) < len(tie):
            raise ValueError(
                f"group '{group.name}': channels {list(tie)} are tied (grouped conv, chunk or "
                "shuffle); remove them together"
            )
    if len(chosen) >= group.num_channels:
        raise ValueError(f"group '{group.name}' must keep at least one channel")


def group_error(name: str, found: GroupSet) -> ValueError:
    """Why ``name`` cannot be pruned: not prunable (with the reason), coupled, or unknown."""
    if name in found.skipped:
        return ValueError(f"group {name!r} cannot be pruned: {found.skipped[name].reason}")
    if name in found.coupled:
        return ValueError(
            f"{name!r} is not a group of its own: its channels belong to group "
            f"{found.coupled[name]!r}; prune that one"
        )
    return unknown_group_error(name, found.names)


def unknown_group_error(name: str, valid: Sequence[str]) -> ValueError:
    """A ``ValueError`` for an unknown group name, with close matches and all valid names."""
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown group {name!r}.{hint} Valid groups: {', '.join(valid) or 'none'}.")


def resolve_ignore(module: nn.Module, ignore: IgnoreSpec) -> tuple[str, ...]:
    """Qualified names of the modules ``ignore`` designates, plus ``prune_ignore`` entries.

    Call this on the user's model before copying it: module objects are matched by identity.

    Args:
        module: The model.
        ignore: Modules of ``module``, their qualified names, or ``nn.Module`` subclasses (every
            instance); one of them or an iterable of them.

    Raises:
        ValueError: On a name that is no module of ``module`` (with close matches), or a module
            object that is not part of it.
        TypeError: On anything else.
    """
    by_name = dict(module.named_modules())
    name_of = {id(m): n for n, m in reversed(list(by_name.items()))}
    single = isinstance(ignore, str | nn.Module) or (
        isinstance(ignore, type) and issubclass(ignore, nn.Module)
    )
    items: list[Any] = [ignore] if single else list(ignore)  # type: ignore[arg-type]
    for prefix, sub in by_name.items():
        for rel in getattr(sub, "prune_ignore", None) or ():
            items.append(f"{prefix}.{rel}" if prefix else rel)
    names: list[str] = []
    for item in items:
        if isinstance(item, str):
            if item not in by_name:
                close = difflib.get_close_matches(item, list(by_name), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"ignore names no module {item!r} of the model.{hint}")
            names.append(item)
        elif isinstance(item, type) and issubclass(item, nn.Module):
            names.extend(n for n, m in by_name.items() if isinstance(m, item))
        elif isinstance(item, nn.Module):
            if id(item) not in name_of:
                raise ValueError(
                    f"ignore holds a {type(item).__name__} that is not part of the model; pass "
                    "modules of the model you prune, their qualified names, or module types"
                )
            names.append(name_of[id(item)])
        else:
            raise TypeError(
                "ignore takes modules, qualified names or module types (or a list of them), "
                f"got {type(item).__name__}"
            )
    return tuple(dict.fromkeys(names))
