"""PaddleX-style dataset names: ``slimkit.datasets.ImageNet(data_dir, file_list, label_list)`` etc."""

from .data import CocoDetection as CocoDetection
from .data import DatasetError as DatasetError
from .data import ImageFolder as ImageFolder
from .data import ImageNet as ImageNet
from .data import SegDataset as SegDataset
from .data import VOCDetection as VOCDetection

__all__ = ["CocoDetection", "DatasetError", "ImageFolder", "ImageNet", "SegDataset", "VOCDetection"]
