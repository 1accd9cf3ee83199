"""Detection readers: Pascal VOC (list file + XML) and COCO (instances JSON).

Boxes are ``xyxy`` in continuous pixel coordinates: the image spans ``[0, W] x [0, H]`` and the
pixel in column ``c`` covers ``[c, c + 1)``. COCO ``[x, y, w, h]`` maps to ``[x, y, x + w, y + h]``.
VOC corners are 1-based *inclusive* pixel indices, so ``xmin..xmax`` maps to ``[xmin - 1, xmax]``
(a one-pixel box ``xmin == xmax`` has width 1); a VOC file and a COCO file describing the same pixels
therefore give identical boxes. Boxes are clipped to the image when a sample is read, and boxes
left with no area (wholly outside an image whose annotation did not state its size) are dropped.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._base import (
    BaseDataset,
    DatasetError,
    Sample,
    Transform,
    image_to_tensor,
    read_image,
    read_label_list,
    read_path_pairs,
)


@dataclass
class DetRecord:
    """The ground truth of one detection image, in original pixel coordinates."""

    path: str
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    difficult: np.ndarray  # bool [N]
    origin: str  # where the record came from, for error messages
    size: tuple[int, int] | None = None  # (h, w) when the annotation states it


class _DetectionDataset(BaseDataset):
    """Shared loading, targets and COCO export for detection; ``self.records`` is filled by readers.

    Attributes:
        cat_ids: COCO category id of each contiguous label (``cat_ids[label]``).
        coco_image_ids: COCO image id of each dataset index (``coco_image_ids[index]``). A det
            sample's and target's ``image_id`` is this id, so predictions can be exported to
            pycocotools as they are; for VOC it equals the dataset index.
    """

    task = "det"

    def __init__(self, labels: list[str], transforms: Transform | None) -> None:
        super().__init__(labels, transforms)
        self.records: list[DetRecord] = []
        self.cat_ids: list[int] = []
        self.coco_image_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.records)

    def load_sample(self, index: int) -> Sample:
        record = self.records[index]
        image = read_image(record.path, record.origin)
        h, w = image.shape[:2]
        boxes = record.boxes.copy()
        np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "image": image,
            "boxes": boxes[keep],
            "labels": record.labels[keep],
            "difficult": record.difficult[keep],
            "image_id": self.coco_image_ids[index],
            "orig_size": (h, w),
            "path": record.path,
        }

    def to_output(self, sample: Sample) -> tuple[torch.Tensor, dict[str, Any]]:
        target = {
            "boxes": torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(sample["labels"], dtype=torch.int64).reshape(-1),
            "difficult": torch.as_tensor(sample["difficult"], dtype=torch.bool).reshape(-1),
            "image_id": int(sample["image_id"]),
            "orig_size": tuple(int(v) for v in sample["orig_size"]),
        }
        return image_to_tensor(sample["image"]), target

    def get_annotation(self, index: int) -> dict[str, Any]:
        """Returns the ground truth of sample ``index`` in original pixels, without reading the image.

        The dict has ``boxes`` (float32 [N, 4] xyxy, unclipped), ``labels``, ``difficult``,
        ``image_id`` (``coco_image_ids[index]``), ``size`` (``(h, w)`` or ``None`` when the annotation file
        does not state it) and ``path``.
        """
        r = self.records[index]
        return {
            "boxes": r.boxes.copy(),
            "labels": r.labels.copy(),
            "difficult": r.difficult.copy(),
            "image_id": self.coco_image_ids[index],
            "size": r.size,
            "path": r.path,
        }

    def to_coco_dict(self) -> dict[str, Any]:
        """Returns the ground truth as a COCO instances dict for pycocotools evaluation.

        Image ids are `coco_image_ids`, category ids `cat_ids`; difficult objects become
        ``iscrowd=1`` so COCOeval ignores detections matched to them. Images whose size is unknown
        are decoded once to read it.
        """
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, record in enumerate(self.records):
            h, w = record.size or read_image(record.path, record.origin).shape[:2]
            image_id = self.coco_image_ids[index]
            images.append({"id": image_id, "file_name": record.path, "height": h, "width": w})
            for box, label, difficult in zip(
                record.boxes, record.labels, record.difficult, strict=True
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.cat_ids[int(label)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(difficult),
                    }
                )
        categories = [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.labels, strict=True)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_gt(self) -> Any:
        """Returns a ``pycocotools.coco.COCO`` object built from `to_coco_dict` (quietly)."""
        from pycocotools.coco import COCO  # heavy: loaded only for COCO datasets

        coco = COCO()
        coco.dataset = self.to_coco_dict()
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _empty_record(path: str, origin: str, size: tuple[int, int] | None) -> DetRecord:
    return DetRecord(
        path=path,
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros((0,), np.int64),
        difficult=np.zeros((0,), bool),
        origin=origin,
        size=size,
    )


def _finish_record(record: DetRecord, boxes: list, labels: list, difficult: list) -> DetRecord:
    if boxes:
        record.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        record.labels = np.asarray(labels, np.int64)
        record.difficult = np.asarray(difficult, bool)
    return record


class VOCDetection(_DetectionDataset):
    """A detection dataset in the Pascal VOC layout (as PaddleX reads it).

    Each line of ``file_list`` is ``JPEGImages/x.jpg Annotations/x.xml`` (paths relative to
    ``data_dir``). ``label_list`` holds one class name per line. Each XML ``<object>`` gives
    ``<name>``, ``<bndbox>`` (``xmin ymin xmax ymax``, 1-based inclusive; see the module docstring
    for the conversion) and optionally ``<difficult>``. ``cat_ids`` is ``range(num_classes)`` and
    ``coco_image_ids`` is ``range(len(self))``.

    Args:
        data_dir: Root that paths in ``file_list`` are relative to.
        file_list: The list file (``train_list.txt``).
        label_list: The class names file (``labels.txt``).
        transforms: Applied to each sample dict; ``None`` returns raw sample dicts.

    Raises:
        DatasetError: A file is missing, a line or XML is malformed, a class name is unknown, a box
            is malformed, or the list is empty. Undecodable images raise it when read.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        file_list: str | os.PathLike,
        label_list: str | os.PathLike,
        transforms: Transform | None = None,
    ) -> None:
        super().__init__(read_label_list(label_list), transforms)
        self.data_dir = os.fspath(data_dir)
        self.file_list = os.fspath(file_list)
        index_of = {name: k for k, name in enumerate(self.labels)}
        for image_path, xml_path, origin in read_path_pairs(
            self.file_list, self.data_dir, "annotation file", "xml"
        ):
            self.records.append(parse_voc_xml(xml_path, image_path, index_of, origin))
        self.cat_ids = list(range(self.num_classes))
        self.coco_image_ids = list(range(len(self.records)))


