"""Detection models with the PaddleX-style API (``slimkit.det.YOLOv3(backbone="MobileNetV1")``)."""

from slimkit.tasks.detector import Detector as Detector
from slimkit.tasks.detector import YOLOv3 as YOLOv3
