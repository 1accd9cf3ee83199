"""Segmentation models with the PaddleX-style API (``slimkit.seg.UNet(num_classes=2)``)."""

from slimkit.tasks.segmenter import Segmenter as Segmenter
from slimkit.tasks.segmenter import UNet as UNet
