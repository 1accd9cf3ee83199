"""Classification models with the PaddleX-style API (``slimkit.cls.MobileNetV2(num_classes=4)``)."""

from slimkit.tasks.classifier import Classifier as Classifier
from slimkit.tasks.classifier import MobileNetV1 as MobileNetV1
from slimkit.tasks.classifier import MobileNetV2 as MobileNetV2
