"""INT8 post-training quantization: ONNX export, streaming calibration, QDQ writing, ORT runtime.

Importing this package is light: onnx, onnxruntime and torch are imported inside the functions
that need them.
"""

from .align import align_conv_channels as align_conv_channels
from .api import QuantResult as QuantResult
from .api import quantize as quantize
from .config import QuantConfig as QuantConfig
from .export import check_onnx_matches_torch as check_onnx_matches_torch
from .export import export_onnx as export_onnx
from .guarded import choose_range as choose_range
from .guarded import guarded_kl_threshold as guarded_kl_threshold
from .ranges import kl_threshold as kl_threshold
from .ranges import minmax_threshold as minmax_threshold
from .ranges import percentile_threshold as percentile_threshold
from .runtime import OrtModel as OrtModel

__all__ = [
    "align_conv_channels",
    "check_onnx_matches_torch",
    "choose_range",
    "export_onnx",
    "guarded_kl_threshold",
    "kl_threshold",
    "minmax_threshold",
    "OrtModel",
    "percentile_threshold",
    "QuantConfig",
    "quantize",
    "QuantResult",
]
