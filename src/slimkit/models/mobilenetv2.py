"""MobileNetV2 (Sandler et al., 2018) with a width multiplier and a timm-style features-only mode.

Feature levels follow timm: level ``i`` is the output of the last block at stride ``2 ** (i + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._registry import register_model
from .mobilenetv1 import (
    ConvBnAct,
    check_backbone_args,
    collect_features,
    feature_block_indices,
    init_weights,
    level_feature_info,
    make_divisible,
)

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# (expansion t, out_channels c, repeats n, first stride s), as in Table 2 of the paper.
_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1 (``conv_pw``), depthwise 3x3 (``conv_dw``), linear project 1x1 (``conv_pwl``).

    With ``expansion == 1`` the expansion conv, its BN and activation are ``nn.Identity``. The
    residual connection is used when the stride is 1 and the channel count is unchanged.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid_chs = in_chs * expansion
        self.has_skip = stride == 1 and in_chs == out_chs
        expand = expansion != 1
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False) if expand else nn.Identity()
        self.bn1 = nn.BatchNorm2d(mid_chs) if expand else nn.Identity()
        self.act1 = nn.ReLU6() if expand else nn.Identity()
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = nn.ReLU6()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.act2(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return x + out if self.has_skip else out


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier or feature backbone.

    Module names: ``stem`` (3x3/2 conv), ``blocks.0`` .. ``blocks.16`` (inverted residuals),
    ``conv_head`` (1x1 to 1280), ``global_pool``, ``classifier``; the head modules are absent
    with ``features_only``.
    """

    prune_ignore: tuple[str, ...]

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
        drop_rate: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            num_classes: Number of classifier outputs (ignored with ``features_only``).
            width_mult: Channel multiplier; channels are rounded to multiples of 8 and the
                1280-channel head is only ever widened, as in the paper.
            in_chans: Input image channels.
            features_only: Return a list of feature maps instead of logits; no head.
            out_indices: Feature levels to return (level ``i`` has stride ``2 ** (i + 1)``).
            drop_rate: Dropout before the classifier.
        """
        super().__init__()
        self.out_indices = check_backbone_args(num_classes, width_mult, in_chans, out_indices)
        self.features_only = features_only
        self.num_classes = num_classes
        stem_chs = make_divisible(32 * width_mult)
        self.stem = ConvBnAct(in_chans, stem_chs, 3, stride=2, act_layer=nn.ReLU6)
        specs = [  # (expansion, out_chs, stride) per block
            (t, make_divisible(c * width_mult), s if i == 0 else 1)
            for t, c, n, s in _V2_STAGES
            for i in range(n)
        ]
        levels = level_feature_info([c for _, c, _ in specs], [s for _, _, s in specs])
        if features_only:  # build only the blocks up to the deepest requested level
            self.feature_info = [levels[i] for i in self.out_indices]
            self._feature_blocks = feature_block_indices(self.feature_info)
            del specs[self._feature_blocks[-1] + 1 :]
        else:
            self.feature_info = levels
        in_chs = [stem_chs, *(c for _, c, _ in specs[:-1])]
        self.blocks = nn.Sequential(
            *(InvertedResidual(cin, c, s, t) for cin, (t, c, s) in zip(in_chs, specs, strict=True))
        )
        self.num_features = specs[-1][1]
        self.prune_ignore = () if features_only else ("classifier",)
        if not features_only:
            self.num_features = make_divisible(1280 * max(1.0, width_mult))
            self.conv_head = ConvBnAct(specs[-1][1], self.num_features, 1, act_layer=nn.ReLU6)
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(drop_rate)
            self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        # each residual block starts as the identity (timm's zero_init_last)
        for block in self.blocks:
            if isinstance(block, InvertedResidual) and block.has_skip:
                nn.init.zeros_(block.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map (after ``conv_head``; with ``features_only`` the deepest
        level built)."""
        x = self.blocks(self.stem(x))
        return x if self.features_only else self.conv_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return logits ``[B, num_classes]``, or the feature maps at ``out_indices``."""
        if self.features_only:
            return collect_features(self.blocks, self.stem(x), self._feature_blocks)
        x = self.global_pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_model(
    task="cls",
    display_name="MobileNetV2",
    input_size=224,
    sensitivity_key="mobilenetv2_w{width_mult:g}",
)
def mobilenetv2(width_mult: float = 1.0, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2; keyword arguments go to :class:`MobileNetV2`."""
    return MobileNetV2(width_mult=width_mult, **kwargs)
