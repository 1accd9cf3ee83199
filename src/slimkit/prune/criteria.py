"""Channel importance criteria: one score per output channel of a group's root, lowest pruned."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from .groups import ChannelGroup

__all__ = [
    "CRITERIA",
    "Criterion",
    "bn_scale_importance",
    "fpgm_importance",
    "get_criterion",
    "l1_importance",
]

Criterion = Callable[[ChannelGroup], torch.Tensor]


def root_filters(group: ChannelGroup) -> torch.Tensor:
    """The root's weights as one row per output channel: ``[num_channels, fan_in]``."""
    weight = _tensor(group.root, "weight").detach().float()
    if isinstance(group.root, nn.modules.conv._ConvNd) and group.root.transposed:
        weight = weight.transpose(0, 1)  # [in, out/groups, k...] -> out first (groups == 1)
    return weight.reshape(group.num_channels, -1)


def l1_importance(group: ChannelGroup) -> torch.Tensor:
    """L1 norm of each filter of the root (PaddleSlim's default criterion)."""
    return root_filters(group).abs().sum(dim=1)


def fpgm_importance(group: ChannelGroup) -> torch.Tensor:
    """Summed L2 distance of each root filter to all others (FPGM, He et al. 2019).

    Filters near the geometric median are the most replaceable by the others, so they score
    lowest and go first.
    """
    filters = root_filters(group)
    return torch.cdist(filters[None], filters[None])[0].sum(dim=1)


def bn_scale_importance(group: ChannelGroup) -> torch.Tensor:
    """``|gamma|`` of the BatchNorm directly after the root (network slimming).

    Raises:
        ValueError: If the root is not followed by an affine BatchNorm.
    """
    bn = group.root_bn
    if bn is None or getattr(bn, "weight", None) is None:
        raise ValueError(
            f"criterion 'bn_scale' needs an affine BatchNorm right after '{group.name}'; "
            "use 'l1' or 'fpgm' for this group"
        )
    return _tensor(bn, "weight").detach().float().abs()


def _tensor(layer: nn.Module, name: str) -> torch.Tensor:
    value = getattr(layer, name)
    assert isinstance(value, torch.Tensor)
    return value


CRITERIA: dict[str, Criterion] = {
    "l1": l1_importance,
    "fpgm": fpgm_importance,
    "bn_scale": bn_scale_importance,
}


def get_criterion(criterion: str | Criterion) -> tuple[str, Criterion]:
    """Return ``(name, function)`` for a criterion name or a custom callable.

    Raises:
        ValueError: If ``criterion`` is an unknown name.
    """
    if callable(criterion):
        return getattr(criterion, "__name__", "custom"), criterion
    if criterion not in CRITERIA:
        close = difflib.get_close_matches(str(criterion), list(CRITERIA), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown criterion {criterion!r}.{hint} Choose from {', '.join(CRITERIA)} "
            "or pass a callable(group) -> importance tensor."
        )
    return criterion, CRITERIA[criterion]
