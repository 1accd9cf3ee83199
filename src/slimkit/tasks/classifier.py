"""Image classification task (top-1 / top-5 accuracy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slimkit.tasks.base import BaseTask
from slimkit.tasks.metrics import ClassificationMeter


class _Meter:
    def __init__(self, num_classes: int) -> None:
        self.meter = ClassificationMeter(ks=(1, 5))  # k is capped at num_classes; keys acc1, acc5

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.meter.update(logits.float().cpu(), torch.as_tensor(labels).cpu())

    def compute(self) -> dict[str, float]:
        return self.meter.compute()


class Classifier(BaseTask):
    """A classifier over a registered backbone (``mobilenetv1``, ``mobilenetv2``)."""

    task = "cls"
    metric_name = "acc1"

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets.to(outputs.device))

    def make_meter(self) -> _Meter:
        return _Meter(self.num_classes)

    def postprocess(self, outputs: torch.Tensor, infos: list[dict[str, Any]]) -> list[Any]:
        """Per image: the top-k classes as ``[{category_id, category, score}, ...]``."""
        probs = outputs.float().softmax(dim=1).cpu()
        k = min(5, self.num_classes)
        scores, ids = probs.topk(k, dim=1)
        return [
            [
                {"category_id": int(i), "category": self.labels[int(i)], "score": float(s)}
                for s, i in zip(srow, irow, strict=True)
            ]
            for srow, irow in zip(scores, ids, strict=True)
        ]


class MobileNetV1(Classifier):
    """MobileNetV1 classifier (PaddleX ``pdx.cls.MobileNetV1``)."""

    def __init__(
        self,
        num_classes: int = 1000,
        input_size: Any = None,
        width_mult: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__("mobilenetv1", num_classes, input_size, width_mult=width_mult, **kwargs)


class MobileNetV2(Classifier):
    """MobileNetV2 classifier (PaddleX ``pdx.cls.MobileNetV2``)."""

    def __init__(
        self,
        num_classes: int = 1000,
        input_size: Any = None,
        width_mult: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__("mobilenetv2", num_classes, input_size, width_mult=width_mult, **kwargs)
