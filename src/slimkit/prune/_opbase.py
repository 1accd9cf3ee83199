"""The vocabulary of the channel rules: what a rule sees of an operation, and what it says.

Channel "dims" are a tuple: one dim normally, several while a channel-shuffle ``view`` has split
the channels over two dims. Node coordinates are the channel indices of the output, except for
narrowing operations (slice, split, select), whose coordinates are those of their input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._mapping import Mapping
from ._tracing import Call, signed_dim

Dims = tuple[int, ...]
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Need:
    """A tensor off the autograd graph that spans an operation's channels.

    Attributes:
        owner: Qualified name of the model parameter/buffer it is (a view of), or ``None``.
        shape: Its shape as the operation saw it.
        dim: The dim of that shape that spans the channels.
        requires_grad: A trainable parameter.
        whole_owner: It has as many elements as its owner.
    """

    owner: str | None
    shape: Shape
    dim: int
    requires_grad: bool
    whole_owner: bool


@dataclass
class OpFacts:
    """What a group passing through one node must respect (in the node's coordinates)."""

    label: str
    problem: str | None = None
    pin: int = 0  # channels [0, pin) must stay: code with fixed channel bounds reads them
    keep: tuple[int, ...] = ()  # more channels that must stay
    tie: tuple[int, int] | None = None  # (block, parts): the same position of each block together
    needs: list[Need] = field(default_factory=list)
    mixes: bool = False  # normalises over the channels (LayerNorm, GroupNorm statistics)
    resize: Resize | None = None  # attributes holding the split sizes, updated when pruned


@dataclass(frozen=True)
class Resize:
    """Attributes of the module that called ``torch.split`` which hold its sizes.

    Attributes:
        owner: That module.
        names: One attribute holding the list of sizes (``kind="list"``), one per size
            (``"ints"``), one holding the size of every (equal) part (``"int"``), one holding
            their sum (``"total"``); or for a slice (``"bounds"``) the attributes holding its
            start and stop ("" where the bound is 0 or the end).
        kind: How the sizes are stored.
        sizes: The original sizes of the parts, in channel order; for a slice its start, stop
            and the size of the sliced dim.
    """

    owner: Any
    names: tuple[str, ...]
    kind: str
    sizes: tuple[int, ...]


@dataclass
class Op:
    """One operation as a rule sees it: shapes per input slot, the call, and known dims."""

    grad_fn: Any
    call: Call | None
    out: Shape
    ins: list[Shape | None]
    in_dims: list[Dims | None]
    label: str

    @property
    def base(self) -> str:
        return base_name(self.grad_fn)

    def saved(self, name: str, default: Any = None) -> Any:
        return getattr(self.grad_fn, f"_saved_{name}", default)

    def dim(self, name: str, ndim: int) -> int | None:
        value = self.saved(name)
        return None if not isinstance(value, int) else signed_dim(value, ndim)

    def dims_of(self, name: str, ndim: int) -> tuple[int, ...] | None:
        value = self.saved(name)
        if isinstance(value, int):
            value = (value,)
        if not isinstance(value, tuple):
            return None
        return tuple(signed_dim(d, ndim) for d in value)


class Conflict(ValueError):
    """Inputs of an operation disagree on where the channels are."""


def base_name(grad_fn: Any) -> str:
    """``"AddBackward0"`` -> ``"Add"``."""
    name: str = grad_fn.name()
    return name.rstrip("0123456789").removesuffix("Backward")


class Rule:
    """Default rule: an operation slimkit does not know, which stops every group."""

    narrowing = False  # node coordinates are those of the input (slice, split, select)
    input_dims = False  # facts/out_map take the input's channel dims rather than the output's

    def forward(self, op: Op) -> Dims | None:
        return None

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        return None

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        return OpFacts(
            op.label,
            problem=f"{op.label} is an operation whose channel coupling slimkit cannot follow",
        )

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        return None

    def out_map(self, op: Op, dims: Dims, nr: int) -> Mapping | None:
        return None


def shift(dims: Dims, by: int) -> Dims:
    return tuple(d + by for d in dims)
