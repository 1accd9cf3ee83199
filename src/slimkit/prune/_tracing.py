"""Autograd-level tracing for :mod:`slimkit.prune.groups` (no Torch-Pruning here).

One forward pass under :class:`OpRecorder` records, for every autograd node, the torch function
that made it (:class:`Call`): its non-tensor arguments (dims, sizes, slices), the tensors it used
that are not on the autograd graph (buffers, constants, parameters; :class:`Leaf`), the autograd
nodes created inside it (``F.linear`` on 3-D inputs makes three), and the region of an in-place
slice write (``out[:, :c] = ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from slimkit._utils import call_module as call_module  # re-exported for groups.py

ExampleInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]
Region = tuple[tuple[int, int, int], ...]  # per dim (start, stop, step) of a written view

_SMALL = (int, float, bool, str, slice, type(None), type(Ellipsis), torch.dtype, torch.Size)


@dataclass(frozen=True)
class Leaf:
    """A tensor argument of a call that is not on the autograd graph (or is a parameter).

    Attributes:
        shape: Its shape as the call saw it.
        owner: Qualified name of the model parameter/buffer whose storage it uses, if any.
        requires_grad: True for trainable parameters (Torch-Pruning handles those).
        whole_owner: Whether it has as many elements as its owner (a view of all of it).
    """

    shape: tuple[int, ...]
    owner: str | None
    requires_grad: bool
    whole_owner: bool


@dataclass
class Call:
    """One top-level torch function call seen during tracing."""

    func: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    leaves: list[Leaf]
    tensor_shapes: list[tuple[int, ...]] = field(default_factory=list)  # every tensor argument
    inputs: list[tuple[Any, int]] = field(default_factory=list)  # (grad_fn, nr) of graph inputs
    owner: nn.Module | None = None  # the innermost module whose forward made the call
    internal: bool = False  # the autograd node was made inside another call (e.g. F.linear's addmm)
    composite: bool = False  # the call made internal nodes besides its outputs
    region: Region | None = None  # in-place slice write / strided view region, if any


@dataclass
class Trace:
    """What one traced forward pass left behind besides the dependency graph."""

    calls: dict[Any, Call]  # grad_fn -> the call that made it
    input_fns: frozenset[Any]  # grad_fns marking the model inputs
    output_fns: frozenset[Any]  # grad_fns that produced the model outputs
    output_shapes: list[tuple[int, ...]]
    leaf_users: dict[str, set[Any]] = field(default_factory=dict)  # owner -> grad_fns using it

    @cached_property
    def boundary_fns(self) -> frozenset[Any]:
        return self.input_fns | self.output_fns

    def func(self, grad_fn: Any) -> str:
        """Name of the torch function that made ``grad_fn`` (its autograd name if unknown)."""
        call = self.calls.get(grad_fn)
        return call.func if call is not None else grad_fn.name()


class OpRecorder(TorchFunctionMode):
    """Records a :class:`Call` for every autograd node a torch function call produces."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.calls: dict[Any, Call] = {}
        self.leaf_users: dict[str, set[Any]] = {}
        self._stack: list[nn.Module] = []
        self._hooks: list[Any] = []
        self._owners: dict[int, tuple[str, torch.Tensor]] = {}
        for name, t in (*module.named_parameters(), *module.named_buffers()):
            if t.numel():
                self._owners.setdefault(t.untyped_storage().data_ptr(), (name, t))

    def __enter__(self) -> OpRecorder:
        def enter(module: nn.Module, args: Any) -> None:
            self._stack.append(module)

        def leave(module: nn.Module, args: Any, out: Any) -> None:
            self._stack.pop()

        hooks = torch.nn.modules.module
        self._hooks = [
            hooks.register_module_forward_pre_hook(enter),
            hooks.register_module_forward_hook(leave, always_call=True),
        ]
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)  # type: ignore[no-untyped-call]
        for hook in self._hooks:
            hook.remove()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        made = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn]
        region = None
        if _is_inplace(name) and tensors:
            made, region = self._inplace(name, args, made)
        made = [fn for fn in dict.fromkeys(made) if fn not in self.calls]
        if not made:
            return out
        leaves = [self._leaf(t) for t in tensors if t.grad_fn is None]
        call = Call(name, _compact(args), _compact(kwargs), leaves, region=region)
        call.owner = self._stack[-1] if self._stack else None
        call.tensor_shapes = [tuple(t.shape) for t in tensors]
        call.inputs = [(t.grad_fn, t.output_nr) for t in tensors if t.grad_fn is not None]
        for leaf in leaves:
            if leaf.owner is not None:
                self.leaf_users.setdefault(leaf.owner, set()).update(made)
        stops = {t.grad_fn for t in tensors if t.grad_fn is not None}
        for fn in made:
            self.calls[fn] = call
        for fn in _internal_fns(made, stops, self.calls):
            call.composite = True
            self.calls[fn] = Call(name, (), {}, [], internal=True)
        return out

    def _inplace(self, name: str, args: Sequence[Any], made: list[Any]) -> tuple[list[Any], Any]:
        """An in-place write into a view turns its base's node into ``CopySlices``."""
        target = args[0]
        if not isinstance(target, torch.Tensor):
            return made, None
        base = target._base if target._base is not None else target
        view = target
        if name == "__setitem__":
            with torch.no_grad():
                view = target.detach()[args[1]]
        region = _region(view, base)
        fns = [base.grad_fn] if base.grad_fn is not None else []
        return fns + made, region

    def _leaf(self, t: torch.Tensor) -> Leaf:
        owner = None
        whole = False
        if t.numel():
            found = self._owners.get(t.untyped_storage().data_ptr())
            if found is not None:
                owner = found[0]
                whole = t.numel() == found[1].numel()
        return Leaf(tuple(t.shape), owner, t.requires_grad, whole)


