"""Evaluation metrics: top-k accuracy, VOC and COCO box mAP, segmentation mIoU.

Every metric is a pure function or a small streaming meter (``update`` per batch or image, then
``compute``). Inputs may be torch tensors (any device) or numpy arrays. Results are plain Python
floats in ``[0, 1]`` so they serialise to ``model.yml`` as they are. Per-class lists hold
``float("nan")`` for a class the metric is undefined for.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ClassificationMeter",
    "SegMeter",
    "VOCMeter",
    "coco_map",
    "topk_accuracy",
    "voc_ap",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def _to_numpy(x: ArrayLike, dtype: Any = None) -> np.ndarray:
    """Converts a tensor, array or sequence to a numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _to_tensor(x: ArrayLike) -> torch.Tensor:
    """Converts an array or sequence to a tensor; tensors are returned detached as they are."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


def _topk_correct(
    logits: ArrayLike, labels: ArrayLike, ks: Sequence[int]
) -> tuple[dict[int, int], int]:
    """Counts, for each k, the samples whose label is among the k highest logits.

    Returns:
        ``({k: number correct}, number of samples)``; k larger than the number of classes is
        capped at the number of classes.
    """
    logits_t, labels_t = _to_tensor(logits), _to_tensor(labels).long().flatten()
    if logits_t.ndim != 2:
        raise ValueError(f"logits must be [N, num_classes], got shape {tuple(logits_t.shape)}")
    if logits_t.shape[0] != labels_t.numel():
        raise ValueError(
            f"logits hold {logits_t.shape[0]} samples but labels hold {labels_t.numel()}"
        )
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    num_classes = logits_t.shape[1]
    if labels_t.numel() and (labels_t.min() < 0 or labels_t.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels_t.tolist()}")
    max_k = min(max(int(k) for k in ks), num_classes)
    top = logits_t.topk(max_k, dim=1).indices.cpu()
    hits = top == labels_t.cpu().unsqueeze(1)
    correct = {int(k): int(hits[:, : min(int(k), num_classes)].any(dim=1).sum()) for k in ks}
    return correct, labels_t.numel()


def topk_accuracy(
    logits: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy of a batch of logits.

    Args:
        logits: Scores ``[N, num_classes]`` (logits or probabilities).
        labels: True class indices ``[N]``.
        ks: The k values; a k above ``num_classes`` is capped at ``num_classes`` (so it is 1.0).

    Returns:
        ``{"acc1": ..., "acc5": ...}`` (one key ``f"acc{k}"`` per requested k), fractions in [0, 1].
    """
    correct, total = _topk_correct(logits, labels, ks)
    if total == 0:
        raise ValueError("topk_accuracy needs at least one sample; got empty logits")
    return {f"acc{k}": correct[k] / total for k in correct}


