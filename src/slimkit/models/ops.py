"""Box operations: IoU, greedy NMS and class-aware NMS (no torchvision).

Boxes are ``xyxy`` in continuous pixel coordinates (width = ``x2 - x1``, no ``+ 1``).
"""

from __future__ import annotations

import torch

__all__ = ["batched_nms", "box_area", "box_iou", "nms"]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Return the areas ``[...]`` of boxes ``[..., 4]``; inverted boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union.

    Leading dimensions broadcast, so batched inputs ``[B, N, 4]`` and ``[B, M, 4]`` work too.
    Pairs with an empty union (two degenerate boxes) get IoU 0.

    Args:
        boxes1: Boxes ``[..., N, 4]`` (xyxy).
        boxes2: Boxes ``[..., M, 4]`` (xyxy).

    Returns:
        IoU matrix ``[..., N, M]``.
    """
    if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(
            f"boxes must have shape [..., 4] (xyxy), got {tuple(boxes1.shape)} and "
            f"{tuple(boxes2.shape)}"
        )
    a = boxes1.unsqueeze(-2)  # [..., N, 1, 4]
    b = boxes2.unsqueeze(-3)  # [..., 1, M, 4]
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def _check_nms_inputs(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (xyxy), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must have shape [N] matching boxes [N, 4], got {tuple(scores.shape)} "
            f"for {boxes.shape[0]} boxes"
        )


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Visits boxes by decreasing score (ties keep input order); a box is kept unless its IoU with an
    already kept box is greater than ``iou_threshold``. The IoU matrix is computed once, so memory
    is ``O(N**2)``: cap ``N`` (e.g. a pre-NMS top-k) for large inputs. The Python loop runs once
    per *kept* box, each step vectorised over the remaining boxes.

    Args:
        boxes: Boxes ``[N, 4]`` (xyxy).
        scores: Scores ``[N]``.
        iou_threshold: Boxes overlapping a kept box by more than this are discarded.

    Returns:
        Indices (``int64``) of the kept boxes, by decreasing score.
    """
    _check_nms_inputs(boxes, scores)
    order = torch.argsort(scores, descending=True, stable=True)
    suppress = box_iou(boxes[order], boxes[order]) > iou_threshold  # [N, N], sorted order
    remaining = torch.arange(order.numel(), device=boxes.device)
    kept = []
    while remaining.numel() > 0:
        best, rest = remaining[0], remaining[1:]
        kept.append(best)
        remaining = rest[~suppress[best, rest]]
    if not kept:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    return order[torch.stack(kept)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS: boxes with different labels never suppress each other.

    Each class is shifted by a per-label offset larger than the coordinate range, then a single
    :func:`nms` runs over all boxes.

    Args:
        boxes: Boxes ``[N, 4]`` (xyxy).
        scores: Scores ``[N]``.
        labels: Integer class labels ``[N]``.
        iou_threshold: IoU above which a lower-scored box of the same label is discarded.

    Returns:
        Indices (``int64``) of the kept boxes, by decreasing score.
    """
    _check_nms_inputs(boxes, scores)
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels must have shape [N] matching scores, got {tuple(labels.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # float64 keeps the shifted coordinates exact enough for many classes (MPS lacks float64)
    dtype = boxes.dtype if boxes.device.type == "mps" else torch.float64
    boxes = boxes.to(dtype)
    offsets = labels.to(dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
