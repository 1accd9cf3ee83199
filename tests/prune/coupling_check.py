"""Shared helpers for the pruning tests: the masked-model proof of channel coupling.

Removing channels must equal zeroing them: :func:`slimkit.prune.masked_model` zeroes every slice
that pruning removes in a copy of the ORIGINAL model (tested on its own in test_verify.py), and
the physically pruned model must give the same outputs in eval mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from slimkit.prune import (
    ChannelGroup,
    PrunePlan,
    UnprunedGroupsWarning,
    channel_groups,
    masked_model,
    prune_model,
)

RATIOS = (0.1, 0.5, 0.9)


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
            elif isinstance(layer, nn.LayerNorm | nn.GroupNorm) and layer.weight is not None:
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) + 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.2)
            elif isinstance(layer, nn.modules.conv._ConvNd | nn.Linear) and layer.bias is not None:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.1)
    return model.eval()


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


def check_model(model: nn.Module, x: torch.Tensor, all_ratios: int | None = None) -> int:
    """Prune all groups at once at each ratio, then each group alone; return #groups.

    Each group alone is checked at one ratio (cycling through ``RATIOS``), the first
    ``all_ratios`` groups (default: all) at every ratio.
    """
    groups = channel_groups(model, x)
    assert groups, "expected prunable groups"
    reference = outputs(model, x)
    for ratio in RATIOS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnprunedGroupsWarning)  # groups found unsupported
            pruned, plan = prune_model(model, ratio, x, return_plan=True)
        assert [e.name for e in plan.groups] == [g.name for g in groups]  # none left out
        assert_prune_equals_mask(model, groups, pruned, plan, x, reference)
    for i, group in enumerate(groups):
        full = all_ratios is None or i < all_ratios
        for ratio in RATIOS if full else (RATIOS[i % 3],):
            pruned, plan = prune_model(model, {group.name: ratio}, x, return_plan=True)
            assert [e.name for e in plan.groups] == [group.name]
            assert_prune_equals_mask(model, groups, pruned, plan, x, reference)
    return len(groups)
