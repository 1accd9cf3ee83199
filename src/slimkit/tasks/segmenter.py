"""Semantic segmentation task (mIoU).

Training uses a class-balanced cross-entropy by default (``Segmenter.class_balance``): each class's
pixels are weighted by ``1 / sqrt(frequency)`` in the training masks, normalised so that the
average pixel weight is 1. On the built-in shapes (background ~81 % of the pixels, each shape
class 5-7 %) a plain cross-entropy let UNet settle on background/foreground and guess the shape
classes in some runs (val mIoU 0.50 at 360 steps, shape IoUs 0.10-0.52); balanced, the same run
reached 0.87.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.tasks.base import BaseTask
from slimkit.tasks.logging import log
from slimkit.tasks.metrics import SegMeter

IGNORE_INDEX = 255
BALANCE_SAMPLES = 500
"""At most this many training masks (evenly spaced) are read to measure the class frequencies."""
CLASS_BALANCES = ("sqrt", None)


def class_frequencies(dataset: Any, num_classes: int) -> np.ndarray:
    """Fraction of the labelled (non-ignored) pixels of each class, over up to
    ``BALANCE_SAMPLES`` evenly spaced training masks (read without transforms where the dataset
    can, ``load_sample``; else from its ``(image, mask)`` items)."""
    counts = np.zeros(num_classes, np.float64)
    n = len(dataset)
    for i in np.unique(np.linspace(0, n - 1, min(n, BALANCE_SAMPLES)).astype(np.int64)):
        if hasattr(dataset, "load_sample"):
            mask = np.asarray(dataset.load_sample(int(i))["mask"])
        else:
            mask = np.asarray(dataset[int(i)][1])
        values = mask[mask != IGNORE_INDEX].astype(np.int64)
        counts += np.bincount(values[values < num_classes], minlength=num_classes)
    total = counts.sum()
    return counts / total if total > 0 else np.full(num_classes, 1.0 / num_classes)


def balanced_weights(freq: np.ndarray) -> np.ndarray:
    """``1 / sqrt(f_c)`` per class (absent classes: the largest weight), scaled so that
    ``sum_c f_c w_c = 1`` (the average pixel keeps weight 1)."""
    present = freq > 0
    weights = np.ones_like(freq)
    weights[present] = 1.0 / np.sqrt(freq[present])
    weights[~present] = weights[present].max() if present.any() else 1.0
    return weights / float((freq * weights).sum() or 1.0)


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
    class_balance: str | None = "sqrt"
    """``"sqrt"``: class-balanced cross-entropy (see the module docstring); None: plain."""
    class_weights: torch.Tensor | None = None
    """The loss's per-class weights, set by ``train`` from the training masks."""

    def prepare_training(self, train_dataset: Any) -> None:
        """Measure the class frequencies of the training masks and set ``class_weights``."""
        if self.class_balance not in CLASS_BALANCES:
            raise ValueError(
                f"class_balance must be one of {CLASS_BALANCES}, got {self.class_balance!r}"
            )
        self.class_weights = None
        if self.class_balance is None:
            return
        freq = class_frequencies(train_dataset, self.num_classes)
        weights = balanced_weights(freq)
        self.class_weights = torch.tensor(weights, dtype=torch.float32)
        log(
            "class-balanced loss: "
            + ", ".join(
                f"{name} {f:.1%} x{w:.2f}"
                for name, f, w in zip(self.labels, freq, weights, strict=True)
            )
        )

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(outputs.device)
        return F.cross_entropy(
            outputs, targets.to(outputs.device), weight=weight, ignore_index=IGNORE_INDEX
        )

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
