"""``slimkit.load_model``: rebuild a task object from a model directory (Normal, Prune or Quant)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slimkit.tasks import modeldir
from slimkit.tasks.base import BaseTask
from slimkit.tasks.classifier import Classifier, MobileNetV1, MobileNetV2
from slimkit.tasks.detector import Detector, YOLOv3
from slimkit.tasks.segmenter import Segmenter, UNet

TASK_CLASSES: dict[str, type[BaseTask]] = {"cls": Classifier, "det": Detector, "seg": Segmenter}
MODEL_CLASSES: dict[str, type[BaseTask]] = {
    c.__name__: c for c in (Classifier, Detector, Segmenter, MobileNetV1, MobileNetV2, YOLOv3, UNet)
}


class OrtRunner:
    """Runs an ONNX model with ONNX Runtime on torch batches (batch split when the model is static)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        from slimkit.quant import OrtModel

        self.model = OrtModel(str(path), threads=threads)
        self.path = Path(path)

    def run_torch(self, images: torch.Tensor) -> Any:
        fixed = self.model.input_shape[0]
        x = images.detach().cpu().float().numpy()
        if isinstance(fixed, int) and fixed != x.shape[0]:
            parts = [self.model(x[i : i + fixed]) for i in range(0, x.shape[0], fixed)]
            outs = [
                torch.cat([torch.from_numpy(p[j]) for p in parts]) for j in range(len(parts[0]))
            ]
        else:
            outs = [torch.from_numpy(o) for o in self.model(x)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def build_task(info: dict[str, Any]) -> BaseTask:
    """Create an (untrained) task object from a ``model.yml`` dict."""
    cls = MODEL_CLASSES.get(info.get("model_class", ""), TASK_CLASSES.get(info["task"]))
    if cls is None:
        raise ValueError(f"unknown task {info['task']!r} in model.yml; expected cls, det or seg")
    base = TASK_CLASSES[info["task"]]
    obj = object.__new__(cls)
    base.__init__(
        obj,
        info["architecture"],
        int(info["num_classes"]),
        info["input_size"],
        mean=info.get("mean", (0.485, 0.456, 0.406)),
        std=info.get("std", (0.229, 0.224, 0.225)),
        labels=info.get("labels"),
        **info.get("model_kwargs", {}),
    )
    obj.metrics = dict(info.get("metrics", {}))
    return obj


def load_model(model_dir: str | os.PathLike) -> BaseTask:
    """Load a model directory written by ``train``/``save`` (Normal/Prune) or quantization (Quant).

    Normal and Prune models get their ``nn.Module`` (``.net``) back — pruned models are rebuilt from
    the architecture plus the saved pruning plan, then the safetensors weights are loaded. Quant models
    run through ONNX Runtime (``.net`` is None; ``predict``/``evaluate`` work as usual).
    """
    model_dir = Path(model_dir)
    info = modeldir.read_model_yml(model_dir)
    model = build_task(info)
    model.status = info["status"]
    if model.status == "Quant":
        onnx_path = model_dir / modeldir.ONNX_INT8
        if not onnx_path.is_file():
            raise ValueError(
                f"{str(onnx_path)!r} not found: the Quant model directory is incomplete"
            )
        model.net = None
        model._ort = OrtRunner(onnx_path)
        return model
    if model.status == "Prune":
        from slimkit.prune import apply_plan, load_plan

        plan_path = model_dir / modeldir.PLAN
        if not plan_path.is_file():
            raise ValueError(f"{str(plan_path)!r} not found: a Prune model needs its pruning plan")
        model.prune_plan = load_plan(plan_path)
        model.net = apply_plan(model.net, model.prune_plan, model.example_inputs())
    _load_weights(model, model_dir / modeldir.WEIGHTS)
    model.net.eval()
    return model


def _load_weights(model: BaseTask, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read weights {str(path)!r}: {e}") from None
    assert model.net is not None
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(
            f"weights {str(path)!r} do not match the architecture in model.yml: {first}"
        ) from None
