"""Semantic segmentation task (mIoU)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.tasks.base import BaseTask
from slimkit.tasks.metrics import SegMeter

IGNORE_INDEX = 255


class _Meter:
    def __init__(self, num_classes: int) -> None:
        self.meter = SegMeter(num_classes, ignore_index=IGNORE_INDEX)

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        self.meter.update(logits.argmax(dim=1).cpu(), torch.as_tensor(masks).cpu())

    def compute(self) -> dict[str, Any]:
        return self.meter.compute()


class Segmenter(BaseTask):
    """A segmentation model over a registered architecture (``unet``)."""

    task = "seg"
    metric_name = "miou"

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets.to(outputs.device), ignore_index=IGNORE_INDEX)

    def make_meter(self) -> _Meter:
        return _Meter(self.num_classes)

    def postprocess(self, outputs: torch.Tensor, infos: list[dict[str, Any]]) -> list[Any]:
        """Per image: ``{"label_map": HxW int array, "score_map": HxWxC float array}``, original size."""
        results = []
        for logits, info in zip(outputs.float().cpu(), infos, strict=True):
            h, w = info["orig_size"]
            up = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            probs = up.softmax(dim=0)
            results.append(
                {
                    "label_map": probs.argmax(dim=0).numpy().astype(np.int64),
                    "score_map": probs.permute(1, 2, 0).numpy(),
                }
            )
        return results


class UNet(Segmenter):
    """UNet segmentation model (PaddleX ``pdx.seg.UNet``)."""

    def __init__(
        self, num_classes: int = 2, input_size: Any = None, base_channels: int = 64, **kwargs: Any
    ) -> None:
        super().__init__("unet", num_classes, input_size, base_channels=base_channels, **kwargs)
