"""Classification readers: the PaddleX ImageNet list layout and plain class folders."""

from __future__ import annotations

import os

import torch

from ._base import (
    BaseDataset,
    DatasetError,
    Sample,
    Transform,
    image_to_tensor,
    read_image,
    read_label_list,
    read_list_file,
    require_file,
    where,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")


class _ClassificationDataset(BaseDataset):
    """Shared sample loading for classification: ``self.samples`` holds (path, label, origin)."""

    task = "cls"

    def __init__(self, labels: list[str], transforms: Transform | None) -> None:
        super().__init__(labels, transforms)
        self.samples: list[tuple[str, int, str]] = []

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """The class index of every sample, in dataset order (no image is read)."""
        return [label for _, label, _ in self.samples]

    def load_sample(self, index: int) -> Sample:
        path, label, origin = self.samples[index]
        image = read_image(path, origin or None)
        return {
            "image": image,
            "label": label,
            "image_id": index,
            "orig_size": image.shape[:2],
            "path": path,
        }

    def to_output(self, sample: Sample) -> tuple[torch.Tensor, int]:
        return image_to_tensor(sample["image"]), int(sample["label"])


class ImageNet(_ClassificationDataset):
    """A classification dataset in the PaddleX ImageNet layout.

    ``label_list`` (``labels.txt``) holds one class name per line; line ``k`` (0-based, blank lines
    skipped) is class ``k``. Each line of ``file_list`` is ``relative/path.jpg <label>`` where the
    path is relative to ``data_dir`` and ``<label>`` is a class index or a class name.

    Args:
        data_dir: Root that image paths in ``file_list`` are relative to.
        file_list: The list file (``train_list.txt``).
        label_list: The class names file (``labels.txt``).
        transforms: Applied to each sample dict; ``None`` returns raw sample dicts.

    Raises:
        DatasetError: A file is missing, a line is malformed, a label is unknown or out of range,
            or the list is empty. Undecodable images raise it when read.
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
        for line, text in read_list_file(self.file_list):
            origin = where(self.file_list, line)
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DatasetError(
                    f"{origin}: malformed line {text!r}; expected '<image path> <label>'"
                )
            path = os.path.join(self.data_dir, parts[0])
            label = _parse_label(parts[1], index_of, origin)
            require_file(path, "image file", origin)
            self.samples.append((path, label, origin))


def _parse_label(token: str, index_of: dict[str, int], origin: str) -> int:
    """Parses a label token that is a class index or a class name."""
    num_classes = len(index_of)
    try:
        label = int(token)
    except ValueError:
        if token in index_of:
            return index_of[token]
        raise DatasetError(
            f"{origin}: unknown class name {token!r}; expected a class index in "
            f"[0, {num_classes}) or one of {sorted(index_of)}"
        ) from None
    if not 0 <= label < num_classes:
        raise DatasetError(
            f"{origin}: label index {label} is out of range [0, {num_classes}) "
            f"for the {num_classes} classes in the label list"
        )
    return label


class ImageFolder(_ClassificationDataset):
    """A classification dataset of plain class folders: ``root/<class name>/**/<image>``.

    Classes are the sub-folders of ``root`` in sorted order (hidden folders are skipped); images
    are found recursively by extension (`IMAGE_EXTENSIONS`), in sorted order.

    Args:
        root: The folder holding one sub-folder per class.
        transforms: Applied to each sample dict; ``None`` returns raw sample dicts.

    Raises:
        DatasetError: ``root`` is missing, or holds no class folders or no images.
    """

    def __init__(self, root: str | os.PathLike, transforms: Transform | None = None) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DatasetError(f"image folder not found: {root}")
        classes = sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".")
        )
        if not classes:
            raise DatasetError(f"{root}: no class sub-folders; expected root/<class name>/<image>")
        super().__init__(classes, transforms)
        self.root = root
        for label, name in enumerate(classes):
            for path in _images_under(os.path.join(root, name)):
                self.samples.append((path, label, ""))
        if not self.samples:
            raise DatasetError(
                f"{root}: the class folders hold no images with extensions {IMAGE_EXTENSIONS}"
            )


def _images_under(folder: str) -> list[str]:
    """Lists image files under ``folder`` recursively, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.join(dirpath, name))
    return found
