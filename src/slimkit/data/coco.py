"""COCO instances reader (boxes only); shares records and targets with the VOC reader."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

from ._base import DatasetError, Transform, require_file
from .detection import DetRecord, _DetectionDataset, _empty_record, _finish_record


class CocoDetection(_DetectionDataset):
    """A detection dataset read from a COCO instances JSON file.

    Categories sorted by id become contiguous labels ``0..K-1`` (`cat_ids` maps them back);
    dataset index ``i`` is COCO image ``coco_image_ids[i]`` (images in file order, images without
    annotations included), and samples and targets carry that COCO id as ``image_id``. ``bbox [x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd=1``
    objects are kept with ``difficult=True``. Boxes with zero width or height are skipped with a
    warning.

    Args:
        data_dir: Folder that image ``file_name`` entries are relative to.
        ann_file: The instances JSON (``annotations/instances_train.json``).
        transforms: Applied to each sample dict; ``None`` returns raw sample dicts.

    Raises:
        DatasetError: The JSON is missing, invalid or lacks required keys, an annotation names an
            unknown image or category, a bbox is malformed, an image file is missing, or there
            are no images. Undecodable images raise it when read.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Transform | None = None,
    ) -> None:
        self.data_dir = os.fspath(data_dir)
        self.ann_file = os.fspath(ann_file)
        data = _load_json(self.ann_file)
        categories = sorted(_categories(data, self.ann_file), key=lambda c: c["id"])
        super().__init__([str(c["name"]) for c in categories], transforms)
        self.cat_ids = [c["id"] for c in categories]
        records, self.coco_image_ids = self._read_images(data)
        self._read_annotations(data, records)
        self.records = list(records.values())

    def _read_images(self, data: dict[str, Any]) -> tuple[dict[Any, DetRecord], list[int]]:
        records: dict[Any, DetRecord] = {}
        for k, image in enumerate(data["images"]):
            ctx = f"{self.ann_file}, images[{k}]"
            _require_keys(image, ("id", "file_name"), ctx)
            if image["id"] in records:
                raise DatasetError(f"{ctx}: image id {image['id']} appears twice")
            path = os.path.join(self.data_dir, str(image["file_name"]))
            require_file(path, "image file", f"{ctx} (id {image['id']})")
            size = _image_size(image)
            records[image["id"]] = _empty_record(path, f"{ctx} (id {image['id']})", size)
        if not records:
            raise DatasetError(f"{self.ann_file}: 'images' is empty")
        return records, list(records)

    def _read_annotations(self, data: dict[str, Any], records: dict[Any, DetRecord]) -> None:
        label_of = {cat_id: k for k, cat_id in enumerate(self.cat_ids)}
        objects: dict[Any, tuple[list, list, list]] = {i: ([], [], []) for i in records}
        skipped = []
        for k, ann in enumerate(data["annotations"]):
            ctx = f"{self.ann_file}, annotations[{k}]"
            _require_keys(ann, ("image_id", "category_id", "bbox"), ctx)
            if ann["image_id"] not in records:
                raise DatasetError(f"{ctx}: image_id {ann['image_id']!r} is not in 'images'")
            if ann["category_id"] not in label_of:
                raise DatasetError(
                    f"{ctx}: category_id {ann['category_id']!r} is not in 'categories' "
                    f"(ids {self.cat_ids})"
                )
            x, y, w, h = _bbox(ann["bbox"], ctx)
            if w == 0 or h == 0:
                skipped.append(k)
                continue
            boxes, labels, difficult = objects[ann["image_id"]]
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[ann["category_id"]])
            difficult.append(bool(ann.get("iscrowd", 0)))
        for image_id, record in records.items():
            _finish_record(record, *objects[image_id])
        if skipped:
            warnings.warn(
                f"{self.ann_file}: skipped {len(skipped)} annotations with zero width or height "
                f"(first: annotations[{skipped[0]}])",
                stacklevel=3,
            )


def _load_json(path: str) -> dict[str, Any]:
    require_file(path, "annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 JSON file ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a JSON object with 'images', 'annotations', 'categories'"
        )
    _require_keys(data, ("images", "annotations", "categories"), path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _categories(data: dict[str, Any], path: str) -> list[dict[str, Any]]:
    seen = set()
    for k, cat in enumerate(data["categories"]):
        ctx = f"{path}, categories[{k}]"
        _require_keys(cat, ("id", "name"), ctx)
        if cat["id"] in seen:
            raise DatasetError(f"{ctx}: category id {cat['id']} appears twice")
        seen.add(cat["id"])
    if not seen:
        raise DatasetError(f"{path}: 'categories' is empty")
    return data["categories"]


def _require_keys(entry: Any, keys: tuple[str, ...], ctx: str) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{ctx}: expected a JSON object, got {type(entry).__name__}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise DatasetError(f"{ctx}: missing required key(s) {missing}")


def _image_size(image: dict[str, Any]) -> tuple[int, int] | None:
    """Returns ``(height, width)`` when the image entry states a usable size, else ``None``."""
    try:
        h, w = int(image.get("height") or 0), int(image.get("width") or 0)
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _bbox(value: Any, ctx: str) -> tuple[float, float, float, float]:
    """Validates a COCO ``[x, y, w, h]`` bbox."""
    try:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DatasetError(f"{ctx}: malformed bbox {value!r}; expected [x, y, w, h]") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise DatasetError(f"{ctx}: malformed bbox {value!r}; needs finite values and w, h >= 0")
    return x, y, w, h
