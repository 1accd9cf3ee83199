"""ONNX export: static shapes, folded BN, tuple outputs, both exporters, zoo models."""

import numpy as np
import onnx
import pytest
import torch
from quant_nets import TwoHeads
from torch import nn

from slimkit.quant import check_onnx_matches_torch, export_onnx


def test_export_is_static_folded_and_matches_torch(tmp_path, tiny_net):
    tiny_net.train()
    path = export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "sub" / "net.onnx")
    assert tiny_net.training  # mode restored
    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    assert model.opset_import[0].version == 17
    assert check_onnx_matches_torch(tiny_net, path, torch.randn(1, 3, 32, 32)) < 1e-4


def test_tuple_outputs_are_named_in_order(tmp_path):
    net = TwoHeads().eval()
    path = export_onnx(net, np.zeros((1, 3, 32, 32), np.float32), tmp_path / "heads.onnx")
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["output0", "output1"]
    check_onnx_matches_torch(net, path, (1, 3, 32, 32))
    named = export_onnx(net, (1, 3, 32, 32), tmp_path / "n.onnx", output_names=["big", "small"])
    assert [o.name for o in onnx.load(str(named)).graph.output] == ["big", "small"]


def test_dynamo_exporter_also_works(tmp_path, tiny_net):
    path = export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "d.onnx", exporter="dynamo")
    assert onnx.load(str(path)).opset_import[0].version >= 18
    check_onnx_matches_torch(tiny_net, path, (1, 3, 32, 32))


def test_mismatch_and_bad_arguments_are_reported(tmp_path, tiny_net):
    path = export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "net.onnx")
    with torch.no_grad():
        tiny_net.fc.bias += 1.0
    with pytest.raises(ValueError, match="differs from torch"):
        check_onnx_matches_torch(tiny_net, path, (1, 3, 32, 32))
    with pytest.raises(TypeError, match="input shape"):
        export_onnx(tiny_net, "1x3x32x32", tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx(lambda x: x, (1, 3), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "x.onnx", exporter="jit")


def _zoo_cases():
    try:
        from slimkit.models import create_model, list_models
    except ImportError:
        return []
    kwargs = {
        "mobilenetv1": {"num_classes": 4, "width_mult": 0.25},
        "mobilenetv2": {"num_classes": 4, "width_mult": 0.25},
        "yolov3_mobilenetv1": {"num_classes": 2, "width_mult": 0.25, "input_size": (64, 64)},
        "unet": {"num_classes": 2, "base_channels": 4, "depth": 2},
    }
    names = set(list_models())
    return [pytest.param(create_model, n, kw, id=n) for n, kw in kwargs.items() if n in names]


@pytest.mark.parametrize("create_model, name, kwargs", _zoo_cases())
def test_zoo_models_export(tmp_path, create_model, name, kwargs):
    net: nn.Module = create_model(name, **kwargs).eval()
    size = 64 if name == "yolov3_mobilenetv1" else 32
    path = export_onnx(net, (1, 3, size, size), tmp_path / f"{name}.onnx")
    check_onnx_matches_torch(net, path, (1, 3, size, size))
    outputs = onnx.load(str(path)).graph.output
    assert len(outputs) == (3 if name.startswith("yolov3") else 1)
