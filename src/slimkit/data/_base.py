"""Shared pieces of the dataset readers: the error type, list parsing, image decoding, the base class.

Every reader produces *sample dicts* (see ``docs/internals.md``): ``image`` is an RGB ``np.uint8``
array ``[H, W, 3]``; detection adds ``boxes`` (``np.float32 [N, 4]``, xyxy in continuous pixel
coordinates: the left edge of the first column is ``x = 0``), ``labels`` (``np.int64 [N]``) and
``difficult`` (``np.bool_ [N]``); segmentation adds ``mask`` (``np.uint8 [H, W]``, 255 = ignore);
classification adds ``label`` (``int``). Every sample also carries ``image_id`` (the dataset index;
for detection the COCO image id, see ``coco_image_ids``),
``orig_size`` (``(h, w)`` of the decoded image) and ``path`` (the image file).
"""

from __future__ import annotations

import copy
import operator
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from slimkit._checks import MAX_IMAGE_PIXELS

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@contextmanager
def open_image(path: str, prefix: str = "") -> Iterator[Image.Image]:
    """``Image.open`` that refuses images over ``MAX_IMAGE_PIXELS`` before decoding them.

    Pillow's decompression-bomb warning is raised as an error (no stray line on stderr).

    Raises:
        DatasetError: the image has more pixels than slimkit decodes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{prefix}image {path} is {im.width}x{im.height} pixels, more than slimkit decodes "
                    f"({MAX_IMAGE_PIXELS:,}); downscale it"
                )
            yield im


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message names the offending file and, for list files, the line number.
    """


def where(path: str | os.PathLike, line: int | None = None) -> str:
    """Formats an error location as ``path`` or ``path, line N``."""
    return f"{os.fspath(path)}, line {line}" if line is not None else os.fspath(path)


def require_file(path: str, what: str, origin: str | None = None) -> None:
    """Raises `DatasetError` unless ``path`` is an existing file.

    Args:
        path: The file that must exist.
        what: What the file is, for the message (``"image file"``).
        origin: Where the path came from (``"train_list.txt, line 3"``), if anywhere.
    """
    if not os.path.isfile(path):
        prefix = f"{origin}: " if origin else ""
        raise DatasetError(f"{prefix}{what} not found: {path}")


def read_list_file(path: str | os.PathLike, what: str = "list file") -> list[tuple[int, str]]:
    """Reads a list file into ``(line_number, stripped_text)`` pairs, skipping blank lines.

    Args:
        path: The text file.
        what: What the file is, for the messages.

    Raises:
        DatasetError: The file does not exist, cannot be decoded as UTF-8, or lists nothing.
    """
    path = os.fspath(path)
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, text.strip()) for n, text in enumerate(f, start=1)]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from e
    entries = [(n, text) for n, text in lines if text]
    if not entries:
        raise DatasetError(f"{path}: the {what} is empty (no non-blank lines)")
    return entries


def read_path_pairs(
    file_list: str, data_dir: str, second: str, token: str
) -> Iterator[tuple[str, str, str]]:
    """Reads a list of ``<image path> <second path>`` lines (paths relative to ``data_dir``).

    Args:
        file_list: The list file.
        data_dir: The directory the paths are relative to.
        second: What the second file is (e.g. ``"annotation file"``), for the messages.
        token: Its name in the expected line format (e.g. ``"xml"``).

    Yields:
        ``(image_path, second_path, origin)``, both files checked to exist.

    Raises:
        DatasetError: The list is missing or empty, a line does not hold two paths, or a file is
            missing (naming the file and the line).
    """
    for line, text in read_list_file(file_list):
        origin = where(file_list, line)
        parts = text.split()
        if len(parts) != 2:
            raise DatasetError(
                f"{origin}: malformed line {text!r}; expected '<image path> <{token} path>'"
            )
        image_path, other_path = (os.path.join(data_dir, p) for p in parts)
        require_file(image_path, "image file", origin)
        require_file(other_path, second, origin)
        yield image_path, other_path, origin


def read_label_list(path: str | os.PathLike) -> list[str]:
    """Reads ``labels.txt``: one class name per line; blank lines are skipped.

    Raises:
        DatasetError: The file is missing or empty, or a class name appears twice.
    """
    names: list[str] = []
    first_seen: dict[str, int] = {}
    for line, name in read_list_file(path, "label list"):
        if name in first_seen:
            raise DatasetError(
                f"{where(path, line)}: class name {name!r} repeats line {first_seen[name]}"
            )
        first_seen[name] = line
        names.append(name)
    return names


def read_image(path: str, origin: str | None = None) -> np.ndarray:
    """Decodes an image file into an RGB ``np.uint8`` array ``[H, W, 3]``.

    Args:
        path: The image file.
        origin: Where the path came from (list file and line), named in errors.

    Raises:
        DatasetError: The file is missing, or is not an image PIL can fully decode.
    """
    prefix = f"{origin}: " if origin else ""
    try:
        with open_image(path, prefix) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise DatasetError(f"{prefix}image file not found: {path}") from e
    except DatasetError:
        raise
    except _DECODE_ERRORS as e:
        raise DatasetError(
            f"{prefix}cannot decode image {path} (corrupt or truncated?): {e}"
        ) from e


def read_index_png(path: str, origin: str | None = None) -> np.ndarray:
    """Decodes a label image of class indices (PNG mode ``P``, ``L`` or ``I``) into a 2-D array.

    Raises:
        DatasetError: The file is missing, undecodable, or has colour channels.
    """
    prefix = f"{origin}: " if origin else ""
    try:
        with open_image(path, prefix) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(
                    f"{prefix}label image {path} has mode {im.mode}; expected a single-channel "
                    "image of class indices (PNG mode P or L)"
                )
            return np.array(im)
    except FileNotFoundError as e:
        raise DatasetError(f"{prefix}label file not found: {path}") from e
    except DatasetError:
        raise
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{prefix}cannot decode label image {path}: {e}") from e


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Returns ``image`` as a CHW float tensor; a uint8 HWC array is scaled to [0, 1] (no Normalize)."""
    if isinstance(image, torch.Tensor):
        return image
    array = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
    tensor = torch.from_numpy(array)
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


class BaseDataset(Dataset):
    """A map-style dataset of sample dicts, optionally transformed into ``(image, target)``.

    Subclasses set `task`, fill ``self.labels`` and implement `__len__` and `load_sample`.
    """

    task: str = ""

    def __init__(self, labels: list[str], transforms: Transform | None) -> None:
        self.labels = list(labels)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        """The number of classes (``len(self.labels)``)."""
        return len(self.labels)

    def with_transforms(self, transforms: Transform | None) -> BaseDataset:
        """Returns a shallow copy of this dataset that applies ``transforms``."""
        new = copy.copy(self)
        new.transforms = transforms
        return new

    def __len__(self) -> int:
        raise NotImplementedError

    def load_sample(self, index: int) -> Sample:
        """Reads sample ``index`` as a raw sample dict (no transforms)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample | tuple[torch.Tensor, Any]:
        """Returns the raw sample dict without transforms, else ``(image, target)``."""
        index = operator.index(index)
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for a dataset of {size} samples")
        sample = self.load_sample(index)
        if self.transforms is None:
            return sample
        return self.to_output(self.transforms(sample))

    def to_output(self, sample: Sample) -> tuple[torch.Tensor, Any]:
        """Turns a transformed sample dict into ``(image, target)`` for this task."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, num_samples={len(self)}, "
            f"num_classes={self.num_classes}, transforms={self.transforms!r})"
        )
