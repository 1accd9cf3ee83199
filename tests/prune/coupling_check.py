"""Shared helpers for the pruning tests: the masked-model proof of channel coupling.

Removing channels must equal zeroing them: zero the pruned channels' output parameters (weight
rows and bias of every coupled conv/linear, weight and bias of every coupled BatchNorm) in the
ORIGINAL model and compare in eval mode. With activations where f(0) = 0 the two agree exactly
when every coupled place was found.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from slimkit.prune import ChannelGroup, PrunePlan


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial weights and running stats and layers random biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                layer.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                layer.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                layer.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                layer.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(layer, nn.modules.conv._ConvNd | nn.Linear) and layer.bias is not None:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)
    return model.eval()


def zero_out_channels(layer: nn.Module, idxs: Sequence[int]) -> None:
    """Zero the parameters that produce output channels ``idxs`` of ``layer``."""
    index = torch.tensor(list(idxs), dtype=torch.long)
    with torch.no_grad():
        if isinstance(layer, nn.modules.conv._ConvNd):
            layer.weight.index_fill_(1 if layer.transposed else 0, index, 0.0)
        elif isinstance(layer, nn.Linear | nn.modules.batchnorm._BatchNorm):
            layer.weight.index_fill_(0, index, 0.0)
        else:
            raise AssertionError(f"no masking rule for {type(layer).__name__}")
        if layer.bias is not None:
            layer.bias.index_fill_(0, index, 0.0)


def masked_model(model: nn.Module, groups: Sequence[ChannelGroup], plan: PrunePlan) -> nn.Module:
    """A copy of ``model`` with the plan's dropped channels zeroed in every coupled layer."""
    by_name = {g.name: g for g in groups}
    masked = copy.deepcopy(model)
    for entry in plan.groups:
        group = by_name[entry.name]
        for member in group.members:
            if member.kind == "out" and isinstance(member.module, nn.Module):
                idxs = group.member_channels(member, entry.dropped)
                zero_out_channels(masked.get_submodule(member.name), idxs)
    return masked


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in tree_leaves(model(x)) if isinstance(t, torch.Tensor)]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_prune_equals_mask(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    pruned: nn.Module,
    plan: PrunePlan,
    x: torch.Tensor,
    reference: list[torch.Tensor] | None = None,
) -> None:
    """The pruned model keeps output shapes, is smaller, and equals the masked original."""
    reference = reference if reference is not None else outputs(model, x)
    got = outputs(pruned.eval(), x)
    want = outputs(masked_model(model, groups, plan), x)
    assert [t.shape for t in got] == [t.shape for t in reference]
    if any(entry.dropped for entry in plan.groups):
        assert num_params(pruned) < num_params(model)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
