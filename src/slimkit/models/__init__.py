"""Model zoo: a timm-style registry (one ModelSpec per name) plus MobileNetV1/V2, YOLOv3 and UNet."""

from ._registry import TASKS as TASKS
from ._registry import ModelSpec as ModelSpec
from ._registry import create_model as create_model
from ._registry import list_models as list_models
from ._registry import model_spec as model_spec
from ._registry import register_model as register_model
from .mobilenetv1 import MobileNetV1 as MobileNetV1
from .mobilenetv2 import MobileNetV2 as MobileNetV2
from .unet import UNet as UNet
from .yolov3 import YOLOv3 as YOLOv3

__all__ = [
    "create_model",
    "list_models",
    "MobileNetV1",
    "MobileNetV2",
    "model_spec",
    "ModelSpec",
    "register_model",
    "TASKS",
    "UNet",
    "YOLOv3",
]
