"""UNet (Ronneberger et al., 2015) with BatchNorm, "same" padding and a choice of upsampling."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .mobilenetv1 import ConvBnAct, init_weights

__all__ = ["UNet", "unet"]

_UPSAMPLE_MODES = ("bilinear", "deconv")


class DoubleConv(nn.Module):
    """Two 3x3 conv + BN + ReLU layers."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


class Down(nn.Module):
    """2x2 max-pool then :class:`DoubleConv`."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_chs, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """2x upsample to ``out_chs`` channels, concat the skip (skip first), then :class:`DoubleConv`.

    ``"bilinear"``: ``F.interpolate`` then a 1x1 conv + BN + ReLU (``up``); ``"deconv"``: a 2x2
    stride-2 ``ConvTranspose2d`` (``up``).
    """

    def __init__(self, in_chs: int, out_chs: int, upsample: str) -> None:
        super().__init__()
        self.bilinear = upsample == "bilinear"
        if self.bilinear:
            self.up: nn.Module = ConvBnAct(in_chs, out_chs, 1)
        else:
            self.up = nn.ConvTranspose2d(in_chs, out_chs, 2, stride=2)
        self.conv = DoubleConv(out_chs * 2, out_chs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Encoder-decoder segmentation network with concatenated skip connections.

    Module names: ``encoder.0`` (:class:`DoubleConv`), ``encoder.1`` .. ``encoder.{depth}``
    (:class:`Down`), ``decoder.0`` .. ``decoder.{depth-1}`` (:class:`Up`, deepest first), ``head``
    (1x1 logit conv, in ``prune_ignore``). Level ``i`` has ``base_channels * 2**i`` channels.
    """

    prune_ignore: tuple[str, ...]

    def __init__(
        self,
        num_classes: int = 2,
        in_chans: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        upsample: str = "bilinear",
    ) -> None:
        """Build the network.

        Args:
            num_classes: Number of output classes (logit channels).
            in_chans: Input image channels.
            base_channels: Channels of the first level; doubled at each downsampling.
            depth: Number of 2x downsamplings; inputs must be divisible by ``2 ** depth``.
            upsample: ``"bilinear"`` (interpolate + 1x1 conv) or ``"deconv"`` (transposed conv).
        """
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be a positive int, got {base_channels!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if upsample not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}")
        self.num_classes = num_classes
        self.depth = depth
        chs = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_chans, chs[0])] + [Down(chs[i - 1], chs[i]) for i in range(1, depth + 1)]
        )
        self.decoder = nn.ModuleList(Up(chs[i], chs[i - 1], upsample) for i in range(depth, 0, -1))
        self.head = nn.Conv2d(chs[0], num_classes, 1)
        self.prune_ignore = ("head",)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes, H, W]``; ``H`` and ``W`` must divide by ``2**depth``."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        return self.head(x)


@register_model(
    task="seg",
    display_name="UNet",
    input_size=512,
    sensitivity_key="unet_c{base_channels}",
)
def unet(base_channels: int = 64, **kwargs: Any) -> UNet:
    """UNet; keyword arguments go to :class:`UNet`."""
    return UNet(base_channels=base_channels, **kwargs)
