"""The proof of a pruning: removing channels must equal zeroing them.

:func:`masked_model` zeroes, in a copy of the original model, every slice that pruning removes:
the output rows and biases of each coupled layer, BatchNorm weights and statistics, buffers and
parameters added per channel, and the input columns of each consumer. Normalisations that mix
channels (LayerNorm over channels, GroupNorm) compute their statistics over the kept channels
only. The pruned model must then give the same outputs (:func:`compare_pruned`), whatever the
activations; :mod:`slimkit.prune.discovery` runs that check on one channel per group to find the
groups whose coupling is wrong.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from slimkit._utils import eval_mode

from ._inspect import ChannelGroup, GroupMember
from ._tracing import ExampleInputs, call_module

__all__ = ["TOLERANCE", "compare_pruned", "masked_model"]

TOLERANCE = 1e-4  # |pruned - masked| <= TOLERANCE * max(1, max |masked|) per output tensor


def masked_model(model: nn.Module, groups: Sequence[ChannelGroup], plan: Any) -> nn.Module:
    """A copy of ``model`` with the plan's dropped channels zeroed in every coupled place.

    Args:
        model: The original (unpruned) model.
        groups: Its groups (from :func:`~slimkit.prune.groups.channel_groups`).
        plan: A :class:`~slimkit.prune.plan.PrunePlan` over those groups.
    """
    by_name = {g.name: g for g in groups}
    masked = copy.deepcopy(model)
    norm_masks: dict[str, set[int]] = {}
    by_weight: dict[int, set[int]] = {}  # functional norms on parameters: found by identity
    for entry in plan.groups:
        group = by_name[entry.name]
        for member in group.members:
            idxs = group.member_channels(member, entry.dropped)
            if idxs:
                _zero_member(masked, member, idxs, norm_masks)
            if idxs and member.dim is not None:
                by_weight.setdefault(id(_tensor(masked, member.name)), set()).update(idxs)
    for name, dropped in norm_masks.items():
        _mask_statistics(masked.get_submodule(name), _MaskedStatistics(dropped=dropped))
    if by_weight:
        _mask_statistics(masked, _MaskedStatistics(by_weight=by_weight))
    return masked


def _zero_member(
    model: nn.Module, member: GroupMember, idxs: list[int], norm_masks: dict[str, set[int]]
) -> None:
    with torch.no_grad():
        if member.dim is not None:
            tensor = _tensor(model, member.name)
            tensor.index_fill_(member.dim, torch.tensor(idxs, device=tensor.device), 0.0)
            return
        layer = model.get_submodule(member.name)
        if isinstance(layer, nn.modules.conv._ConvNd) and member.kind == "in" and layer.groups > 1:
            per_group = layer.in_channels // layer.groups  # tied: one column of every group
            idxs = sorted({i % per_group for i in idxs})
        for tensor, dim, value in _slices(layer, member.kind):
            tensor.index_fill_(dim, torch.tensor(idxs, device=tensor.device), value)
        if isinstance(layer, nn.LayerNorm | nn.GroupNorm):
            norm_masks.setdefault(member.name, set()).update(idxs)


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr)
    assert isinstance(tensor, torch.Tensor)
    return tensor


def _slices(layer: nn.Module, kind: str) -> list[tuple[torch.Tensor, int, float]]:
    """(tensor, dim, value) to fill at ``idxs`` so that those channels vanish."""
    out: list[tuple[torch.Tensor, int, float]] = []
    bias = getattr(layer, "bias", None)
    if isinstance(layer, nn.modules.conv._ConvNd):
        if kind == "out":
            out.append((layer.weight, 1 if layer.transposed else 0, 0.0))
            out.extend([(bias, 0, 0.0)] if bias is not None else [])
        else:
            out.append((layer.weight, 0 if layer.transposed else 1, 0.0))
        return out
    if isinstance(layer, nn.Linear):
        out.append((layer.weight, 0 if kind == "out" else 1, 0.0))
        if kind == "out" and bias is not None:
            out.append((bias, 0, 0.0))
        return out
    for attr, value in (("weight", 0.0), ("bias", 0.0), ("running_mean", 0.0)):
        tensor = getattr(layer, attr, None)
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
            out.append((tensor, tensor.dim() - 1 if isinstance(layer, nn.LayerNorm) else 0, value))
    var = getattr(layer, "running_var", None)
    if isinstance(var, torch.Tensor):
        out.append((var, 0, 1.0))
    if isinstance(layer, nn.PReLU) and layer.num_parameters == 1:
        return []
    return out


class _MaskedStatistics(TorchFunctionMode):
    """LayerNorm/GroupNorm statistics over the kept channels only: for every call inside one
    layer (``dropped``), or for calls whose weight is a pruned parameter (``by_weight``)."""

    def __init__(
        self, dropped: set[int] | None = None, by_weight: dict[int, set[int]] | None = None
    ) -> None:
        super().__init__()
        self.dropped, self.by_weight = dropped, by_weight or {}

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        norms: dict[Any, Callable[..., torch.Tensor]] = {
            F.layer_norm: _masked_layer_norm,
            torch.layer_norm: _masked_layer_norm,
            F.group_norm: _masked_group_norm,
            torch.group_norm: _masked_group_norm,
        }
        norm = norms.get(func)
        if norm is None:
            return func(*args, **kwargs)
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        dropped = self.dropped if self.dropped is not None else self.by_weight.get(id(weight))
        if dropped is None:
            return func(*args, **kwargs)
        return norm(dropped, *args, **kwargs)


def _mask_statistics(layer: nn.Module, mode: _MaskedStatistics) -> None:
    forward = layer.forward

    def masked_forward(*args: Any, **kwargs: Any) -> Any:
        with mode:
            return forward(*args, **kwargs)

    layer.forward = masked_forward


def _keep(size: int, dropped: set[int], like: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(size, dtype=like.dtype, device=like.device)
    keep[[i for i in dropped if i < size]] = 0
    return keep


def _masked_layer_norm(
    dropped: set[int],
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    keep = _keep(x.shape[-1], dropped, x)
    count = keep.sum() * math.prod(normalized_shape[:-1])
    mean = (x * keep).sum(dims, keepdim=True) / count
    var = (((x - mean) * keep) ** 2).sum(dims, keepdim=True) / count
    y = (x - mean) / torch.sqrt(var + eps) * keep
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y


def _masked_group_norm(
    dropped: set[int],
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    n, c = x.shape[:2]
    keep = _keep(c, dropped, x).view(1, num_groups, c // num_groups, *[1] * (x.dim() - 2))
    grouped = x.reshape(n, num_groups, c // num_groups, *x.shape[2:])
    dims = tuple(range(2, grouped.dim()))
    count = keep.sum(dims, keepdim=True) * math.prod(x.shape[2:])
    mean = (grouped * keep).sum(dims, keepdim=True) / count
    var = (((grouped - mean) * keep) ** 2).sum(dims, keepdim=True) / count
    y = ((grouped - mean) / torch.sqrt(var + eps) * keep).reshape(x.shape)
    shape = (1, c, *[1] * (x.dim() - 2))
    y = y * weight.view(shape) if weight is not None else y
    return y + bias.view(shape) if bias is not None else y


def _outputs(model: nn.Module, example_inputs: ExampleInputs) -> list[torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        out = call_module(model, example_inputs)
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def compare_pruned(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    pruned: nn.Module,
    plan: Any,
    example_inputs: ExampleInputs,
) -> float:
    """Largest relative difference between ``pruned`` and the masked original (eval mode).

    Returns:
        ``max |pruned - masked| / max(1, max |masked|)`` over the output tensors; ``inf`` if
        their shapes differ. Within :data:`TOLERANCE` the pruning is proven on these inputs.
    """
    want = _outputs(masked_model(model, groups, plan), example_inputs)
    got = _outputs(pruned, example_inputs)
    if [t.shape for t in got] != [t.shape for t in want]:
        return math.inf
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if not g.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(g, w) else math.inf)
            continue
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        diff = (g.double() - w.double()).abs().max().item() if w.numel() else 0.0
        worst = max(worst, diff / scale if math.isfinite(diff) else math.inf)
    return worst
