"""Metrics checked against hand-computed values."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from slimkit.tasks.metrics import (
    ClassificationMeter,
    SegMeter,
    VOCMeter,
    coco_map,
    topk_accuracy,
    voc_ap,
)

# ------------------------------------------------------------------------------------------------
# top-k accuracy
# ------------------------------------------------------------------------------------------------

LOGITS = torch.tensor(
    [
        [0.1, 0.7, 0.2],  # label 1: top-1 hit
        [0.5, 0.3, 0.2],  # label 1: top-1 miss, top-2 {0, 1} hit
        [0.2, 0.3, 0.5],  # label 0: top-1 miss, top-2 {2, 1} miss
        [0.6, 0.1, 0.3],  # label 0: top-1 hit
    ]
)
LABELS = torch.tensor([1, 1, 0, 0])


def test_topk_accuracy_hand_computed_and_k_capped():
    acc = topk_accuracy(LOGITS, LABELS, ks=(1, 2, 5))
    # acc1 = 2/4, acc2 = 3/4; k=5 > 3 classes is capped at 3, so every label is in the top-k.
    assert acc == pytest.approx({"acc1": 0.5, "acc2": 0.75, "acc5": 1.0})
    assert topk_accuracy(LOGITS.numpy(), LABELS.numpy()) == pytest.approx(
        {"acc1": 0.5, "acc5": 1.0}
    )


def test_classification_meter_streams_like_one_batch():
    meter = ClassificationMeter(ks=(1, 2))
    meter.update(LOGITS[:1], LABELS[:1])
    meter.update(LOGITS[1:], LABELS[1:])
    assert meter.compute() == pytest.approx(topk_accuracy(LOGITS, LABELS, ks=(1, 2)))
    assert meter.total == 4
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()


def test_topk_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="samples"):
        topk_accuracy(LOGITS, LABELS[:3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        topk_accuracy(LOGITS, torch.tensor([0, 1, 2, 3]))


# ------------------------------------------------------------------------------------------------
# VOC mAP
# ------------------------------------------------------------------------------------------------

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [50.0, 50.0, 60.0, 60.0]


def voc(num_classes=1, **kw):
    return VOCMeter(num_classes, **kw)


def test_voc_ap_curves_by_hand():
    # Ranked TP, FP, TP with npos = 3: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    rec, prec = [1 / 3, 1 / 3, 2 / 3], [1.0, 0.5, 2 / 3]
    # Area: envelope 1 up to recall 1/3, then 2/3 up to recall 2/3: 1/3 * 1 + 1/3 * 2/3 = 5/9.
    assert voc_ap(rec, prec, use_11_point=False) == pytest.approx(5 / 9)
    # 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7 .. 1 -> 0; (4 + 2) / 11.
    assert voc_ap(rec, prec, use_11_point=True) == pytest.approx(6 / 11)
    assert voc_ap([], [], use_11_point=False) == 0.0
    # Recall of exactly 3/10 must count for the t = 0.3 point (no float drift in the thresholds).
    assert voc_ap([0.3], [1.0], use_11_point=True) == pytest.approx(4 / 11)


def test_voc_perfect_detector_is_one():
    for use_11_point in (False, True):
        m = voc(2, use_11_point=use_11_point)
        m.update([A, B], [0.9, 0.8], [0, 1], [A, B], [0, 1], [False, False])
        m.update(torch.tensor([B]), torch.tensor([0.3]), torch.tensor([0]), [B], [0])
        out = m.compute()
        assert out["bbox_map"] == pytest.approx(1.0)
        assert out["per_class_ap"] == pytest.approx([1.0, 1.0])


def test_voc_false_positive_ranked_above_true_positives():
    # Image 0: gts A, B; image 1: gt A. npos = 3.
    # Ranked detections: 0.9 FAR in image 1 (FP), 0.8 A in image 0 (TP),
    # 0.7 A shifted by 1 px in image 1 (IoU 90/110 = 0.82, TP); B is never detected.
    # recall 0, 1/3, 2/3; precision 0, 1/2, 2/3.
    # Area AP: envelope is 2/3 up to recall 2/3, so 2/3 * 2/3 = 4/9.
    # 11-point AP: t = 0 .. 0.6 (7 points) -> max precision 2/3; t = 0.7 .. 1 -> 0;
    # 7/11 * 2/3 = 14/33.
    shifted = [1.0, 0.0, 11.0, 10.0]
    for use_11_point, expected in ((False, 4 / 9), (True, 14 / 33)):
        m = voc(use_11_point=use_11_point)
        m.update([A], [0.8], [0], [A, B], [0, 0])
        m.update([FAR, shifted], [0.9, 0.7], [0, 0], [A], [0])
        assert m.compute()["bbox_map"] == pytest.approx(expected)


def test_voc_difficult_gt_is_neither_tp_nor_fp_nor_counted():
    # gts: A (normal), B (difficult). Detections on B (twice, ranked first) are ignored, so the
    # ranking is effectively just A: TP, npos = 1 -> AP 1. Were B-detections FPs the AP would be
    # 1/3; were B counted in npos it would be 0.5.
    m = voc()
    m.update([B, B, A], [0.95, 0.9, 0.8], [0, 0, 0], [A, B], [0, 0], [False, True])
    assert m.compute()["bbox_map"] == pytest.approx(1.0)


def test_voc_class_with_only_difficult_gts_is_excluded():
    m = voc(2)
    m.update([A, B], [0.9, 0.9], [0, 1], [A, B], [0, 1], [False, True])
    out = m.compute()
    assert out["bbox_map"] == pytest.approx(1.0)
    assert out["per_class_ap"][0] == pytest.approx(1.0)
    assert math.isnan(out["per_class_ap"][1])


def test_voc_duplicate_detection_is_false_positive():
    # gts A, B. Ranked: A (TP), A again (duplicate: FP), B (TP).
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # Area: 1/2 * 1 + 1/2 * 2/3 = 5/6. 11-point: t = 0 .. .5 -> 1 (6 points), t = .6 .. 1 -> 2/3
    # (5 points): (6 + 10/3) / 11 = 28/33.
    for use_11_point, expected in ((False, 5 / 6), (True, 28 / 33)):
        m = voc(use_11_point=use_11_point)
        m.update([A, A, B], [0.9, 0.8, 0.7], [0, 0, 0], [A, B], [0, 0])
        assert m.compute()["bbox_map"] == pytest.approx(expected)


def test_voc_matches_highest_iou_gt_as_the_devkit():
    # Two overlapping gts; the second detection overlaps A best (IoU 0.92, already taken) and
    # B by 0.89: as in the official VOC devkit it is compared with A only and is a duplicate (FP).
    # Ranked: TP, FP -> recall 1/2, 1/2; precision 1, 1/2 -> area AP = 1/2.
    gt_b = [0.0, 1.0, 10.0, 11.0]
    second = [0.0, 0.4, 10.0, 10.4]
    m = voc()
    m.update([A, second], [0.9, 0.8], [0, 0], [A, gt_b], [0, 0])
    assert m.compute()["bbox_map"] == pytest.approx(0.5)


def test_voc_iou_threshold_is_strict_and_boxes_continuous():
    # IoU of [0,0,10,10] and [0,0,10,5] is exactly 50/100 = 0.5 without the +1 convention:
    # not above the 0.5 threshold, so a FP; with iou_threshold 0.4 it is a TP.
    half = [0.0, 0.0, 10.0, 5.0]
    strict = voc()
    strict.update([half], [0.9], [0], [A], [0])
    assert strict.compute()["bbox_map"] == 0.0
    loose = voc(iou_threshold=0.4)
    loose.update([half], [0.9], [0], [A], [0])
    assert loose.compute()["bbox_map"] == pytest.approx(1.0)


def test_voc_multiple_classes():
    # Image 0: gt A of class 0; image 1: gts A, B of class 1.
    # class 0: its one detection is exact -> AP 1.
    # class 1, ranked: FAR in image 1 (0.9, FP), B in image 1 (0.8, TP), and A in image 0 (0.1):
    # FP, since the gt there is of class 0. recall 0, 1/2, 1/2; precision 0, 1/2, 1/3;
    # envelope 1/2 up to recall 1/2 -> area AP = 1/4.
    # class 2: a detection but no gt -> NaN, excluded from the mean.
    m = voc(3)
    m.update([A, A, B], [0.95, 0.1, 0.5], [0, 1, 2], gt_boxes=[A], gt_labels=[0])
    m.update([FAR, B], [0.9, 0.8], [1, 1], gt_boxes=[A, B], gt_labels=[1, 1])
    out = m.compute()
    assert out["per_class_ap"][:2] == pytest.approx([1.0, 0.25])
    assert math.isnan(out["per_class_ap"][2])
    assert out["bbox_map"] == pytest.approx((1.0 + 0.25) / 2)


def test_voc_rejects_bad_input():
    m = voc(2)
    with pytest.raises(ValueError, match="differ in length"):
        m.update([A], [0.9, 0.8], [0], [A], [0])
    with pytest.raises(ValueError, match=r"pred_labels must lie in \[0, 2\)"):
        m.update([A], [0.9], [2], [A], [0])
    with pytest.raises(ValueError, match="before any update"):
        m.compute()


# ------------------------------------------------------------------------------------------------
# COCO mAP
# ------------------------------------------------------------------------------------------------


def _coco_gt():
    def ann(i, img, cat, x, y, w, h):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h}

    return {
        "images": [{"id": 7, "width": 64, "height": 64}, {"id": 9, "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            ann(1, 7, 1, 0.0, 0.0, 10.0, 10.0),
            ann(2, 9, 1, 20.0, 20.0, 10.0, 10.0),
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [5.0, 5.0, 20.0, 10.0]},  # no area
        ],
    }


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


PERFECT = [
    _pred([[0, 0, 10, 10]], [0.9], [0]),
    _pred([[20, 20, 30, 30], [5, 5, 25, 15]], [0.8, 0.7], [0, 1]),
]


def test_coco_map_perfect_is_one_from_dict_and_file(tmp_path):
    gt = _coco_gt()
    before = copy.deepcopy(gt)
    out = coco_map(PERFECT, gt, image_ids=[7, 9], cat_ids=[1, 3])
    assert out == pytest.approx({"bbox_map": 1.0, "bbox_map50": 1.0})
    assert gt == before  # the caller's dict is not modified
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert coco_map(PERFECT, str(path), [7, 9], [1, 3])["bbox_map"] == pytest.approx(1.0)


def test_coco_map_partial_cases():
    # Only category 1 evaluated. Box in image 7 has IoU 72/100 = 0.72 with its gt: a match at the
    # thresholds .50, .55, .60, .65, .70 (5 of 10), so AP@[.5:.95] = 0.5 and AP50 = 1.
    # Image 9's cat-1 box is exact.
    preds = [_pred([[0, 0, 10, 7.2]], [0.9], [0]), _pred([[20, 20, 30, 30]], [0.8], [0])]
    out = coco_map(preds, _coco_gt(), [7, 9], cat_ids=[1])
    # Per threshold: both TP (AP 1) for t <= .70; one TP of 2 gts ranked second for t >= .75.
    # For t >= .75 the exact box (score 0.8) is ranked below the miss: recall 0, 1/2;
    # precision 0, 1/2 -> 101-point interpolation gives 1/2 at recall thresholds 0 .. 0.50
    # (51 of 101) -> 51 / 202.
    expected = (5 * 1.0 + 5 * 51 / 202) / 10
    assert out["bbox_map"] == pytest.approx(expected)
    assert out["bbox_map50"] == pytest.approx(1.0)

    # Cat 1 found in image 7 only (recall 1/2, precision 1): 101-point AP = 51/101 for every
    # threshold; cat 3 perfect (1.0). mAP = (51/101 + 1) / 2.
    preds = [_pred([[0, 0, 10, 10]], [0.9], [0]), _pred([[5, 5, 25, 15]], [0.7], [1])]
    out = coco_map(preds, _coco_gt(), [7, 9], [1, 3])
    assert out["bbox_map"] == pytest.approx((51 / 101 + 1) / 2)
    assert out["bbox_map50"] == pytest.approx((51 / 101 + 1) / 2)


def test_coco_map_no_detections_and_bad_input():
    empty = [_pred([], [], []), _pred([], [], [])]
    assert coco_map(empty, _coco_gt(), [7, 9], [1, 3]) == {"bbox_map": 0.0, "bbox_map50": 0.0}
    with pytest.raises(ValueError, match="not in the COCO ground truth"):
        coco_map(empty, _coco_gt(), [7, 8], [1, 3])
    with pytest.raises(ValueError, match="index cat_ids"):
        coco_map([_pred([[0, 0, 1, 1]], [0.5], [2]), empty[1]], _coco_gt(), [7, 9], [1, 3])


def test_coco_map_is_silent(capsys):
    coco_map(PERFECT, _coco_gt(), [7, 9], [1, 3])
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------


def test_seg_meter_hand_computed():
    target = torch.tensor([[[0, 0, 1], [1, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    m = SegMeter(num_classes=3)
    m.update(pred, target)
    # Scored pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (1,0); the (255, 2) pixel is ignored.
    # class 0: TP 1, FP 1, FN 1 -> 1/3. class 1: TP 2, FP 1, FN 1 -> 1/2.
    # class 2: in neither gt nor pred -> NaN, left out of the mean. pixel acc 3/5.
    out = m.compute()
    assert out["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert out["per_class_iou"][:2] == pytest.approx([1 / 3, 1 / 2])
    assert math.isnan(out["per_class_iou"][2])
    assert out["pixel_acc"] == pytest.approx(3 / 5)
    assert m.confusion.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]


def test_seg_meter_logits_streaming_and_false_positive_class():
    # Predicting class 2 where it never occurs gives it IoU 0, which does count in the mean.
    target = np.array([[0, 1], [1, 1]])
    labels = np.array([[0, 1], [2, 1]])
    logits = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).permute(2, 0, 1)[None]
    m = SegMeter(num_classes=3, ignore_index=255)
    m.update(logits.float(), target[None])  # [1, C, H, W] scores are argmax-ed
    m.update(labels, target)  # the same again, as label maps
    # class 0: 2/2 = 1. class 1: TP 4, FN 2 -> 4/6. class 2: TP 0, FP 2 -> 0.
    out = m.compute()
    assert out["per_class_iou"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert out["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["pixel_acc"] == pytest.approx(6 / 8)


def test_seg_meter_rejects_bad_input():
    m = SegMeter(num_classes=2)
    with pytest.raises(ValueError, match="does not match"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="target labels"):
        m.update(np.zeros((1, 2)), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="before any scored"):
        m.compute()
