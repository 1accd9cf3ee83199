"""YOLOv3 with a zoo backbone, built like PaddleDetection's ``YOLOv3Head`` (as used by PaddleX).

``forward`` returns the three raw head maps (stride 32, 16, 8), each ``[B, A * (5 + C), H, W]``
with per-anchor channels ``(tx, ty, tw, th, objectness, class_0 .. class_{C-1})``. Decoding, the
loss and NMS live in :meth:`YOLOv3.decode`, :meth:`YOLOv3.compute_loss` and
:meth:`YOLOv3.postprocess`, outside the traced graph.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._utils import as_hw

from ._registry import create_model, register_model
from .mobilenetv1 import ConvBnAct, init_weights, make_divisible
from .ops import batched_nms, box_iou

__all__ = ["DEFAULT_ANCHORS", "DEFAULT_ANCHOR_MASKS", "YOLOv3", "yolov3_mobilenetv1"]

DEFAULT_ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)  # fmt: skip
DEFAULT_ANCHOR_MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
_MAX_LOG_WH = 10.0  # clamp on tw/th before exp() when decoding, avoids inf boxes
_BACKBONE_LEVELS = (2, 3, 4)  # feature levels with strides 8, 16, 32

_LeakyReLU = functools.partial(nn.LeakyReLU, 0.1)
_OBJ_PRIOR = 0.01  # initial objectness probability of every prediction


class YoloDetBlock(nn.Module):
    """Alternating 1x1/3x3 conv-BN-LeakyReLU; returns ``(route, tip)`` like PaddleDetection."""

    def __init__(self, in_chs: int, chs: int) -> None:
        super().__init__()
        self.conv0 = ConvBnAct(in_chs, chs, 1, act_layer=_LeakyReLU)
        self.conv1 = ConvBnAct(chs, chs * 2, 3, act_layer=_LeakyReLU)
        self.conv2 = ConvBnAct(chs * 2, chs, 1, act_layer=_LeakyReLU)
        self.conv3 = ConvBnAct(chs, chs * 2, 3, act_layer=_LeakyReLU)
        self.route = ConvBnAct(chs * 2, chs, 1, act_layer=_LeakyReLU)
        self.tip = ConvBnAct(chs, chs * 2, 3, act_layer=_LeakyReLU)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.route(self.conv3(self.conv2(self.conv1(self.conv0(x)))))
        return route, self.tip(route)


def _parse_anchors(anchors: Sequence[Any] | None, input_size: tuple[int, int]) -> torch.Tensor:
    """Return anchors as a float CPU tensor ``[N, 2]`` of ``(w, h)`` pixels.

    On the CPU even under ``torch.device("meta")`` (the size check builds nets there): the values
    are checked here, and a meta tensor has none.
    """
    if anchors is None:
        scale = min(input_size) / 416
        return torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32, device="cpu") * scale
    flat = torch.as_tensor(anchors, dtype=torch.float32, device="cpu").flatten()
    if flat.numel() == 0 or flat.numel() % 2 or not bool((flat > 0).all()):
        raise ValueError(
            "anchors must be positive (w, h) pixel pairs, e.g. [[10, 13], [16, 30], ...] or "
            f"[10, 13, 16, 30, ...], got {anchors!r}"
        )
    return flat.view(-1, 2)


def _parse_masks(
    masks: Sequence[Sequence[int]] | None, num_anchors: int
) -> tuple[tuple[int, ...], ...]:
    """Return three anchor-index groups (stride 32, 16, 8)."""
    if masks is None:
        if num_anchors != len(DEFAULT_ANCHORS):
            raise ValueError(
                f"with {num_anchors} custom anchors, pass anchor_masks (3 lists of anchor "
                "indices for strides 32, 16, 8)"
            )
        return DEFAULT_ANCHOR_MASKS
    groups = tuple(tuple(int(i) for i in m) for m in masks)
    used = [i for g in groups for i in g]
    if (
        len(groups) != 3
        or any(not g for g in groups)
        or any(not 0 <= i < num_anchors for i in used)
    ):
        raise ValueError(
            f"anchor_masks must be 3 non-empty lists (strides 32, 16, 8) of indices into the "
            f"{num_anchors} anchors, got {masks!r}"
        )
    return groups


class YOLOv3(nn.Module):
    """YOLOv3 detector: backbone (strides 8/16/32) + three YOLO detection blocks + 1x1 heads.

    Module names: ``backbone.*``, ``yolo_blocks.{0,1,2}`` (stride 32, 16, 8), ``route_convs.{0,1}``
    (1x1 conv before each 2x upsample), ``heads.{0,1,2}`` (output convs, in ``prune_ignore``).
    """

    prune_ignore: tuple[str, ...]
    anchors: torch.Tensor  # a buffer: [num_anchors, 2] (w, h) in input pixels

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "mobilenetv1",
        width_mult: float = 1.0,
        anchors: Sequence[Any] | None = None,
        anchor_masks: Sequence[Sequence[int]] | None = None,
        input_size: int | Sequence[int] = (416, 416),
        neck_width: float = 1.0,
        in_chans: int = 3,
        ignore_threshold: float = 0.7,
    ) -> None:
        """Build the detector.

        Args:
            num_classes: Number of object classes ``C``.
            backbone: Registered backbone name supporting ``features_only`` (case-insensitive).
            width_mult: Backbone channel multiplier.
            anchors: ``(w, h)`` anchor sizes in pixels of the network input (pairs or a flat
                list). Default: the YOLOv3 COCO anchors scaled by ``min(input_size) / 416``.
            anchor_masks: Anchor indices for the stride 32, 16 and 8 heads; default
                ``[[6, 7, 8], [3, 4, 5], [0, 1, 2]]``.
            input_size: Nominal network input ``(height, width)``; only scales default anchors.
            neck_width: Multiplier on the detection-block widths (512, 256, 128 at 1.0).
            in_chans: Input image channels.
            ignore_threshold: Predictions whose decoded box overlaps a ground truth by more
                than this IoU get no objectness loss as negatives.
        """
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not neck_width > 0:
            raise ValueError(f"neck_width must be > 0, got {neck_width!r}")
        self.num_classes = num_classes
        self.input_size = as_hw(input_size, "input_size")
        self.ignore_threshold = float(ignore_threshold)
        self.register_buffer("anchors", _parse_anchors(anchors, self.input_size), persistent=False)
        self.anchor_masks = _parse_masks(anchor_masks, len(self.anchors))
        self.backbone = create_model(
            backbone.lower(),
            features_only=True,
            out_indices=_BACKBONE_LEVELS,
            width_mult=width_mult,
            in_chans=in_chans,
        )
        feature_info: list[dict[str, Any]] = self.backbone.feature_info  # type: ignore[assignment]
        reductions = [f["reduction"] for f in feature_info]
        if reductions != [8, 16, 32]:
            raise ValueError(f"backbone {backbone!r} must give strides 8/16/32, got {reductions}")
        self._build_neck([f["num_chs"] for f in feature_info][::-1], neck_width)
        self.prune_ignore = tuple(f"heads.{i}" for i in range(len(self.heads)))

    def _build_neck(self, backbone_chs: list[int], neck_width: float) -> None:
        """Create detection blocks, route convs and heads for backbone channels (stride 32 first)."""
        widths = [make_divisible(512 * neck_width) // 2**i for i in range(3)]
        blocks, routes, heads = [], [], list[nn.Conv2d]()
        route_chs = 0
        for i, (in_chs, chs) in enumerate(zip(backbone_chs, widths, strict=True)):
            blocks.append(YoloDetBlock(in_chs + route_chs, chs))
            heads.append(nn.Conv2d(chs * 2, len(self.anchor_masks[i]) * (5 + self.num_classes), 1))
            if i < 2:
                route_chs = chs // 2
                routes.append(ConvBnAct(chs, route_chs, 1, act_layer=_LeakyReLU))
        self.yolo_blocks = nn.ModuleList(blocks)
        self.route_convs = nn.ModuleList(routes)
        self.heads = nn.ModuleList(heads)
        init_weights(self.yolo_blocks)
        init_weights(self.route_convs)
        for head, mask in zip(heads, self.anchor_masks, strict=True):
            nn.init.normal_(head.weight, 0.0, 0.01)
            bias = head.bias.detach().view(len(mask), 5 + self.num_classes)  # type: ignore[union-attr]
            bias.zero_()
            # objectness starts at the prior 0.01 (RetinaNet), not 0.5: otherwise the ~1000
            # negative cells per image dominate the loss and the gradients of the first epochs
            bias[:, 4] = math.log(_OBJ_PRIOR / (1 - _OBJ_PRIOR))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return raw head maps at strides 32, 16 and 8, each ``[B, A * (5 + C), H, W]``.

        The input height and width must be multiples of 32.
        """
        feats = self.backbone(x)[::-1]  # stride 32, 16, 8
        outputs = []
        route = None
        for i, (feat, block, head) in enumerate(
            zip(feats, self.yolo_blocks, self.heads, strict=True)
        ):
            if route is not None:
                feat = torch.cat([route, feat], dim=1)
            route, tip = block(feat)
            outputs.append(head(tip))
            if i < len(self.route_convs):
                route = F.interpolate(self.route_convs[i](route), scale_factor=2.0, mode="nearest")
        return outputs[0], outputs[1], outputs[2]

    def _split_heads(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reshape raw maps to ``[B, A, H, W, 5 + C]``, checking them against the model."""
        if len(outputs) != len(self.anchor_masks):
            raise ValueError(f"expected {len(self.anchor_masks)} head maps, got {len(outputs)}")
        maps = []
        for out, mask in zip(outputs, self.anchor_masks, strict=True):
            b, c, h, w = out.shape
            if c != len(mask) * (5 + self.num_classes):
                raise ValueError(
                    f"head map has {c} channels; expected {len(mask)} anchors x (5 + "
                    f"{self.num_classes} classes) — were the outputs made by this model?"
                )
            maps.append(out.view(b, len(mask), 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        return maps

    def _decode_boxes(self, raw: torch.Tensor, scale: int, img_hw: tuple[int, int]) -> torch.Tensor:
        """Decode ``raw [B, A, H, W, 5 + C]`` of one scale to xyxy pixel boxes ``[B, A, H, W, 4]``."""
        _, _, h, w, _ = raw.shape
        stride = raw.new_tensor([img_hw[1] / w, img_hw[0] / h])
        ys, xs = torch.meshgrid(
            torch.arange(h, device=raw.device), torch.arange(w, device=raw.device), indexing="ij"
        )
        grid = torch.stack([xs, ys], dim=-1).to(raw.dtype)  # [H, W, 2] as (x, y)
        anchors = self.anchors[list(self.anchor_masks[scale])].to(raw.dtype)[:, None, None, :]
        center = (raw[..., :2].sigmoid() + grid) * stride
        size = raw[..., 2:4].clamp(max=_MAX_LOG_WH).exp() * anchors
        return torch.cat([center - size / 2, center + size / 2], dim=-1)

    @torch.no_grad()
    def decode(
        self, outputs: Sequence[torch.Tensor], img_size: int | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode raw head maps into all candidate boxes.

        Args:
            outputs: The three maps returned by :meth:`forward`.
            img_size: Network input size ``(height, width)`` (or an int for square inputs).

        Returns:
            Boxes ``[B, P, 4]`` (xyxy pixels, not clipped) and per-class scores ``[B, P, C]``
            equal to ``sigmoid(objectness) * sigmoid(class logit)``.
        """
        img_hw = as_hw(img_size, "img_size")
        all_boxes, all_scores = [], []
        for scale, raw in enumerate(self._split_heads(outputs)):
            b = raw.shape[0]
            all_boxes.append(self._decode_boxes(raw, scale, img_hw).reshape(b, -1, 4))
            scores = raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()
            all_scores.append(scores.reshape(b, -1, self.num_classes))
        return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)

    @torch.no_grad()
    def postprocess(
        self,
        outputs: Sequence[torch.Tensor],
        img_size: int | Sequence[int],
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
    ) -> list[dict[str, torch.Tensor]]:
        """Turn raw head maps into detections with class-aware NMS.

        Args:
            outputs: The three maps returned by :meth:`forward`.
            img_size: Network input size ``(height, width)`` (or an int for square inputs).
            score_threshold: Minimum ``sigmoid(obj) * sigmoid(cls)`` of a candidate.
            nms_threshold: IoU above which a lower-scored box of the same class is dropped.
            max_detections: Detections kept per image.
            pre_nms_top_k: Highest-scoring candidates per image that enter NMS.

        Returns:
            One dict per image: ``boxes`` ``[K, 4]`` (xyxy pixels, clipped to the image),
            ``scores`` ``[K]`` and ``labels`` ``[K]`` (int64), by decreasing score.
        """
        img_h, img_w = as_hw(img_size, "img_size")
        boxes, scores = self.decode(outputs, (img_h, img_w))
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, img_w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, img_h)
        results = []
        for img_boxes, img_scores in zip(boxes, scores, strict=True):
            box_idx, labels = (img_scores > score_threshold).nonzero(as_tuple=True)
            cand_scores = img_scores[box_idx, labels]
            cand_scores, top = cand_scores.topk(min(pre_nms_top_k, cand_scores.numel()))
            box_idx, labels = box_idx[top], labels[top]
            keep = batched_nms(img_boxes[box_idx], cand_scores, labels, nms_threshold)
            keep = keep[:max_detections]
            results.append(
                {
                    "boxes": img_boxes[box_idx[keep]],
                    "scores": cand_scores[keep],
                    "labels": labels[keep],
                }
            )
        return results

    def compute_loss(
        self,
        outputs: Sequence[torch.Tensor],
        targets: Sequence[Mapping[str, torch.Tensor]],
        img_size: int | Sequence[int],
    ) -> dict[str, torch.Tensor]:
        """YOLOv3 loss, summed over anchors, cells and boxes and averaged over the batch.

        Each ground truth is assigned to the anchor (of all of them) with the best shape IoU, at
        the cell holding its centre in the scale owning that anchor. Terms: ``loss_xy`` (BCE on the
        sigmoid cell offsets), ``loss_wh`` (L1 on log-size targets), both weighted by
        ``2 - w * h / image_area``; ``loss_obj`` (BCE; negatives whose decoded box has IoU above
        ``ignore_threshold`` with any ground truth are ignored); ``loss_cls`` (multi-label BCE).

        Args:
            outputs: The three maps returned by :meth:`forward`.
            targets: One dict per image with ``boxes`` ``[N, 4]`` (xyxy, pixels of the network
                input) and ``labels`` ``[N]`` (int64 in ``[0, num_classes)``); ``N`` may be 0.
            img_size: Network input size ``(height, width)`` (or an int for square inputs).

        Returns:
            ``{"loss", "loss_xy", "loss_wh", "loss_obj", "loss_cls"}`` (scalar tensors).
        """
        img_hw = as_hw(img_size, "img_size")
        maps = [m.float() for m in self._split_heads(outputs)]  # the loss is always in float32
        gt = _collect_targets(targets, maps[0].shape[0], self.num_classes, maps[0].device)
        best_anchor = _best_anchor(gt.boxes, self.anchors.float())
        parts = torch.zeros(4, device=maps[0].device)
        for scale, raw in enumerate(maps):
            parts = parts + self._scale_loss(raw, scale, gt, best_anchor, img_hw)
        parts = parts / maps[0].shape[0]
        names = ("loss_xy", "loss_wh", "loss_obj", "loss_cls")
        return {"loss": parts.sum(), **dict(zip(names, parts.unbind(), strict=True))}

    def _scale_loss(
        self,
        raw: torch.Tensor,
        scale: int,
        gt: _Targets,
        best_anchor: torch.Tensor,
        img_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Return the summed ``(xy, wh, obj, cls)`` losses of one scale as a tensor ``[4]``."""
        bsz, num_a, h, w, _ = raw.shape
        mask = torch.tensor(self.anchor_masks[scale], device=raw.device)
        gt_idx, a_idx = (best_anchor[:, None] == mask[None, :]).nonzero(as_tuple=True)
        boxes = gt.boxes[gt_idx]
        center = (boxes[:, :2] + boxes[:, 2:]) / 2 / raw.new_tensor([img_hw[1] / w, img_hw[0] / h])
        size = boxes[:, 2:] - boxes[:, :2]
        cell_x = center[:, 0].long().clamp(0, w - 1)
        cell_y = center[:, 1].long().clamp(0, h - 1)
        b_idx = gt.batch_idx[gt_idx]
        pos = raw[b_idx, a_idx, cell_y, cell_x]  # [P, 5 + C]
        weight = (2.0 - size.prod(1) / (img_hw[0] * img_hw[1]))[:, None]
        xy_target = (center - torch.stack([cell_x, cell_y], dim=1)).clamp(0, 1)
        wh_target = torch.log(size / self.anchors[mask[a_idx]].float())
        bce = F.binary_cross_entropy_with_logits
        loss_xy = (bce(pos[:, :2], xy_target, reduction="none") * weight).sum()
        loss_wh = ((pos[:, 2:4] - wh_target).abs() * weight).sum()
        cls_target = F.one_hot(gt.labels[gt_idx], self.num_classes).to(raw.dtype)
        loss_cls = bce(pos[:, 5:], cls_target, reduction="sum")

        obj_target = torch.zeros(raw.shape[:4], dtype=raw.dtype, device=raw.device)
        obj_target[b_idx, a_idx, cell_y, cell_x] = 1.0
        pred_boxes = self._decode_boxes(raw.detach(), scale, img_hw).reshape(bsz, -1, 4)
        iou = box_iou(pred_boxes, gt.padded).masked_fill(~gt.padded_valid[:, None, :], 0.0)
        ignore = (iou.amax(dim=-1) > self.ignore_threshold).view(bsz, num_a, h, w)
        obj_weight = torch.where(obj_target > 0, 1.0, (~ignore).to(raw.dtype))
        loss_obj = (bce(raw[..., 4], obj_target, reduction="none") * obj_weight).sum()
        return torch.stack([loss_xy, loss_wh, loss_obj, loss_cls])


class _Targets(NamedTuple):
    """Ground truths of a batch, flat (``boxes``, ``labels``, ``batch_idx``) and padded per image."""

    boxes: torch.Tensor  # [M, 4]
    labels: torch.Tensor  # [M]
    batch_idx: torch.Tensor  # [M]
    padded: torch.Tensor  # [B, N, 4]
    padded_valid: torch.Tensor  # [B, N]


def _collect_targets(
    targets: Sequence[Mapping[str, torch.Tensor]],
    batch_size: int,
    num_classes: int,
    device: torch.device,
) -> _Targets:
    """Validate targets, drop empty boxes and gather them flat and padded to ``[B, N, 4]``."""
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
    per_image = []
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"target {i} needs 'boxes' [N, 4] and 'labels' [N], has {list(t)}")
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], device=device).long().reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"target {i}: {len(boxes)} boxes but {len(labels)} labels")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            raise ValueError(f"target {i}: labels must be in [0, {num_classes}), got {labels}")
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        per_image.append((boxes[keep], labels[keep]))
    max_n = max([1, *(len(b) for b, _ in per_image)])
    padded = torch.zeros(batch_size, max_n, 4, device=device)
    valid = torch.zeros(batch_size, max_n, dtype=torch.bool, device=device)
    for i, (boxes, _) in enumerate(per_image):
        padded[i, : len(boxes)] = boxes
        valid[i, : len(boxes)] = True
    counts = torch.tensor([len(b) for b, _ in per_image], device=device)
    return _Targets(
        boxes=torch.cat([b for b, _ in per_image]),
        labels=torch.cat([lab for _, lab in per_image]),
        batch_idx=torch.repeat_interleave(torch.arange(batch_size, device=device), counts),
        padded=padded,
        padded_valid=valid,
    )


def _best_anchor(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Index of the anchor with the best shape IoU (boxes and anchors centred) for each box."""
    wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]  # [M, 1, 2]
    inter = torch.minimum(wh, anchors[None]).prod(-1)  # [M, num_anchors]
    union = wh.prod(-1) + anchors.prod(-1)[None] - inter
    return (inter / union).argmax(dim=1)


@register_model(
    task="det",
    display_name="YOLOv3-MobileNetV1",
    input_size=608,
    # the key predates neck_width: the shipped _w0.5 file was computed with neck_width 0.5
    sensitivity_key="yolov3_mobilenetv1_w{width_mult:g}",
)
def yolov3_mobilenetv1(width_mult: float = 1.0, **kwargs: Any) -> YOLOv3:
    """YOLOv3 with a MobileNetV1 backbone; keyword arguments go to :class:`YOLOv3`."""
    if "backbone" in kwargs:
        raise TypeError("yolov3_mobilenetv1 fixes the backbone; use YOLOv3(backbone=...) instead")
    return YOLOv3(backbone="mobilenetv1", width_mult=width_mult, **kwargs)
