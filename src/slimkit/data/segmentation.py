"""Semantic segmentation reader: the PaddleX seg list layout."""

from __future__ import annotations

import os

import numpy as np
import torch

from ._base import (
    BaseDataset,
    DatasetError,
    Sample,
    Transform,
    image_to_tensor,
    read_image,
    read_index_png,
    read_label_list,
    read_path_pairs,
)

IGNORE_INDEX = 255


class SegDataset(BaseDataset):
    """A segmentation dataset in the PaddleX layout.

    Each line of ``file_list`` is ``images/x.jpg labels/x.png`` (paths relative to ``data_dir``).
    A label PNG (mode ``P`` or ``L``) holds one class index per pixel; 255 means *ignore*. The mask
    of a sample is ``np.uint8 [H, W]`` and must match the image size.

    Args:
        data_dir: Root that paths in ``file_list`` are relative to.
        file_list: The list file (``train_list.txt``).
        label_list: Class names file (``labels.txt``, ``background`` usually first). Without it,
            every label image is read once to find the largest class index, and the classes are
            named ``class_0``, ``class_1``, ...
        transforms: Applied to each sample dict; ``None`` returns raw sample dicts.

    Raises:
        DatasetError: A file is missing, a line is malformed, or the list is empty. When a sample
            is read: an undecodable image or label, a size mismatch, or a label value
            ``>= num_classes`` other than 255.
    """

    task = "seg"

    def __init__(
        self,
        data_dir: str | os.PathLike,
        file_list: str | os.PathLike,
        label_list: str | os.PathLike | None = None,
        transforms: Transform | None = None,
    ) -> None:
        labels = read_label_list(label_list) if label_list is not None else []
        super().__init__(labels, transforms)
        self.data_dir = os.fspath(data_dir)
        self.file_list = os.fspath(file_list)
        self.samples: list[tuple[str, str, str]] = []
        for image_path, label_path, origin in read_path_pairs(
            self.file_list, self.data_dir, "label file", "label png"
        ):
            self.samples.append((image_path, label_path, origin))
        if label_list is None:
            self.labels = [f"class_{k}" for k in range(self._scan_num_classes())]

    def __len__(self) -> int:
        return len(self.samples)

    def _scan_num_classes(self) -> int:
        largest = 0
        for _, label_path, origin in self.samples:
            mask = read_index_png(label_path, origin)
            values = np.unique(mask)
            values = values[values != IGNORE_INDEX]
            if values.size:
                largest = max(largest, int(values.max()))
        return largest + 1

    def load_sample(self, index: int) -> Sample:
        image_path, label_path, origin = self.samples[index]
        image = read_image(image_path, origin)
        mask = read_index_png(label_path, origin)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{origin}: label {label_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}"
            )
        bad = np.unique(mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise DatasetError(
                f"{origin}: label {label_path} has class values {bad[:10].tolist()} >= num_classes "
                f"({self.num_classes}); only 0..{self.num_classes - 1} and {IGNORE_INDEX} (ignore) "
                "are allowed"
            )
        return {
            "image": image,
            "mask": mask.astype(np.uint8),
            "image_id": index,
            "orig_size": image.shape[:2],
            "path": image_path,
        }

    def to_output(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        return image_to_tensor(sample["image"]), torch.as_tensor(sample["mask"]).long()
