"""YOLOv3: anchors, loss, decoding/postprocess round trip, overfitting one image."""

from __future__ import annotations

import math

import pytest
import torch

from slimkit.models import YOLOv3, create_model
from slimkit.models.yolov3 import DEFAULT_ANCHORS

IMG_HW = (64, 96)
NUM_CLASSES = 3


def tiny_yolo(**kwargs: object) -> YOLOv3:
    params = {"num_classes": NUM_CLASSES, "width_mult": 0.25, "neck_width": 0.125}
    return create_model("yolov3_mobilenetv1", input_size=IMG_HW, **{**params, **kwargs})


def two_box_target() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([[10.3, 5.1, 60.7, 55.9], [70.2, 20.4, 78.9, 33.3]]),
        "labels": torch.tensor([2, 0]),
    }


def perfect_outputs(model: YOLOv3, target: dict[str, torch.Tensor], big: float = 12.0) -> list:
    """Encode ground truths into raw head maps by hand: the inverse of the YOLOv3 decoding."""
    h, w = IMG_HW
    channels = 5 + model.num_classes
    maps = [
        torch.zeros(1, len(mask), channels, h // s, w // s)
        for mask, s in zip(model.anchor_masks, (32, 16, 8), strict=True)
    ]
    for m in maps:
        m[:, :, 4:] = -big  # no object, no class anywhere
    anchors = model.anchors.tolist()
    for (x1, y1, x2, y2), label in zip(
        target["boxes"].tolist(), target["labels"].tolist(), strict=True
    ):
        bw, bh = x2 - x1, y2 - y1
        ious = [
            min(bw, aw) * min(bh, ah) / (bw * bh + aw * ah - min(bw, aw) * min(bh, ah))
            for aw, ah in anchors
        ]
        best = max(range(len(anchors)), key=ious.__getitem__)
        scale = next(i for i, mask in enumerate(model.anchor_masks) if best in mask)
        a = model.anchor_masks[scale].index(best)
        stride = (32, 16, 8)[scale]
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        gi, gj = int(cx), int(cy)
        cell = maps[scale][0, a, :, gj, gi]
        cell[0] = math.log((cx - gi) / (1 - (cx - gi)))
        cell[1] = math.log((cy - gj) / (1 - (cy - gj)))
        cell[2] = math.log(bw / anchors[best][0])
        cell[3] = math.log(bh / anchors[best][1])
        cell[4] = big
        cell[5 + label] = big
    return [m.flatten(1, 2) for m in maps]


def test_default_anchors_scale_with_input_size_and_are_not_saved() -> None:
    model = tiny_yolo()
    expected = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32) * 64 / 416
    torch.testing.assert_close(model.anchors, expected)
    assert model.anchor_masks == ((6, 7, 8), (3, 4, 5), (0, 1, 2))
    assert "anchors" not in model.state_dict()
    assert model.prune_ignore == ("heads.0", "heads.1", "heads.2")


def test_custom_anchors_and_masks_set_head_channels() -> None:
    model = tiny_yolo(anchors=[8, 8, 16, 16, 32, 32], anchor_masks=[[2], [1], [0]])
    outs = model(torch.randn(1, 3, *IMG_HW))
    assert [o.shape[1] for o in outs] == [5 + NUM_CLASSES] * 3
    with pytest.raises(ValueError, match="anchor_masks"):
        tiny_yolo(anchors=[8, 8, 16, 16])
    with pytest.raises(ValueError, match="anchors must be positive"):
        tiny_yolo(anchors=[8, 8, 16])


def test_custom_anchors_in_a_task() -> None:
    # The task's size check builds the net on the meta device; anchors are checked on the CPU
    # there (demo.py's k-means anchors failed with "item() cannot be called on meta tensors").
    from slimkit.tasks.factory import create_task

    anchors = [[8 + 5 * i, 9 + 4 * i] for i in range(9)]
    model = create_task("yolov3_mobilenetv1", 3, 64, width_mult=0.25, anchors=anchors)
    assert model.net.anchors.tolist() == [[float(v) for v in a] for a in anchors]
    with pytest.raises(ValueError, match="anchors must be positive"):
        create_task("yolov3_mobilenetv1", 3, 64, width_mult=0.25, anchors=[[9, -9]] * 9)


