"""Deterministic generators of slimkit's built-in datasets, written in the standard on-disk layouts.

The images are coloured geometric shapes on dark, textured, noisy backgrounds with thin clutter
lines; each shape differs by at least 80 luma levels from the background around it (nearly always
brighter). Shape hue, size, position, rotation and stretch are random and independent of the
class, so only the shape itself identifies it. Every image is drawn from its own generator seeded
by ``(seed, task, split, index)``: the same arguments (and the same numpy/Pillow versions) give
byte-identical files.

Layouts (``DIR`` is ``out_dir``; images are named ``<split>_<index:05d>``):

* cls (PaddleX ImageNet)::

      DIR/labels.txt                      circle, square, triangle, cross (one per line)
      DIR/train_list.txt, val_list.txt    "circle/train_00000.jpg 0"
      DIR/<class>/<split>_<i>.jpg

* det (Pascal VOC plus COCO for the same images)::

      DIR/labels.txt                      circle, square, triangle
      DIR/train_list.txt, val_list.txt    "JPEGImages/train_00000.jpg Annotations/train_00000.xml"
      DIR/JPEGImages/<split>_<i>.jpg
      DIR/Annotations/<split>_<i>.xml     VOC boxes, 1-based inclusive; tiny objects difficult=1
      DIR/annotations/instances_train.json, instances_val.json
                                          COCO instances of the same images: image ids 1..N in
                                          list order, file_name "JPEGImages/<split>_<i>.jpg"
                                          (relative to DIR), category ids 1..3, difficult
                                          objects iscrowd=1

* seg (PaddleX seg)::

      DIR/labels.txt                      background, circle, square, triangle
      DIR/train_list.txt, val_list.txt    "images/train_00000.jpg labels/train_00000.png"
      DIR/images/<split>_<i>.jpg
      DIR/labels/<split>_<i>.png          palette PNG of class indices (0 = background)
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slimkit._checks import MAX_INPUT_SIDE, check_int
from slimkit._io import atomic_directory
from slimkit._outputs import check_target, listing

from ._shapes import (
    SHAPE_KINDS,
    Shape,
    background,
    contrasting_colour,
    coverage,
    finish,
    local_mean,
    paint,
    tight_box,
)

CLS_CLASSES = ("circle", "square", "triangle", "cross")
DET_CLASSES = ("circle", "square", "triangle")
SEG_CLASSES = ("background", "circle", "square", "triangle")
PRETRAIN_CLASSES = ("circle", "square", "triangle", "cross", "star", "pentagon", "hexagon")
"""The shape kinds of the larger sets that slimkit's BUILTIN weights were pretrained on."""
DEFAULTS = {"cls": (600, 200, 64), "det": (400, 100, 128), "seg": (300, 100, 64)}
"""Per task: default (num_train, num_val, image_size)."""

