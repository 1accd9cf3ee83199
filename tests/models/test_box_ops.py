"""box_iou, nms and batched_nms against brute-force pure-Python references."""

from __future__ import annotations

import pytest
import torch

from slimkit.models.ops import batched_nms, box_area, box_iou, nms


def iou_py(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms_py(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(iou_py(boxes[i], boxes[k]) <= thr for k in kept):
            kept.append(i)
    return kept


def random_boxes(gen: torch.Generator, n: int, spread: float = 50.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * spread
    wh = torch.rand(n, 2, generator=gen) * 20 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_box_iou_known_values_and_broadcasting() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[25 / 175, 1.0, 0.0]]))
    batched = box_iou(b.expand(4, 3, 4), a.expand(4, 1, 4))
    assert batched.shape == (4, 3, 1)
    torch.testing.assert_close(batched[2], box_iou(b, a))
    assert box_area(torch.tensor([[2.0, 3.0, 1.0, 7.0]])).item() == 0.0  # inverted box


def test_box_iou_of_degenerate_boxes_is_zero_not_nan() -> None:
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert box_iou(point, point).item() == 0.0
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        box_iou(torch.zeros(2, 3), point)


@pytest.mark.parametrize("seed", range(25))
def test_nms_matches_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 80, (1,), generator=gen))
    boxes = random_boxes(gen, n)
    scores = torch.rand(n, generator=gen)
    assert scores.unique().numel() == n  # ties excluded
    for thr in (0.0, 0.3, 0.5, 0.7):
        kept = nms(boxes, scores, thr)
        assert kept.dtype == torch.long
        assert kept.tolist() == nms_py(boxes.tolist(), scores.tolist(), thr)


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_matches_per_class_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 80, (1,), generator=gen))
    boxes = random_boxes(gen, n, spread=30.0) - 10  # negative coordinates too
    scores = torch.rand(n, generator=gen)
    labels = torch.randint(0, 4, (n,), generator=gen)
    kept_ref: list[int] = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten().tolist()
        sub = nms_py([boxes[i].tolist() for i in idx], [scores[i].item() for i in idx], 0.5)
        kept_ref += [idx[j] for j in sub]
    kept_ref.sort(key=lambda i: -scores[i].item())
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == kept_ref


def test_nms_edge_cases() -> None:
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    box = torch.tensor([[1.0, 2.0, 11.0, 12.0]])
    same = box.repeat(4, 1)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1])
    assert nms(same, scores, 0.5).tolist() == [1]
    assert nms(same, scores, 1.0).tolist() == [1, 2, 0, 3]  # IoU 1 is not > 1
    labels = torch.tensor([0, 1, 0, 1])
    assert batched_nms(same, scores, labels, 0.5).tolist() == [1, 2]
    assert nms(box, torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_validates_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.5)
