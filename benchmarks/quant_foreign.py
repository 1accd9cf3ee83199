"""Foreign ONNX models for ``quant_speed.py --foreign``: PP-OCR files shipped in a PyPI wheel.

``rapidocr-onnxruntime`` ships PaddleOCR's models as ONNX files (exported by paddle2onnx, not
written here): ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (a MobileNetV3-style text direction
classifier, 0 vs 180 degrees, opset 11, hard-sigmoid SE gates and hard-swish) and
``ch_PP-OCRv4_det_infer.onnx`` (a DB text detector, 1.2 M parameters, opset 12). Install the wheel
in a side environment (slimkit does not depend on it); this module finds the files through that
environment's python and builds labelled evaluation sets for them with PIL and matplotlib's bundled
DejaVu fonts:

* **direction**: one short word (small, low contrast, blurred) on a light, noisy background, upright (label 0) or
  rotated by 180 degrees (label 1); preprocessed exactly as rapidocr does (height 48, width
  <= 192, zero padding, ``(x / 255 - 0.5) / 0.5``). Metric: accuracy.
* **text detection**: 320x320 images with 1-5 non-overlapping text lines (half of them hard ones), ground-truth boxes from
  the renderer. Post-processing as DB's: probability > 0.3, connected components, mean score
  >= 0.5, boxes expanded by ``area * 1.6 / perimeter``. A prediction matches a ground-truth box
  at IoU >= 0.5 (greedy, one to one). Metric: F1.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "slim kit model quant int8 onnx runtime text line detector paper invoice total amount "
    "date name street city 2026 42 0.5 price order number table report page chapter open close"
).split()
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
CLS_SHAPE = (3, 48, 192)
DET_SIZE = 320


def find_models(python: str) -> dict[str, Path] | None:
    """The PP-OCR ONNX files of the ``rapidocr_onnxruntime`` installed for ``python``, or None."""
    code = "import os, rapidocr_onnxruntime as r; print(os.path.dirname(r.__file__))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    models = Path(out.stdout.strip()) / "models"
    found = {
        "ppocr_cls": models / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "ppocr_det": models / "ch_PP-OCRv4_det_infer.onnx",
    }
    return found if all(p.is_file() for p in found.values()) else None


def _font(rng: np.random.Generator, size: int) -> Any:
    import matplotlib
    from PIL import ImageFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return ImageFont.truetype(str(folder / FONTS[int(rng.integers(len(FONTS)))]), size)


def _phrase(rng: np.random.Generator, words: int) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=words))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(150, 255, size=3)
    noise = rng.normal(0, rng.uniform(2, 15), size=(height, width, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _text_line(rng: np.random.Generator, hard: bool = False) -> np.ndarray:
    """An RGB image of one text line, tightly cropped with a small margin.

    ``hard``: one short word, smaller, lower contrast, blurred (the direction set).
    """
    from PIL import Image, ImageDraw, ImageFilter

    font = _font(rng, int(rng.integers(10, 22) if hard else rng.integers(18, 34)))
    text = _phrase(rng, 1 if hard else int(rng.integers(1, 4)))
    left, top, right, bottom = font.getbbox(text)
    margin = int(rng.integers(2, 8))
    h, w = bottom - top + 2 * margin, right - left + 2 * margin
    image = Image.fromarray(_background(rng, h, w))
    ink = tuple(int(c) for c in rng.uniform(60 if hard else 0, 150 if hard else 90, size=3))
    ImageDraw.Draw(image).text((margin - left, margin - top), text, font=font, fill=ink)
    if hard:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))
    return np.asarray(image)


def _cls_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` (PIL bilinear instead of cv2), BGR like its cv2 reader."""
    from PIL import Image

    c, height, width = CLS_SHAPE
    h, w = image.shape[:2]
    resized_w = min(width, int(np.ceil(height * w / h)))
    resized = np.asarray(Image.fromarray(image).resize((resized_w, height), Image.BILINEAR))
    out = np.zeros((c, height, width), np.float32)
    out[:, :, :resized_w] = (resized[:, :, ::-1].transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def direction_set(num: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """``num`` (input 1x3x48x192, label) pairs, half of them rotated by 180 degrees."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(num):
        line = _text_line(rng, hard=True)
        label = k % 2
        if label:
            line = line[::-1, ::-1]
        items.append((_cls_input(line)[None], label))
    return items


def _det_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 320x320 image with 1-4 non-overlapping text lines, and their xyxy boxes."""
    canvas = _background(rng, DET_SIZE, DET_SIZE)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 6))):
        line = _text_line(rng, hard=bool(rng.integers(0, 2)))
        h, w = line.shape[:2]
        if w >= DET_SIZE - 8 or h >= DET_SIZE // 4:
            continue
        for _try in range(20):
            x, y = int(rng.integers(4, DET_SIZE - w - 4)), int(rng.integers(4, DET_SIZE - h - 4))
            box = (x, y, x + w, y + h)
            if all(_iou(box, b) == 0 and not _near(box, b) for b in boxes):
                canvas[y : y + h, x : x + w] = line
                boxes.append(box)
                break
    return canvas, boxes


