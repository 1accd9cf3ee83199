"""Batching of ``(image, target)`` pairs for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

Batch = tuple[torch.Tensor, Any]


def collate_fn(task: str) -> Callable[[Sequence[Any]], Batch]:
    """Returns the DataLoader ``collate_fn`` of a task (picklable, for worker processes).

    The returned function stacks images into ``[B, 3, H, W]``; cls targets become a LongTensor
    ``[B]``, seg targets a LongTensor ``[B, H, W]``, and det targets stay a list of dicts.

    Args:
        task: ``"cls"``, ``"det"`` or ``"seg"``.
    """
    if task not in ("cls", "det", "seg"):
        raise ValueError(f"task must be 'cls', 'det' or 'seg', got {task!r}")
    return functools.partial(_collate, task)


def _collate(task: str, batch: Sequence[Any]) -> Batch:
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if isinstance(batch[0], dict):
        raise TypeError(
            "the dataset returns raw sample dicts because it has no transforms; give it some, "
            "e.g. dataset.with_transforms(default_transforms(task, train, input_size))"
        )
    images, targets = zip(*batch, strict=True)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"images in a batch differ in shape {sorted(shapes)}; add Resize or a fixed-size crop "
            "to the transforms"
        )
    stacked = torch.stack(list(images))
    if task == "cls":
        return stacked, torch.as_tensor([int(t) for t in targets], dtype=torch.int64)
    if task == "seg":
        return stacked, torch.stack([torch.as_tensor(t).long() for t in targets])
    return stacked, list(targets)
