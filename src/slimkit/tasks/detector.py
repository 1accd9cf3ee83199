"""Object detection task (VOC mAP@0.5; COCO mAP through pycocotools for COCO datasets)."""

from __future__ import annotations

from typing import Any

import torch

from slimkit.models import create_model
from slimkit.tasks import distributed
from slimkit.tasks.base import BaseTask
from slimkit.tasks.metrics import VOCMeter, coco_map


class _Meter:
    def __init__(self, task: Detector) -> None:
        self.task = task
        self.meter = VOCMeter(task.num_classes, iou_threshold=0.5, use_11_point=False)
        self.predictions: list[dict[str, Any]] = []

    def update(self, outputs: Any, targets: list[dict[str, Any]]) -> None:
        dets = self.task.decode(outputs)
        for det, tgt in zip(dets, targets, strict=True):
            self.meter.update(
                det["boxes"].numpy(),
                det["scores"].numpy(),
                det["labels"].numpy(),
                tgt["boxes"].numpy(),
                tgt["labels"].numpy(),
                tgt["difficult"].numpy(),
            )
            self.predictions.append({"det": det, "target": tgt})

    def compute(self) -> dict[str, Any]:
        return self.meter.compute()


class Detector(BaseTask):
    """A detector over a registered architecture (``yolov3_mobilenetv1``)."""

    task = "det"
    metric_name = "bbox_map"

    def __init__(
        self, *args: Any, score_threshold: float = 0.01, nms_threshold: float = 0.45, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def _net_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "input_size": self.input_size, **self.model_kwargs}

    @property
    def head(self) -> Any:
        """The module that owns anchors, loss and decoding (the FP32 net; rebuilt for Quant models).

        Any registered detector with YOLOv3's ``compute_loss`` and ``postprocess`` works.
        """
        if self.net is not None:
            return self.net
        if getattr(self, "_decoder", None) is None:
            self._decoder = create_model(self.architecture, **self._net_kwargs())
        return self._decoder

    def compute_loss(self, outputs: Any, targets: list[dict[str, Any]]) -> torch.Tensor:
        device = outputs[0].device
        tg = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        return self.head.compute_loss(outputs, tg, self.input_size)["loss"]

    def decode(self, outputs: Any, score_threshold: float | None = None) -> list[dict[str, Any]]:
        """Raw head maps → per-image boxes (xyxy, network-input pixels), scores and labels."""
        dets = self.head.postprocess(
            tuple(o.float() for o in outputs),
            self.input_size,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            nms_threshold=self.nms_threshold,
        )
        return [{k: v.detach().cpu() for k, v in d.items()} for d in dets]

    def make_meter(self) -> _Meter:
        return _Meter(self)

    @distributed.meter_loop
    @torch.inference_mode()
    def evaluate(self, eval_dataset: Any, batch_size: int = 8, progress: bool = False) -> dict:
        """VOC mAP@0.5 (``bbox_map``); for a ``CocoDetection`` dataset also COCO AP (pycocotools)."""
        if not hasattr(eval_dataset, "ann_file"):  # VOC (or any non-COCO) dataset
            return super().evaluate(eval_dataset, batch_size, progress)
        if self.net is not None:
            self.net.to(self.device).eval()
        meter = self.make_meter()
        for images, targets in self.make_loader(eval_dataset, batch_size):
            meter.update(self._forward(images), targets)
        result = {k: v for k, v in meter.compute().items() if not isinstance(v, (list, dict))}
        preds = [self._to_original(p["det"], p["target"]) for p in meter.predictions]
        image_ids = [p["target"]["image_id"] for p in meter.predictions]
        coco = coco_map(preds, eval_dataset.ann_file, image_ids, eval_dataset.cat_ids)
        result.update({"coco_" + k.removeprefix("bbox_"): v for k, v in coco.items()})
        return result

    def _to_original(self, det: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        h, w = target["orig_size"]
        scale = torch.tensor([w / self.input_size[1], h / self.input_size[0]] * 2)
        return {**det, "boxes": det["boxes"] * scale}

    def postprocess(self, outputs: Any, infos: list[dict[str, Any]]) -> list[Any]:
        """Per image: ``[{category_id, category, bbox [x, y, w, h], score}]`` in original pixels."""
        results = []
        for det, info in zip(self.decode(outputs, 0.05), infos, strict=True):
            det = self._to_original(det, {"orig_size": info["orig_size"]})
            results.append(
                [
                    {
                        "category_id": int(label),
                        "category": self.labels[int(label)],
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                        "score": float(score),
                    }
                    for (x1, y1, x2, y2), score, label in zip(
                        det["boxes"].tolist(),
                        det["scores"].tolist(),
                        det["labels"].tolist(),
                        strict=True,
                    )
                ]
            )
        return results


class YOLOv3(Detector):
    """YOLOv3 detector (PaddleX ``pdx.det.YOLOv3``); backbone ``"MobileNetV1"``."""

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "MobileNetV1",
        input_size: Any = None,
        anchors: list[int] | None = None,
        anchor_masks: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        arch = f"yolov3_{backbone.lower()}"
        if anchors is not None:
            kwargs["anchors"] = list(anchors)
        if anchor_masks is not None:
            kwargs["anchor_masks"] = [list(m) for m in anchor_masks]
        super().__init__(arch, num_classes, input_size, **kwargs)
