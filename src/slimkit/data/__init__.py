"""Dataset readers, sample transforms, batching and the built-in dataset generators."""

from . import transforms as transforms
from ._base import DatasetError as DatasetError
from .classification import ImageFolder as ImageFolder
from .classification import ImageNet as ImageNet
from .coco import CocoDetection as CocoDetection
from .collate import collate_fn as collate_fn
from .detection import VOCDetection as VOCDetection
from .generate import PRETRAIN_CLASSES as PRETRAIN_CLASSES
from .generate import make_dataset as make_dataset
from .segmentation import SegDataset as SegDataset
from .transforms import default_transforms as default_transforms

__all__ = [
    "CocoDetection",
    "DatasetError",
    "ImageFolder",
    "ImageNet",
    "PRETRAIN_CLASSES",
    "SegDataset",
    "VOCDetection",
    "collate_fn",
    "default_transforms",
    "make_dataset",
    "transforms",
]
