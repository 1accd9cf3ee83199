"""Create task objects from the model registry's specs, and open dataset splits of a data directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimkit.data import CocoDetection, ImageFolder, ImageNet, SegDataset, VOCDetection
from slimkit.models import model_spec
from slimkit.tasks.base import BaseTask
from slimkit.tasks.classifier import Classifier
from slimkit.tasks.detector import Detector
from slimkit.tasks.segmenter import Segmenter

_GENERIC: dict[str, type[BaseTask]] = {c.task: c for c in (Classifier, Detector, Segmenter)}


def task_of(architecture: str) -> str:
    """The task (``cls``/``det``/``seg``) of a registered architecture (from its spec).

    Raises:
        ValueError: the architecture is unknown (with close matches) or has no task.
    """
    task = model_spec(architecture).task
    if task is None:
        raise ValueError(
            f"model {architecture!r} is registered without a task; register it with "
            "@register_model(task='cls'|'det'|'seg', ...) to use it with the task API"
        )
    return task


def task_class(task: str, class_name: str | None = None) -> type[BaseTask]:
    """The task class named ``class_name`` (e.g. ``"MobileNetV2"``), else the task's generic class.

    Raises:
        ValueError: ``task`` is not cls, det or seg.
    """
    if task not in _GENERIC:
        raise ValueError(f"unknown task {task!r}; expected cls, det or seg")
    generic = _GENERIC[task]
    pending = [generic]
    while pending:
        cls = pending.pop()
        if cls.__name__ == class_name:
            return cls
        pending.extend(cls.__subclasses__())
    return generic


def create_task(
    architecture: str, num_classes: int, input_size: Any = None, **kwargs: Any
) -> BaseTask:
    """A task object (``Classifier``/``Detector``/``Segmenter``) for a registered architecture.

    ``input_size``, ``mean`` and ``std`` default to the architecture's spec.
    """
    return task_class(task_of(architecture))(architecture, num_classes, input_size, **kwargs)


def open_split(task: str, data_dir: str | os.PathLike, split: str = "train") -> Any:
    """Open ``split`` (``train``/``val``) of a dataset directory in one of the standard layouts.

    * cls: PaddleX ImageNet layout (``{split}_list.txt`` + ``labels.txt``) or class folders
      under ``data_dir/{split}/``.
    * det: Pascal VOC (``{split}_list.txt`` + ``labels.txt``) or COCO
      (``annotations/instances_{split}.json``; images under ``data_dir``).
    * seg: PaddleX seg layout (``{split}_list.txt`` + optional ``labels.txt``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data directory {str(root)!r} does not exist")
    file_list, labels = root / f"{split}_list.txt", root / "labels.txt"
    if task == "cls":
        if file_list.is_file():
            return ImageNet(root, file_list, labels)
        if (root / split).is_dir():
            return ImageFolder(root / split)
    elif task == "det":
        if file_list.is_file():
            return VOCDetection(root, file_list, labels)
        coco = root / "annotations" / f"instances_{split}.json"
        if coco.is_file():
            return CocoDetection(root, coco)
    elif task == "seg":
        if file_list.is_file():
            return SegDataset(root, file_list, labels if labels.is_file() else None)
    else:
        raise ValueError(f"task must be cls, det or seg, got {task!r}")
    raise ValueError(
        f"{str(root)!r} has no {split!r} split for task {task!r}: expected {file_list.name} "
        "(+ labels.txt) as written by `slimkit datasets make`"
    )
