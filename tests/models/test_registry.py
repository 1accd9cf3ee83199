"""The model registry's specs: complete for every zoo model, read by the task API, clear errors."""

import json
from importlib import resources
from pathlib import Path

import pytest
from torch import nn

import slimkit
from slimkit.models import _registry, create_model, list_models, model_spec, register_model
from slimkit.tasks.factory import create_task, task_of

ZOO = ("mobilenetv1", "mobilenetv2", "unet", "yolov3_mobilenetv1")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_has_a_complete_spec(name):
    spec = model_spec(name)
    assert spec.name == name and spec.factory.__name__ == name
    assert spec.task in ("cls", "det", "seg")
    assert spec.display_name and spec.display_name != "" and spec.sensitivity_key
    assert len(spec.input_size) == 2 and min(spec.input_size) > 0
    assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
    assert spec.sensitivity_name({}).startswith(name)  # the key formats with factory defaults


def test_zoo_is_registered_and_listed_by_task():
    assert set(ZOO) <= set(list_models())
    assert list_models("cls") == ["mobilenetv1", "mobilenetv2"]
    assert list_models("det") == ["yolov3_mobilenetv1"] and list_models("seg") == ["unet"]


@pytest.mark.parametrize(
    "model, key",
    [
        (lambda: slimkit.cls.MobileNetV2(num_classes=2, input_size=32), "mobilenetv2_w1"),
        (lambda: slimkit.cls.MobileNetV1(num_classes=2, width_mult=0.5), "mobilenetv1_w0.5"),
        (lambda: slimkit.seg.UNet(num_classes=2, base_channels=16, depth=2), "unet_c16"),
        (lambda: create_task("unet", 2, 32, depth=2), "unet_c64"),  # the factory's default
        (lambda: slimkit.det.YOLOv3(num_classes=2, input_size=64), "yolov3_mobilenetv1_w1"),
    ],
)
def test_sensitivity_key_comes_from_the_spec(model, key):
    assert model().sensitivity_key == key


def test_shipped_sensitivity_files_are_named_by_their_key():
    root = Path(str(resources.files("slimkit") / "sensitivities"))
    files = sorted(root.glob("*.json"))
    assert files
    for path in files:
        assert json.loads(path.read_text())["architecture"] == path.stem


def test_task_defaults_come_from_the_spec():
    model = slimkit.cls.MobileNetV1(num_classes=2, width_mult=0.25)
    assert model.input_size == (224, 224) and model.mean == model_spec("mobilenetv1").mean
    assert create_task("unet", 2, depth=2, base_channels=4).input_size == (512, 512)
    assert task_of("yolov3_mobilenetv1") == "det"


def test_unknown_names_give_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'mobilenetv2'"):
        model_spec("mobilenet_v2")
    with pytest.raises(ValueError, match="Did you mean 'unet'"):
        create_task("unet2", 2, 32)
    with pytest.raises(TypeError, match="must be a str"):
        model_spec(nn.Identity)


def test_a_model_of_another_task_is_refused():
    with pytest.raises(ValueError, match="'unet' is a 'seg' model, not 'cls'"):
        slimkit.cls.Classifier("unet", 2, 32)


def test_bare_registration_builds_modules_but_has_no_task(monkeypatch):
    monkeypatch.setattr(_registry, "_MODEL_SPECS", dict(_registry._MODEL_SPECS))

    @register_model
    def tiny_plain(num_classes: int = 2) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert create_model("tiny_plain").out_features == 2
    assert model_spec("tiny_plain").task is None
    with pytest.raises(ValueError, match="registered without a task"):
        create_task("tiny_plain", 2, 8)


def test_spec_fields_are_checked(monkeypatch):
    monkeypatch.setattr(_registry, "_MODEL_SPECS", dict(_registry._MODEL_SPECS))

    def tiny_bad(**kwargs) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="task must be one of"):
        register_model(task="classify")(tiny_bad)
    with pytest.raises(ValueError, match="does not declare with defaults"):
        register_model(task="cls", sensitivity_key="tiny_bad_w{width_mult}")(tiny_bad)
    assert "tiny_bad" not in list_models()