def _is_inplace(name: str) -> bool:
    return (
        name == "__setitem__"
        or (name.endswith("_") and not name.startswith("_"))
        or (name.startswith("__i") and name.endswith("__"))
    )


def _compact(value: Any) -> Any:
    """Non-tensor arguments kept for the rules (dims, sizes, slices); tensors become ``None``."""
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, _SMALL):
        return value
    if isinstance(value, list | tuple):
        return tuple(_compact(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _compact(v) for k, v in value.items()}
    return type(value).__name__


def _internal_fns(outputs: list[Any], stops: set[Any], known: Mapping[Any, Any]) -> list[Any]:
    """Autograd nodes a call created besides its outputs (between its inputs and outputs)."""
    seen = set(outputs)
    stack = list(outputs)
    internal = []
    while stack:
        for fn, _ in stack.pop().next_functions:
            if fn is None or fn in seen or fn in stops or fn in known:
                continue
            seen.add(fn)
            if not hasattr(fn, "variable"):  # AccumulateGrad: a leaf
                internal.append(fn)
                stack.append(fn)
    return internal


def _region(view: torch.Tensor, base: torch.Tensor) -> Region | None:
    """``(start, stop, step)`` per dim of ``base`` that ``view`` covers, or ``None``."""
    if view.dim() != base.dim() or any(s == 0 for s in base.stride()):
        return None
    rel = int(view.storage_offset() - base.storage_offset())
    strides = [int(s) for s in base.stride()]
    starts = [0] * base.dim()
    for d in sorted(range(base.dim()), key=lambda i: -strides[i]):
        starts[d], rel = divmod(rel, strides[d])
    if rel:
        return None
    region = []
    for d in range(base.dim()):
        step, rem = divmod(int(view.stride(d)), strides[d])
        if view.size(d) <= 1:
            step, rem = 1, 0
        if rem or step < 1:
            return None
        region.append((starts[d], starts[d] + step * (view.size(d) - 1) + 1, step))
    return tuple(region)


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


def output_shape(grad_fn: Any, nr: int = 0) -> tuple[int, ...]:
    """Shape of the ``nr``-th tensor an autograd node produced in the forward pass."""
    variable = getattr(grad_fn, "variable", None)
    if variable is not None:
        return tuple(variable.shape)
    return tuple(grad_fn._input_metadata[nr].shape)


def signed_dim(dim: int, ndim: int) -> int:
    """Autograd saves negative dims as unsigned 64-bit ints; return the dim in ``[0, ndim)``."""
    if dim >= 2**63:
        dim -= 2**64
    return dim + ndim if dim < 0 else dim