class ClassificationMeter:
    """Streaming top-k accuracy over batches.

    Args:
        ks: The k values, as in :func:`topk_accuracy`.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        """Forgets every batch seen so far."""
        self.correct = {k: 0 for k in self.ks}
        self.total = 0

    def update(self, logits: ArrayLike, labels: ArrayLike) -> None:
        """Adds a batch of logits ``[N, num_classes]`` and labels ``[N]``."""
        correct, total = _topk_correct(logits, labels, self.ks)
        for k, c in correct.items():
            self.correct[k] += c
        self.total += total

    def merge(self, other: ClassificationMeter) -> None:
        """Adds the samples ``other`` saw (another process's share of the set): correct counts
        and totals add up, so the merged accuracy is the one over both shares."""
        if other.ks != self.ks:
            raise ValueError(f"cannot merge a meter of ks={other.ks} into one of ks={self.ks}")
        for k in self.ks:
            self.correct[k] += other.correct[k]
        self.total += other.total

    def compute(self) -> dict[str, float]:
        """Returns ``{"acc1": ..., "acc5": ...}`` over every sample seen."""
        if self.total == 0:
            raise ValueError("ClassificationMeter.compute() called before any update()")
        return {f"acc{k}": self.correct[k] / self.total for k in self.ks}


# --------------------------------------------------------------------------------------------------
# Pascal VOC detection mAP
# --------------------------------------------------------------------------------------------------


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between two sets of xyxy boxes in continuous coordinates (area = (x2-x1)*(y2-y1)).

    Args:
        a: Boxes ``[N, 4]``.
        b: Boxes ``[M, 4]``.

    Returns:
        IoU matrix ``[N, M]``; 0 where the union is empty.
    """
    a, b = (
        np.asarray(a, dtype=np.float64).reshape(-1, 4),
        np.asarray(b, dtype=np.float64).reshape(-1, 4),
    )
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_ap(recall: ArrayLike, precision: ArrayLike, use_11_point: bool = False) -> float:
    """Average precision from a precision/recall curve, as in the VOC devkit.

    Args:
        recall: Cumulative recall after each ranked detection (non-decreasing).
        precision: Cumulative precision after each ranked detection.
        use_11_point: VOC2007 11-point metric: the mean over t in {0, 0.1, ..., 1} of the highest
            precision at recall >= t (0 where no such point). Otherwise (VOC2010+) the area under
            the precision envelope (precision made monotonically non-increasing), summed where
            recall changes.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve.
    """
    rec, prec = _to_numpy(recall, np.float64).ravel(), _to_numpy(precision, np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.size} vs {prec.size}")
    if rec.size == 0:
        return 0.0
    if use_11_point:
        # t = i / 10 rather than np.arange(0, 1.1, 0.1), whose 0.30000000000000004 would miss a
        # recall of exactly 3/10.
        points = [prec[rec >= i / 10].max() if (rec >= i / 10).any() else 0.0 for i in range(11)]
        return float(np.mean(points))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


class VOCMeter:
    """Pascal VOC box mAP, accumulated one image at a time.

    Protocol: per class, the detections of all images are ranked by decreasing score (ties keep
    insertion order). Each is compared, as in the official VOC devkit, with the highest-IoU gt box
    of its class in its image; the match holds when IoU > ``iou_threshold`` (strictly). A match to
    a difficult gt is neither TP nor FP; a match to a non-difficult gt already taken by a
    higher-scored detection is a duplicate (FP); otherwise it is a TP and takes the gt. No match
    is a FP. ``npos`` counts non-difficult gts only.

    Boxes are xyxy in continuous pixel coordinates: area = (x2 - x1) * (y2 - y1), without the
    legacy devkit's +1 (which assumed inclusive integer pixel indices).

    Args:
        num_classes: Number of classes; labels lie in ``[0, num_classes)``.
        iou_threshold: IoU a detection must exceed to match a gt.
        use_11_point: VOC2007 11-point AP instead of the area under the curve (see :func:`voc_ap`).
    """

    def __init__(
        self, num_classes: int, iou_threshold: float = 0.5, use_11_point: bool = False
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1), got {iou_threshold}")
        self.num_classes = int(num_classes)
        self.iou_threshold = float(iou_threshold)
        self.use_11_point = bool(use_11_point)
        self.reset()

    def reset(self) -> None:
        """Forgets every image seen so far."""
        # Per class: list of (score, image index, box) detections; per image: gt arrays.
        self._dets: list[list[tuple[float, int, np.ndarray]]] = [
            [] for _ in range(self.num_classes)
        ]
        self._gts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{what} must lie in [0, {self.num_classes}), got {sorted(set(labels.tolist()))}"
            )

    def update(
        self,
        pred_boxes: ArrayLike,
        pred_scores: ArrayLike,
        pred_labels: ArrayLike,
        gt_boxes: ArrayLike,
        gt_labels: ArrayLike,
        gt_difficult: ArrayLike | None = None,
    ) -> None:
        """Adds the detections and ground truth of one image.

        Args:
            pred_boxes: Detected boxes ``[K, 4]`` xyxy.
            pred_scores: Their scores ``[K]``.
            pred_labels: Their class indices ``[K]``.
            gt_boxes: Ground-truth boxes ``[N, 4]`` xyxy, same coordinates as the detections.
            gt_labels: Their class indices ``[N]``.
            gt_difficult: Their VOC "difficult" flags ``[N]``; None means none is difficult.
        """
        boxes = _to_numpy(pred_boxes, np.float64).reshape(-1, 4)
        scores = _to_numpy(pred_scores, np.float64).ravel()
        labels = _to_numpy(pred_labels, np.int64).ravel()
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"pred_boxes, pred_scores and pred_labels differ in length: "
                f"{len(boxes)}, {len(scores)}, {len(labels)}"
            )
        gtb = _to_numpy(gt_boxes, np.float64).reshape(-1, 4)
        gtl = _to_numpy(gt_labels, np.int64).ravel()
        gtd = (
            np.zeros(len(gtl), dtype=bool)
            if gt_difficult is None
            else _to_numpy(gt_difficult, bool).ravel()
        )
        if not len(gtb) == len(gtl) == len(gtd):
            raise ValueError(
                f"gt_boxes, gt_labels and gt_difficult differ in length: "
                f"{len(gtb)}, {len(gtl)}, {len(gtd)}"
            )
        self._check_labels(labels, "pred_labels")
        self._check_labels(gtl, "gt_labels")
        image = len(self._gts)
        self._gts.append((gtb, gtl, gtd))
        for box, score, label in zip(boxes, scores, labels, strict=True):
            self._dets[label].append((float(score), image, box))

    def merge(self, other: VOCMeter) -> None:
        """Appends the images ``other`` saw after this meter's own, in their order.

        Merging the meters of consecutive slices of a set in slice order reproduces the meter
        that saw the whole set (the same images in the same order, so even score ties rank alike).
        """
        if (other.num_classes, other.iou_threshold) != (self.num_classes, self.iou_threshold):
            raise ValueError("cannot merge VOC meters of other classes or IoU threshold")
        offset = len(self._gts)
        self._gts.extend(other._gts)
        for mine, theirs in zip(self._dets, other._dets, strict=True):
            mine.extend((score, image + offset, box) for score, image, box in theirs)

    def _class_ap(self, cls: int) -> float:
        """AP of one class, or NaN when it has no non-difficult gt."""
        gts = [(b[lab == cls], d[lab == cls]) for b, lab, d in self._gts]
        npos = sum(int((~d).sum()) for _, d in gts)
        if npos == 0:
            return float("nan")
        matched = [np.zeros(len(d), dtype=bool) for _, d in gts]
        dets = sorted(self._dets[cls], key=lambda det: -det[0])  # stable: ties keep order
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for i, (_, image, box) in enumerate(dets):
            gt_box, difficult = gts[image]
            iou = _box_iou(box[None], gt_box)[0]
            j = int(iou.argmax()) if iou.size else -1  # the best gt, matched or not (devkit)
            if j < 0 or iou[j] <= self.iou_threshold:
                fp[i] = 1
            elif difficult[j]:
                continue  # neither TP nor FP
            elif matched[image][j]:
                fp[i] = 1  # a duplicate of an already-detected object
            else:
                tp[i], matched[image][j] = 1, True
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return voc_ap(recall, precision, self.use_11_point)

    def compute(self) -> dict[str, Any]:
        """Returns the mAP over the images seen.

        Returns:
            ``{"bbox_map": float, "per_class_ap": list[float]}``. ``bbox_map`` is the mean AP over
            the classes with at least one non-difficult gt; ``per_class_ap[c]`` is NaN for the
            other classes (their detections are ignored).
        """
        if not self._gts:
            raise ValueError("VOCMeter.compute() called before any update()")
        per_class = [self._class_ap(c) for c in range(self.num_classes)]
        valid = [ap for ap in per_class if not np.isnan(ap)]
        if not valid:
            raise ValueError(
                "no class has a non-difficult ground-truth box; mAP is undefined for this data"
            )
        return {"bbox_map": float(np.mean(valid)), "per_class_ap": per_class}


