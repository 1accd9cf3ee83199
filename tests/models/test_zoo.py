"""Every registered model: forward/backward, shapes, feature_info, registry errors, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.models import (
    MobileNetV1,
    MobileNetV2,
    UNet,
    YOLOv3,
    _registry,
    create_model,
    list_models,
    register_model,
)
from slimkit.models.mobilenetv1 import make_divisible

# Tiny configurations; a model registered later without an entry is built with its defaults.
TINY = {
    "mobilenetv1": {"num_classes": 5, "width_mult": 0.25},
    "mobilenetv2": {"num_classes": 5, "width_mult": 0.25},
    "yolov3_mobilenetv1": {
        "num_classes": 3,
        "width_mult": 0.25,
        "neck_width": 0.125,
        "input_size": (64, 64),
    },
    "unet": {"num_classes": 3, "base_channels": 8},
}


def tiny(name: str, **overrides: object) -> nn.Module:
    return create_model(name, **{**TINY.get(name, {}), **overrides})


def expected_shapes(model: nn.Module, batch: int, h: int, w: int) -> list[tuple[int, ...]] | None:
    if isinstance(model, (MobileNetV1, MobileNetV2)):
        return [(batch, model.num_classes)]
    if isinstance(model, YOLOv3):
        ch = 3 * (5 + model.num_classes)
        return [(batch, ch, h // s, w // s) for s in (32, 16, 8)]
    if isinstance(model, UNet):
        return [(batch, model.num_classes, h, w)]
    return None


def as_list(out: torch.Tensor | tuple | list) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def test_registry_has_the_zoo() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"mobilenetv1", "mobilenetv2", "yolov3_mobilenetv1", "unet"} <= set(names)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    model = tiny(name).train()
    x = torch.randn(2, 3, 64, 64)
    outs = as_list(model(x))
    expected = expected_shapes(model, 2, 64, 64)
    if expected is not None:
        assert [tuple(o.shape) for o in outs] == expected
    sum(o.float().square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters not reached by backward: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_prune_ignore_names_exist(name: str) -> None:
    model = tiny(name)
    modules = dict(model.named_modules())
    assert isinstance(model.prune_ignore, tuple) and model.prune_ignore
    for qualified in model.prune_ignore:
        assert qualified in modules, f"{name}.prune_ignore names missing module {qualified!r}"


@pytest.mark.parametrize(("name", "size"), [("mobilenetv2", (64, 96)), ("unet", (32, 48))])
def test_non_square_inputs(name: str, size: tuple[int, int]) -> None:
    model = tiny(name).eval()
    with torch.no_grad():
        out = as_list(model(torch.randn(1, 3, *size)))
    assert [tuple(o.shape) for o in out] == expected_shapes(model, 1, *size)


def test_known_architectures_have_paper_parameter_counts() -> None:
    # torchvision mobilenet_v2 and Keras MobileNet (trainable params) at width 1.0, 1000 classes
    assert sum(p.numel() for p in create_model("mobilenetv2").parameters()) == 3_504_872
    assert sum(p.numel() for p in create_model("mobilenetv1").parameters()) == 4_231_976


@pytest.mark.parametrize("width_mult", [0.25, 0.35, 0.75])
def test_width_mult_rounds_channels_to_multiples_of_8(width_mult: float) -> None:
    model = create_model("mobilenetv2", width_mult=width_mult, num_classes=3)
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "conv_pwl" in n]
    assert convs and all(c.out_channels % 8 == 0 for c in convs)
    assert make_divisible(32 * 0.25) == 8 and make_divisible(24 * 0.35) == 8
    assert make_divisible(1024 * 0.75) == 768 and make_divisible(20) == 24


@pytest.mark.parametrize("name", ["mobilenetv1", "mobilenetv2"])
def test_features_only_matches_feature_info(name: str) -> None:
    model = tiny(name, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    assert not hasattr(model, "classifier") and not hasattr(model, "conv_head")
    assert model.prune_ignore == ()
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for info in model.feature_info:
        modules[info["module"]].register_forward_hook(
            lambda _m, _i, out, key=info["module"]: captured.__setitem__(key, out)
        )
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model(x)
    assert isinstance(feats, list) and len(feats) == len(model.feature_info) == 4
    for feat, info in zip(feats, model.feature_info, strict=True):
        assert feat.shape[1] == info["num_chs"]
        assert (64 // feat.shape[2], 96 // feat.shape[3]) == (info["reduction"],) * 2
        assert torch.equal(feat, captured[info["module"]])
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["mobilenetv1", "mobilenetv2"])
def test_forward_features_is_stride_32(name: str) -> None:
    model = tiny(name).eval()
    with torch.no_grad():
        feat = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feat.shape == (1, model.num_features, 2, 2)


def test_invalid_arguments_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        create_model("mobilenetv1", features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="width_mult"):
        create_model("mobilenetv2", width_mult=0)
    with pytest.raises(ValueError, match="upsample"):
        create_model("unet", upsample="nearest")
    with pytest.raises(ValueError, match="depth"):
        create_model("unet", depth=0)


def test_unet_deconv_variant() -> None:
    model = tiny("unet", upsample="deconv", depth=3)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean 'mobilenetv2'"):
        create_model("mobilenet_v2")
    with pytest.raises(ValueError, match="Available models: .*unet"):
        create_model("resnet50")


def test_register_model_adds_names_and_rejects_clashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_MODEL_SPECS", dict(_registry._MODEL_SPECS))

    def tiny_linear(num_classes: int = 2) -> nn.Module:
        return nn.Linear(4, num_classes)

    register_model(tiny_linear)
    assert "tiny_linear" in list_models()
    assert create_model("tiny_linear", num_classes=7).out_features == 7

    def mobilenetv1() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(mobilenetv1)


def randomize_for_comparison(model: nn.Module) -> None:
    """Give BN statistics and conv biases non-trivial values so outputs are far from zero."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-1.0, 1.0)


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_matches_torch(name: str, tmp_path: pytest.TempPathFactory) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny(name).eval()
    randomize_for_comparison(model)
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, external_data=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = as_list(model(x))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4)
