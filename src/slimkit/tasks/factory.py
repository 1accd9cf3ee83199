"""Create task objects by architecture name and open dataset splits from a data directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimkit.tasks.base import BaseTask

TASK_OF_ARCH = {
    "mobilenetv1": "cls",
    "mobilenetv2": "cls",
    "yolov3_mobilenetv1": "det",
    "unet": "seg",
}


def task_of(architecture: str) -> str:
    """The task (``cls``/``det``/``seg``) of a zoo architecture."""
    if architecture not in TASK_OF_ARCH:
        import difflib

        close = difflib.get_close_matches(architecture, TASK_OF_ARCH, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(
            f"unknown model {architecture!r}: choose from {sorted(TASK_OF_ARCH)}{hint}"
        )
    return TASK_OF_ARCH[architecture]


def create_task(architecture: str, num_classes: int, input_size: Any, **kwargs: Any) -> BaseTask:
    """A task object (``Classifier``/``Detector``/``Segmenter``) for a zoo architecture."""
    from slimkit.tasks.loading import TASK_CLASSES

    cls = TASK_CLASSES[task_of(architecture)]
    return cls(architecture, num_classes, input_size, **kwargs)


def open_split(task: str, data_dir: str | os.PathLike, split: str = "train") -> Any:
    """Open ``split`` (``train``/``val``) of a dataset directory in one of the standard layouts.

    * cls: PaddleX ImageNet layout (``{split}_list.txt`` + ``labels.txt``) or class folders
      under ``data_dir/{split}/``.
    * det: Pascal VOC (``{split}_list.txt`` + ``labels.txt``) or COCO
      (``annotations/instances_{split}.json``; images under ``data_dir``).
    * seg: PaddleX seg layout (``{split}_list.txt`` + optional ``labels.txt``).
    """
    from slimkit import datasets

    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data directory {str(root)!r} does not exist")
    file_list, labels = root / f"{split}_list.txt", root / "labels.txt"
    if task == "cls":
        if file_list.is_file():
            return datasets.ImageNet(root, file_list, labels)
        if (root / split).is_dir():
            return datasets.ImageFolder(root / split)
    elif task == "det":
        if file_list.is_file():
            return datasets.VOCDetection(root, file_list, labels)
        coco = root / "annotations" / f"instances_{split}.json"
        if coco.is_file():
            return datasets.CocoDetection(root, coco)
    elif task == "seg":
        if file_list.is_file():
            return datasets.SegDataset(root, file_list, labels if labels.is_file() else None)
    else:
        raise ValueError(f"task must be cls, det or seg, got {task!r}")
    raise ValueError(
        f"{str(root)!r} has no {split!r} split for task {task!r}: expected {file_list.name} "
        "(+ labels.txt) as written by `slimkit datasets make`"
    )
