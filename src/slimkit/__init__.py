"""slimkit: make PyTorch vision models small and fast (channel pruning, INT8 quantization).

The public surface, in one screen::

    import slimkit
    from slimkit import slim
    ds = slimkit.datasets.ImageNet(data_dir, file_list, label_list)
    model = slimkit.cls.MobileNetV2(num_classes=4)      # also slimkit.det.YOLOv3, slimkit.seg.UNet
    model.train(...); model.evaluate(ds)
    model = slimkit.load_model("output/best_model")
    slim.analysis(...); slim.visualize(...); slim.export_quant_model(...)

Any ``nn.Module``: ``slimkit.prune`` (groups, pruning, sensitivity) and ``slimkit.quant`` (INT8 ONNX).
"""

from slimkit import cls as cls
from slimkit import datasets as datasets
from slimkit import det as det
from slimkit import seg as seg
from slimkit import slim as slim
from slimkit.tasks.loading import load_model as load_model

__version__ = "0.1.0"

__all__ = ["__version__", "cls", "datasets", "det", "load_model", "seg", "slim"]