_SPLITS = ("train", "val")
_JPEG_QUALITY = 95
_COLOURS = [0, 0, 0, 220, 20, 60, 0, 160, 0, 30, 144, 255, 255, 165, 0, 148, 0, 211, 0, 206, 209]
_PALETTE = _COLOURS + [128, 128, 128] * (255 - len(_COLOURS) // 3) + [255, 255, 255]


def make_dataset(
    task: str,
    out_dir: str | os.PathLike,
    num_train: int | None = None,
    num_val: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    classes: Sequence[str] | None = None,
) -> dict[str, str]:
    """Writes a built-in dataset to ``out_dir`` in the standard layout of its task.

    The folder is written whole (in a temporary sibling, then swapped in): a kill leaves no
    half-written dataset. It must be new or empty; a dataset generated here before is replaced
    only with ``overwrite=True``, and a folder holding anything else (the user's own
    ``labels.txt``, lists or images) never.

    Args:
        task: ``"cls"``, ``"det"`` or ``"seg"``.
        out_dir: Output folder.
        num_train: Training images (default per task in `DEFAULTS`: 600 / 400 / 300).
        num_val: Validation images (default 200 / 100 / 100).
        image_size: Square image side in pixels, at least 32 (default 64 / 128 / 64).
        seed: Non-negative seed; the same arguments give byte-identical files.
        overwrite: Replace a dataset generated here before.
        classes: The shape kinds to draw, in label order (default: the task's classes above;
            any of ``SHAPE_KINDS``, e.g. ``PRETRAIN_CLASSES``). For seg, ``background`` is
            prepended as class 0.

    Returns:
        Paths written: ``data_dir``, ``train_list``, ``val_list``, ``label_list``; det also
        ``train_ann`` and ``val_ann`` (the COCO instances files) and ``coco_image_dir`` (the
        folder their ``file_name`` entries are relative to: ``data_dir``).
    """
    if task not in DEFAULTS:
        raise ValueError(f"task must be one of {sorted(DEFAULTS)}, got {task!r}")
    default_train, default_val, default_size = DEFAULTS[task]
    counts = {
        split: check_int(default if n is None else n, f"num_{split}", 1, MAX_IMAGES)
        for split, n, default in (
            ("train", num_train, default_train),
            ("val", num_val, default_val),
        )
    }
    size = check_int(
        default_size if image_size is None else image_size, "image_size", 32, MAX_INPUT_SIDE
    )
    check_int(seed, "seed", 0)
    kinds = _shape_kinds(task, classes)
    check_target(out_dir, "dataset", overwrite=overwrite, foreign=foreign_files)
    out = os.fspath(out_dir)
    writer = {"cls": _make_cls, "det": _make_det, "seg": _make_seg}[task]
    with atomic_directory(out) as tmp:
        written = writer(os.fspath(tmp), counts, size, seed, kinds)
        labels = ("background", *kinds) if task == "seg" else kinds
        _write_lines(os.fspath(tmp / "labels.txt"), labels)
    paths = {
        k: os.path.normpath(os.path.join(out, os.path.relpath(v, tmp))) for k, v in written.items()
    }
    return {
        "data_dir": out,
        "train_list": os.path.join(out, "train_list.txt"),
        "val_list": os.path.join(out, "val_list.txt"),
        "label_list": os.path.join(out, "labels.txt"),
        **paths,
    }


_CLASSES = {"cls": CLS_CLASSES, "det": DET_CLASSES, "seg": SEG_CLASSES[1:]}


def _shape_kinds(task: str, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The shape kinds of a dataset, checked (distinct, known, at least two)."""
    if classes is None:
        return _CLASSES[task]
    kinds = (classes,) if isinstance(classes, str) else tuple(classes)
    unknown = [k for k in kinds if k not in SHAPE_KINDS]
    if unknown or len(set(kinds)) != len(kinds) or len(kinds) < 2:
        raise ValueError(
            f"classes must be at least two distinct shape kinds from {SHAPE_KINDS}, got {classes!r}"
        )
    return kinds


MAX_IMAGES = 1_000_000
_FOLDERS = {
    "det": {"JPEGImages", "Annotations", "annotations"},
    "seg": {"images", "labels"},
}
_LISTS = {"labels.txt", "train_list.txt", "val_list.txt"}
_GENERATED_FILE = re.compile(r"^((train|val)_\d{5}\.(jpg|xml|png)|instances_(train|val)\.json)$")


def foreign_files(path: Path) -> list[str]:
    """What in directory ``path`` :func:`make_dataset` does not write; empty when it holds a
    generated dataset: the lists, ``labels.txt`` with shape kinds (after ``background`` for seg)
    and that task's folders (cls: one per kind) of generated files only."""
    names = set(listing(path))
    labels = _labels(path) or []
    kinds = labels[1:] if labels[:1] == ["background"] else labels
    if len(kinds) < 2 or not set(kinds) <= set(SHAPE_KINDS):
        return sorted(names)
    task_folders = [*_FOLDERS.items(), ("cls", set(kinds))]
    for task, folders in task_folders:
        if (task == "seg") != (labels[:1] == ["background"]):
            continue
        if _LISTS <= names <= _LISTS | folders:
            return [
                f"{f}/{p.name}" if (path / f).is_dir() else f
                for f in sorted(names & folders)
                for p in ((path / f).iterdir() if (path / f).is_dir() else [path / f])
                if not (path / f).is_dir() or not _GENERATED_FILE.match(p.name)
            ]
    return sorted(names)


def _labels(path: Path) -> list[str] | None:
    try:
        return (path / "labels.txt").read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None


def _rng(seed: int, task: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent across seeds, tasks, splits and indices."""
    return np.random.default_rng([seed, list(DEFAULTS).index(task), _SPLITS.index(split), index])


def _write_lines(path: str, lines: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(f"{line}\n" for line in lines))


def _save_jpeg(image: np.ndarray, path: str) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)


def _random_shape(rng: np.random.Generator, kind: str, radius: float, stretch: float) -> Shape:
    angle = float(rng.uniform(0, 2 * math.pi))
    aspect = float(rng.uniform(1 / stretch, stretch))
    return Shape(kind, 0.0, 0.0, radius, angle, aspect)


def _draw(image: np.ndarray, rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Paints a shape in a colour that contrasts with what is under it; returns its coverage."""
    shape.colour = contrasting_colour(rng, local_mean(image, shape))
    alpha = coverage(shape, image.shape[0], image.shape[1])
    paint(image, rng, shape, alpha)
    return alpha


# --- classification -------------------------------------------------------------------------


def _make_cls(
    out: str, counts: dict[str, int], size: int, seed: int, kinds: tuple[str, ...]
) -> dict[str, str]:
    for name in kinds:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    for split, count in counts.items():
        lines = []
        for i in range(count):
            label = i % len(kinds)
            image, _ = _cls_image(_rng(seed, "cls", split, i), kinds[label], size)
            rel = f"{kinds[label]}/{split}_{i:05d}.jpg"
            _save_jpeg(image, os.path.join(out, rel))
            lines.append(f"{rel} {label}")
        _write_lines(os.path.join(out, f"{split}_list.txt"), lines)
    return {}


def _cls_image(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, Shape]:
    """One shape of ``kind`` (radius 18-32% of the side) fully inside a cluttered background."""
    image = background(rng, size, size)
    shape = _random_shape(rng, kind, float(rng.uniform(0.18, 0.32)) * size, stretch=1.15)
    extent = min(shape.extent(), size / 2)
    shape.cx, shape.cy = (float(v) for v in rng.uniform(extent, size - extent, 2))
    _draw(image, rng, shape)
    return finish(image, rng), shape


# --- detection ------------------------------------------------------------------------------


def _make_det(
    out: str, counts: dict[str, int], size: int, seed: int, kinds: tuple[str, ...]
) -> dict[str, str]:
    for folder in ("JPEGImages", "Annotations", "annotations"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    for split, count in counts.items():
        lines: list[str] = []
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for i in range(count):
            image, objects = _det_image(_rng(seed, "det", split, i), size, kinds)
            stem = f"{split}_{i:05d}"
            _save_jpeg(image, os.path.join(out, "JPEGImages", f"{stem}.jpg"))
            with open(os.path.join(out, "Annotations", f"{stem}.xml"), "wb") as f:
                f.write(_voc_xml(f"{stem}.jpg", size, objects, kinds))
            lines.append(f"JPEGImages/{stem}.jpg Annotations/{stem}.xml")
            entry = {
                "id": i + 1,
                "file_name": f"JPEGImages/{stem}.jpg",
                "width": size,
                "height": size,
            }
            images.append(entry)
            for obj in objects:
                annotations.append(_coco_annotation(len(annotations) + 1, i + 1, obj))
        _write_lines(os.path.join(out, f"{split}_list.txt"), lines)
        categories = [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(kinds)
        ]
        coco = {
            "info": {"description": f"slimkit built-in shapes detection ({split})", "version": "1"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(os.path.join(out, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f, indent=1)
    return {
        "coco_image_dir": out,
        "train_ann": os.path.join(out, "annotations", "instances_train.json"),
        "val_ann": os.path.join(out, "annotations", "instances_val.json"),
    }


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place_shapes(
    rng: np.random.Generator,
    size: int,
    kinds: tuple[str, ...],
    radius: tuple[float, float],
    tiny_prob: float = 0.0,
) -> list[tuple[Shape, int, bool]]:
    """Places 1-4 shapes fully inside the image, bounding squares overlapping < 0.1 IoU.

    Radii are drawn from ``radius`` (fractions of the side); with probability ``tiny_prob`` a
    shape is tiny (radius 2.8-4% of the side) and flagged.
    """
    placed: list[tuple[Shape, int, bool]] = []
    squares: list[tuple[float, ...]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            tiny = bool(rng.random() < tiny_prob)
            r = size * float(rng.uniform(0.028, 0.04) if tiny else rng.uniform(*radius))
            label = int(rng.integers(len(kinds)))
            shape = _random_shape(rng, kinds[label], r, stretch=1.15)
            extent = shape.extent()
            shape.cx, shape.cy = (float(v) for v in rng.uniform(extent + 1, size - extent - 1, 2))
            square = (shape.cx - extent, shape.cy - extent, shape.cx + extent, shape.cy + extent)
            if all(_overlap(square, other) < 0.1 for other in squares):
                placed.append((shape, label, tiny))
                squares.append(square)
                break
    return placed


def _det_image(
    rng: np.random.Generator, size: int, kinds: tuple[str, ...]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Returns an image and its objects: ``label``, pixel-edge ``box``, ``difficult``, ``polygon``.

    1-4 shapes of radius 7-16% of the side; about 8% are tiny (and marked difficult).
    """
    image = background(rng, size, size)
    objects = []
    for shape, label, tiny in _place_shapes(rng, size, kinds, (0.07, 0.16), tiny_prob=0.08):
        box = tight_box(_draw(image, rng, shape))
        if box is not None:
            objects.append(
                {"label": label, "box": box, "difficult": tiny, "polygon": shape.polygon()}
            )
    return finish(image, rng), objects


def _voc_xml(
    filename: str, size: int, objects: list[dict[str, Any]], kinds: tuple[str, ...]
) -> bytes:
    """A VOC annotation; pixel-edge box ``[x1, y1, x2, y2]`` is written 1-based inclusive."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size_node = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_node, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = kinds[obj["label"]]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"]))
        x1, y1, x2, y2 = obj["box"]
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _coco_annotation(ann_id: int, image_id: int, obj: dict[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = obj["box"]
    polygon = [round(float(v), 2) for v in obj["polygon"].reshape(-1)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["label"] + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": int(obj["difficult"]),
        "segmentation": [polygon],
    }


# --- segmentation ---------------------------------------------------------------------------


def _make_seg(
    out: str, counts: dict[str, int], size: int, seed: int, kinds: tuple[str, ...]
) -> dict[str, str]:
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    for split, count in counts.items():
        lines = []
        for i in range(count):
            image, mask = _seg_image(_rng(seed, "seg", split, i), size, kinds)
            stem = f"{split}_{i:05d}"
            _save_jpeg(image, os.path.join(out, "images", f"{stem}.jpg"))
            label = Image.frombytes("P", (size, size), mask.tobytes())
            label.putpalette(_PALETTE)
            label.save(os.path.join(out, "labels", f"{stem}.png"), format="PNG")
            lines.append(f"images/{stem}.jpg labels/{stem}.png")
        _write_lines(os.path.join(out, f"{split}_list.txt"), lines)
    return {}


def _seg_image(
    rng: np.random.Generator, size: int, kinds: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """1-4 whole shapes (radius 12-25% of the side) that barely touch; mask = coverage >= 0.5.

    Shapes are placed as for detection, so every labelled region shows a whole shape: overlapping
    or cut-off shapes made a pixel's class undecidable from the image.
    """
    image = background(rng, size, size)
    mask = np.zeros((size, size), np.uint8)
    for shape, label, _ in _place_shapes(rng, size, kinds, (0.12, 0.25)):
        mask[_draw(image, rng, shape) >= 0.5] = label + 1
    return finish(image, rng), mask