def test_perfect_outputs_decode_back_to_ground_truth() -> None:
    model = tiny_yolo()
    target = two_box_target()
    outputs = perfect_outputs(model, target)
    (det,) = model.postprocess(outputs, IMG_HW, score_threshold=0.5)
    assert det["boxes"].shape == (2, 4) and det["labels"].dtype == torch.long
    order = det["labels"].argsort(descending=True)  # labels 2, 0 as in the target
    torch.testing.assert_close(det["boxes"][order], target["boxes"], atol=1.0, rtol=0)
    assert det["labels"][order].tolist() == target["labels"].tolist()
    assert (det["scores"] > 0.99).all()


def test_loss_is_minimal_at_perfect_outputs() -> None:
    model = tiny_yolo()
    target = two_box_target()
    outputs = [o.requires_grad_() for o in perfect_outputs(model, target)]
    losses = model.compute_loss(outputs, [target], IMG_HW)
    assert losses["loss_wh"] < 1e-4 and losses["loss_cls"] < 1e-3 and losses["loss_obj"] < 1e-2
    losses["loss"].backward()
    # xy BCE has soft targets: its minimum is the target entropy, reached with zero gradient;
    # (wh is L1, whose gradient at the optimum is a +-weight subgradient, so it is left out)
    for out, mask in zip(outputs, model.anchor_masks, strict=True):
        grad = out.grad.unflatten(1, (len(mask), 5 + NUM_CLASSES))
        assert grad[:, :, [0, 1, 4, 5, 6, 7]].abs().max() < 1e-4


def test_loss_parts_finite_positive_and_handle_empty_targets() -> None:
    model = tiny_yolo().train()
    outputs = model(torch.randn(2, 3, *IMG_HW))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = model.compute_loss(outputs, [two_box_target(), empty], IMG_HW)
    assert set(losses) == {"loss", "loss_xy", "loss_wh", "loss_obj", "loss_cls"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    parts = sum(losses[k] for k in ("loss_xy", "loss_wh", "loss_obj", "loss_cls"))
    torch.testing.assert_close(losses["loss"], parts)
    no_gt = model.compute_loss(outputs, [empty, empty], IMG_HW)
    assert no_gt["loss_xy"] == 0 and no_gt["loss_cls"] == 0 and no_gt["loss_obj"] > 0


def test_loss_decreases_when_overfitting_one_image() -> None:
    model = tiny_yolo().train()
    image = torch.randn(1, 3, *IMG_HW)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(30):  # 20 were enough before the objectness prior made loss_obj small
        losses = model.compute_loss(model(image), [two_box_target()], IMG_HW)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in history)
    assert history[-1]["loss"] < 0.25 * history[0]["loss"]
    for part in ("loss_xy", "loss_wh", "loss_obj", "loss_cls"):
        assert history[-1][part] < history[0][part], part


def test_postprocess_clips_limits_and_thresholds() -> None:
    model = tiny_yolo()
    target = {"boxes": torch.tensor([[-20.0, -10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    outputs = perfect_outputs(model, target)
    (det,) = model.postprocess(outputs, IMG_HW, score_threshold=0.5)
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[0.0, 0.0, 40.0, 50.0]]), atol=1e-3, rtol=0
    )
    random_outputs = model.eval()(torch.randn(2, 3, *IMG_HW))
    dets = model.postprocess(random_outputs, IMG_HW, score_threshold=0.0, max_detections=7)
    assert len(dets) == 2 and all(d["boxes"].shape == (7, 4) for d in dets)
    assert all((d["scores"][:-1] >= d["scores"][1:]).all() for d in dets)
    for none in model.postprocess(random_outputs, IMG_HW, score_threshold=1.0):
        assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,)


def test_loss_and_postprocess_validate_inputs() -> None:
    model = tiny_yolo()
    outputs = model(torch.randn(1, 3, *IMG_HW))
    with pytest.raises(ValueError, match="targets for a batch"):
        model.compute_loss(outputs, [two_box_target()] * 2, IMG_HW)
    bad = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([NUM_CLASSES])}
    with pytest.raises(ValueError, match="labels must be in"):
        model.compute_loss(outputs, [bad], IMG_HW)
    with pytest.raises(ValueError, match="channels"):
        tiny_yolo(num_classes=5).postprocess(outputs, IMG_HW)
    with pytest.raises(ValueError, match="img_size"):
        model.postprocess(outputs, (64, 0))