def _near(a: tuple[int, ...], b: tuple[int, ...], gap: int = 6) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def detection_set(num: int, seed: int) -> list[tuple[np.ndarray, list[tuple[int, ...]]]]:
    """``num`` (input 1x3x320x320, ground-truth boxes) pairs."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num):
        image, boxes = _det_image(rng)
        x = (image[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5
        items.append((x[None], boxes))
    return items


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of the runs of True in a boolean row."""
    edges = np.diff(np.concatenate([[0], row.view(np.int8), [0]]))
    return list(
        zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True)
    )


def _components(mask: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """4-connected components of a boolean mask as lists of ``(row, start, end)`` runs
    (run-length union-find: fast on text maps, whose components are few long runs)."""
    parent: list[int] = []
    runs: list[tuple[int, int, int]] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []
    for y in range(mask.shape[0]):
        current = []
        for start, end in _runs(mask[y]):
            index = len(runs)
            runs.append((y, start, end))
            parent.append(index)
            for j in previous:
                _, s0, e0 = runs[j]
                if s0 < end and start < e0:
                    parent[root(index)] = root(j)
            current.append(index)
        previous = current
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(root(i), []).append(run)
    return list(groups.values())


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5) -> list[tuple]:
    """DB post-processing of a 2-D probability map into xyxy boxes."""
    boxes = []
    for runs in _components(prob > thresh):
        area = sum(e - s for _, s, e in runs)
        score = sum(float(prob[y, s:e].sum()) for y, s, e in runs) / area
        if area < 10 or score < box_thresh:
            continue
        x0, x1 = min(s for _, s, _ in runs), max(e for _, _, e in runs)
        y0, y1 = runs[0][0], runs[-1][0] + 1
        area, perimeter = (x1 - x0) * (y1 - y0), 2 * ((x1 - x0) + (y1 - y0))
        d = area * 1.6 / perimeter
        boxes.append((x0 - d, y0 - d, x1 + d, y1 + d))
    return boxes


def _iou(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def f1_score(predicted: list[list[tuple]], truth: list[list[tuple]]) -> float:
    """Detection F1 at IoU >= 0.5, greedy one-to-one matching per image."""
    hits = n_pred = n_true = 0
    for preds, gts in zip(predicted, truth, strict=True):
        n_pred, n_true = n_pred + len(preds), n_true + len(gts)
        free = list(gts)
        for p in preds:
            best = max(free, key=lambda g: _iou(p, g), default=None)
            if best is not None and _iou(p, best) >= 0.5:
                hits += 1
                free.remove(best)
    precision, recall = hits / max(n_pred, 1), hits / max(n_true, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


@dataclass
class ForeignCase:
    """A foreign model with its calibration inputs, evaluation set and metric."""

    name: str
    path: Path
    metric_name: str
    calib: list[np.ndarray]
    items: list[Any]

    def evaluate(self, onnx_path: Path) -> float:
        """The metric of an ONNX model (FP32 or INT8) on the evaluation set, ORT CPU, 1 thread."""
        from slimkit.quant.runtime import make_session

        session = make_session(onnx_path, threads=1)
        name = session.get_inputs()[0].name
        outputs = [session.run(None, {name: x})[0] for x, _ in self.items]
        if self.metric_name == "acc":
            hits = [
                int(np.argmax(o[0]) == y) for o, (_, y) in zip(outputs, self.items, strict=True)
            ]
            return float(np.mean(hits))
        predicted = [db_boxes(o[0, 0]) for o in outputs]
        return f1_score(predicted, [boxes for _, boxes in self.items])


def foreign_cases(python: str, num_eval: tuple[int, int], batch_num: int) -> list[ForeignCase]:
    """The two PP-OCR cases (empty when the wheel is not installed for ``python``).

    ``num_eval``: evaluation images of the direction classifier and of the detector.
    """
    models = find_models(python)
    if models is None:
        return []
    cls_items = direction_set(num_eval[0], seed=1)
    det_items = detection_set(num_eval[1], seed=1)
    cls_calib = [x for x, _ in direction_set(batch_num, seed=99)]
    det_calib = [x for x, _ in detection_set(batch_num, seed=99)]
    return [
        ForeignCase("ppocr_cls (opset 11)", models["ppocr_cls"], "acc", cls_calib, cls_items),
        ForeignCase("ppocr_det (opset 12)", models["ppocr_det"], "F1", det_calib, det_items),
    ]