def parse_voc_xml(
    xml_path: str, image_path: str, index_of: dict[str, int], origin: str
) -> DetRecord:
    """Parses one VOC XML file into a `DetRecord` (boxes converted to 0-based pixel edges).

    Args:
        xml_path: The annotation file.
        image_path: The image it describes.
        index_of: Class name to contiguous label.
        origin: Where the XML was listed (list file and line), named in errors.
    """
    ctx = f"{xml_path} (listed at {origin})"
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{ctx}: malformed XML at line {e.position[0]}: {e}") from e
    size = _voc_size(root, ctx)
    record = _empty_record(image_path, origin, size)
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in index_of:
            raise DatasetError(
                f"{ctx}: object {k} has unknown class name {name!r}; the label list has "
                f"{list(index_of)}"
            )
        boxes.append(_voc_box(obj, size, f"{ctx}: object {k} ({name})"))
        labels.append(index_of[name])
        difficult.append(_voc_flag(obj.findtext("difficult"), f"{ctx}: object {k} ({name})"))
    return _finish_record(record, boxes, labels, difficult)


def _voc_size(root: ET.Element, ctx: str) -> tuple[int, int] | None:
    """Reads ``<size>`` as ``(h, w)``; ``None`` when absent or zero (some tools write 0)."""
    node = root.find("size")
    if node is None:
        return None
    try:
        h, w = int(float(node.findtext("height", "0"))), int(float(node.findtext("width", "0")))
    except ValueError as e:
        raise DatasetError(f"{ctx}: malformed <size>: {e}") from e
    return (h, w) if h > 0 and w > 0 else None


def _voc_box(obj: ET.Element, size: tuple[int, int] | None, ctx: str) -> list[float]:
    """Reads ``<bndbox>`` and converts 1-based inclusive corners to 0-based pixel edges."""
    node = obj.find("bndbox")
    if node is None:
        raise DatasetError(f"{ctx}: malformed box: no <bndbox>")
    try:
        xmin, ymin, xmax, ymax = (
            float(node.findtext(t))  # type: ignore[arg-type]  # None: TypeError, caught below
            for t in ("xmin", "ymin", "xmax", "ymax")
        )
    except (TypeError, ValueError) as e:
        raise DatasetError(
            f"{ctx}: malformed box: <bndbox> needs numeric xmin ymin xmax ymax"
        ) from e
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmax < xmin or ymax < ymin:
        raise DatasetError(
            f"{ctx}: malformed box xmin={xmin} ymin={ymin} xmax={xmax} ymax={ymax} "
            "(needs xmin <= xmax and ymin <= ymax)"
        )
    box = [xmin - 1, ymin - 1, xmax, ymax]
    if size is not None and (box[0] >= size[1] or box[1] >= size[0] or box[2] <= 0 or box[3] <= 0):
        raise DatasetError(f"{ctx}: box {box} lies outside the {size[1]}x{size[0]} image")
    return box


def _voc_flag(text: str | None, ctx: str) -> bool:
    """Parses ``<difficult>`` (absent or empty means 0)."""
    text = (text or "0").strip() or "0"
    try:
        return bool(int(float(text)))
    except ValueError as e:
        raise DatasetError(f"{ctx}: <difficult> must be 0 or 1, got {text!r}") from e