# --------------------------------------------------------------------------------------------------
# COCO detection mAP (pycocotools)
# --------------------------------------------------------------------------------------------------


def _load_coco_gt(coco_gt: str | Path | dict[str, Any]) -> Any:
    """Builds a pycocotools ``COCO`` object in memory from a json path or an already loaded dict."""
    from pycocotools.coco import COCO  # heavy: loaded only for COCO evaluation

    if isinstance(coco_gt, (str, Path)):
        with open(coco_gt, encoding="utf-8") as f:
            dataset = json.load(f)
    elif isinstance(coco_gt, dict):
        dataset = dict(coco_gt)
    else:
        raise TypeError(
            f"coco_gt must be a path to a COCO json file or its dict, got {type(coco_gt).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"COCO ground truth lacks the {key!r} list")
    annotations = []
    for ann in dataset["annotations"]:  # COCOeval needs area and iscrowd on every gt
        ann = dict(ann)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
        annotations.append(ann)
    dataset["annotations"] = annotations
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _coco_results(
    predictions: Sequence[dict[str, ArrayLike]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Converts per-image xyxy predictions to COCO result dicts (xywh, category ids)."""
    if len(predictions) != len(image_ids):
        raise ValueError(
            f"predictions hold {len(predictions)} images but image_ids hold {len(image_ids)}"
        )
    results = []
    for pred, image_id in zip(predictions, image_ids, strict=True):
        boxes = _to_numpy(pred["boxes"], np.float64).reshape(-1, 4)
        scores = _to_numpy(pred["scores"], np.float64).ravel()
        labels = _to_numpy(pred["labels"], np.int64).ravel()
        if labels.size and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(
                f"prediction labels must index cat_ids (0..{len(cat_ids) - 1}), "
                f"got {sorted(set(labels.tolist()))}"
            )
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[label]),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(score),
                }
            )
    return results


def coco_map(
    predictions: Sequence[dict[str, ArrayLike]],
    coco_gt: str | Path | dict[str, Any],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
) -> dict[str, float]:
    """COCO box mAP through pycocotools (its printing suppressed).

    Args:
        predictions: One dict per image with ``boxes`` ``[K, 4]`` (xyxy, pixels of the original
            image, as in the annotations), ``scores`` ``[K]`` and ``labels`` ``[K]``, where label
            ``i`` stands for category ``cat_ids[i]``.
        coco_gt: The ground truth: a COCO-format json path or its loaded dict (not modified).
        image_ids: The COCO image id of each prediction; the evaluation is restricted to them.
        cat_ids: The COCO category id of each contiguous label; the evaluation is restricted to
            them.

    Returns:
        ``{"bbox_map": AP@[.5:.95], "bbox_map50": AP@.5}``; both 0.0 when there is no detection.
    """
    from pycocotools.cocoeval import COCOeval  # heavy, see above

    gt = _load_coco_gt(coco_gt)
    unknown = set(int(i) for i in image_ids) - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"image_ids not in the COCO ground truth: {sorted(unknown)[:10]}")
    if not gt.getAnnIds(imgIds=list(image_ids), catIds=list(cat_ids)):
        raise ValueError("no ground-truth box for these image_ids and cat_ids; mAP is undefined")
    results = _coco_results(predictions, image_ids, cat_ids)
    if not results:
        return {"bbox_map": 0.0, "bbox_map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.imgIds = [int(i) for i in image_ids]
        evaluator.params.catIds = [int(c) for c in cat_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"bbox_map": max(float(stats[0]), 0.0), "bbox_map50": max(float(stats[1]), 0.0)}


# --------------------------------------------------------------------------------------------------
# Semantic segmentation
# --------------------------------------------------------------------------------------------------


class SegMeter:
    """Confusion-matrix segmentation metrics (mIoU, per-class IoU, pixel accuracy).

    IoU of class c = TP / (TP + FP + FN) over all pixels seen. A class absent from both the ground
    truth and the predictions (TP + FP + FN = 0) has an undefined IoU: it is NaN in
    ``per_class_iou`` and left out of the mean. Pixels whose target is ``ignore_index`` are skipped.

    Args:
        num_classes: Number of classes; labels lie in ``[0, num_classes)``.
        ignore_index: Target value of pixels that are not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forgets every pixel seen so far."""
        # confusion[gt, pred]
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Adds a batch.

        Args:
            pred: Predicted label maps with the target's shape, or scores with one more dimension
                (classes at dim -3, e.g. ``[B, C, H, W]`` logits), which are argmax-ed.
            target: Ground-truth label maps, e.g. ``[B, H, W]``, ``ignore_index`` where unlabelled.
        """
        tgt = _to_numpy(target).astype(np.int64)
        if isinstance(pred, torch.Tensor) and pred.ndim == tgt.ndim + 1:
            pred = pred.detach().argmax(dim=-3)
        prd = _to_numpy(pred)
        if prd.ndim == tgt.ndim + 1:
            prd = prd.argmax(axis=-3)
        prd = prd.astype(np.int64)
        if prd.shape != tgt.shape:
            raise ValueError(
                f"pred shape {prd.shape} does not match target shape {tgt.shape} "
                "(pass label maps of the target's shape or [B, C, H, W] scores)"
            )
        keep = tgt != self.ignore_index
        tgt, prd = tgt[keep], prd[keep]
        for values, what in ((tgt, "target"), (prd, "pred")):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{what} labels must lie in [0, {self.num_classes}) or be "
                    f"ignore_index={self.ignore_index}; got values in "
                    f"[{values.min()}, {values.max()}]"
                )
        n = self.num_classes
        self.confusion += np.bincount(tgt * n + prd, minlength=n * n).reshape(n, n)

    def merge(self, other: SegMeter) -> None:
        """Adds the pixels ``other`` saw: confusion matrices add up (IoU's sufficient statistics)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError(
                f"cannot merge a meter of {other.num_classes} classes into one of "
                f"{self.num_classes}"
            )
        self.confusion += other.confusion

    def compute(self) -> dict[str, Any]:
        """Returns ``{"miou": float, "per_class_iou": list[float], "pixel_acc": float}``."""
        total = int(self.confusion.sum())
        if total == 0:
            raise ValueError("SegMeter.compute() called before any scored (non-ignored) pixel")
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        iou = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        return {
            "miou": float(np.nanmean(iou)),
            "per_class_iou": [float(v) for v in iou],
            "pixel_acc": float(tp.sum() / total),
        }
