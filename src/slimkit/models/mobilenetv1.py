"""MobileNetV1 (Howard et al., 2017) with a width multiplier and a timm-style features-only mode.

Also holds the small building blocks shared by the zoo (``make_divisible``, ``ConvBnAct``,
``init_weights``, feature-level helpers).

Feature levels follow timm: level ``i`` is the output of the last block at stride ``2 ** (i + 1)``,
so ``out_indices=(2, 3, 4)`` gives the stride 8, 16 and 32 maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._registry import register_model

__all__ = ["ConvBnAct", "MobileNetV1", "init_weights", "make_divisible", "mobilenetv1"]

# (out_channels, stride) of the 13 depthwise-separable blocks; the stem is a 3x3/2 conv to 32.
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
NUM_FEATURE_LEVELS = 5


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10%.

    Args:
        value: Unrounded channel count (e.g. ``64 * width_mult``).
        divisor: The multiple to round to.
        min_value: Lower bound of the result; defaults to ``divisor``.

    Returns:
        The rounded channel count.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Module):
    """``Conv2d`` (no bias, "same" padding) followed by ``BatchNorm2d`` and an activation."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def init_weights(module: nn.Module) -> None:
    """He-normal convs over the group-aware fan-out, unit BatchNorm, small-normal linear layers.

    The fan-out is ``kh * kw * out_channels / groups`` (as timm's ``_init_weight_goog``), not
    PyTorch's ``kaiming_normal_`` fan-out, which ignores groups: for a depthwise conv of C channels
    that gives weights ~sqrt(C) times too small, near-zero depthwise outputs, and BatchNorm running
    statistics that stay far from the batch statistics for hundreds of steps, so the model in eval
    mode outputs a constant long after it has learned in train mode.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            kh, kw = m.kernel_size
            out_chs = m.out_channels if isinstance(m, nn.Conv2d) else m.in_channels
            fan_out = kh * kw * out_chs // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def check_backbone_args(
    num_classes: int, width_mult: float, in_chans: int, out_indices: Sequence[int]
) -> tuple[int, ...]:
    """Validate the common backbone arguments and return ``out_indices`` as a tuple."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    indices = tuple(sorted(out_indices))
    bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < NUM_FEATURE_LEVELS]
    if not indices or bad or len(set(indices)) != len(indices):
        raise ValueError(
            f"out_indices must be distinct feature levels in 0..{NUM_FEATURE_LEVELS - 1} "
            f"(level i has stride 2**(i+1)), got {out_indices!r}"
        )
    return indices


def level_feature_info(
    block_chs: Sequence[int], block_strides: Sequence[int], prefix: str = "blocks"
) -> list[dict[str, int | str]]:
    """Return one feature-info dict per stride level: the last block reaching that stride."""
    info: dict[int, dict[str, int | str]] = {}
    reduction = 2  # every zoo backbone starts with a stride-2 stem
    for i, (chs, stride) in enumerate(zip(block_chs, block_strides, strict=True)):
        reduction *= stride
        info[reduction] = {"num_chs": chs, "reduction": reduction, "module": f"{prefix}.{i}"}
    return [info[r] for r in sorted(info)]


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, 1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 classifier or feature backbone.

    Module names: ``stem`` (3x3/2 conv), ``blocks.0`` .. ``blocks.12`` (``conv_dw``/``conv_pw``),
    ``global_pool``, ``classifier`` (absent with ``features_only``).
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
            width_mult: Channel multiplier; channels are rounded to multiples of 8.
            in_chans: Input image channels.
            features_only: Return a list of feature maps instead of logits; no classifier.
            out_indices: Feature levels to return (level ``i`` has stride ``2 ** (i + 1)``).
            drop_rate: Dropout before the classifier.
        """
        super().__init__()
        self.out_indices = check_backbone_args(num_classes, width_mult, in_chans, out_indices)
        self.features_only = features_only
        self.num_classes = num_classes
        stem_chs = make_divisible(32 * width_mult)
        self.stem = ConvBnAct(in_chans, stem_chs, 3, stride=2)
        chs = [make_divisible(c * width_mult) for c, _ in _V1_BLOCKS]
        strides = [s for _, s in _V1_BLOCKS]
        levels = level_feature_info(chs, strides)
        if features_only:  # build only the blocks up to the deepest requested level
            self.feature_info = [levels[i] for i in self.out_indices]
            self._feature_blocks = feature_block_indices(self.feature_info)
            del chs[self._feature_blocks[-1] + 1 :], strides[self._feature_blocks[-1] + 1 :]
        else:
            self.feature_info = levels
        self.blocks = nn.Sequential(
            *(
                DepthwiseSeparableConv(cin, cout, s)
                for cin, cout, s in zip([stem_chs, *chs[:-1]], chs, strides, strict=True)
            )
        )
        self.num_features = chs[-1]
        self.prune_ignore = () if features_only else ("classifier",)
        if not features_only:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(drop_rate)
            self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map (stride 32; with ``features_only`` the deepest level built)."""
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return logits ``[B, num_classes]``, or the feature maps at ``out_indices``."""
        if self.features_only:
            return collect_features(self.blocks, self.stem(x), self._feature_blocks)
        x = self.global_pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def feature_block_indices(feature_info: Sequence[dict[str, int | str]]) -> list[int]:
    """Return the block index of each feature-info entry (``"blocks.7"`` -> 7)."""
    return [int(str(f["module"]).rsplit(".", 1)[1]) for f in feature_info]


def collect_features(
    blocks: nn.Sequential, x: torch.Tensor, wanted: Sequence[int]
) -> list[torch.Tensor]:
    """Run ``x`` through ``blocks``, keeping the outputs of the blocks at indices ``wanted``."""
    features = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i in wanted:
            features.append(x)
    return features


@register_model(
    task="cls",
    display_name="MobileNetV1",
    input_size=224,
    sensitivity_key="mobilenetv1_w{width_mult:g}",
)
def mobilenetv1(width_mult: float = 1.0, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1; keyword arguments go to :class:`MobileNetV1`."""
    return MobileNetV1(width_mult=width_mult, **kwargs)
