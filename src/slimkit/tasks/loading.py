"""``slimkit.load_model``: rebuild a task object from a model directory (Normal, Prune or Quant)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimkit.models import list_models
from slimkit.models.external import is_model_def, register_model_def
from slimkit.tasks import modeldir
from slimkit.tasks.base import BaseTask
from slimkit.tasks.factory import task_class
from slimkit.tasks.runtime import OrtRunner


def build_task(
    info: dict[str, Any], where: str = "model.yml", trust_model_def: bool = False
) -> BaseTask:
    """Create an (untrained) task object from a ``model.yml`` dict (checked by ``read_model_yml``).

    The object is of the class named in ``model_class`` (e.g. ``MobileNetV2``), built through the
    generic task constructor so that every saved argument is restored; missing ``mean``/``std``
    come from the architecture's spec. A network defined outside slimkit (``pkg.module:factory``)
    is imported only when it is registered already or ``trust_model_def`` is set: the file names
    the code and its arguments, so an untrusted file could run anything.

    Raises:
        ValueError: the file's values do not build a model (unknown architecture or argument, a
            width out of range, a network over the size limit, an untrusted model definition);
            ``where`` names the file.
    """
    arch = str(info["architecture"])
    if is_model_def(arch) and arch not in list_models():  # a model defined outside slimkit
        if not trust_model_def:
            raise ValueError(
                f"{where} was saved from a network defined outside slimkit ({arch!r}); loading "
                "it imports and runs that code with arguments from the file. If you trust it, "
                f"pass trust_model_def=True (command line: --model-def {arch})"
            )
        register_model_def(arch, info["task"], info["input_size"])
    generic = task_class(info["task"])
    obj = object.__new__(task_class(info["task"], info.get("model_class")))
    kwargs = info.get("model_kwargs", {})
    try:
        generic.__init__(
            obj,
            info["architecture"],
            info["num_classes"],
            info["input_size"],
            mean=info.get("mean"),
            std=info.get("std"),
            labels=info.get("labels"),
            **kwargs,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        # the file's values reach the model factories here (e.g. base_channels: -4)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{where}: cannot build the model it describes: {first}") from e
    obj.metrics = dict(info.get("metrics", {}))
    return obj


def load_model(model_dir: str | os.PathLike, trust_model_def: bool = False) -> BaseTask:
    """Load a model directory written by ``train``/``save`` (Normal/Prune) or quantization (Quant).

    Normal and Prune models get their ``nn.Module`` (``.net``) back — pruned models are rebuilt from
    the architecture plus the saved pruning plan, then the safetensors weights are loaded. Quant models
    run through ONNX Runtime (``.net`` is None; ``predict``/``evaluate`` work as usual).

    Args:
        model_dir: The model directory.
        trust_model_def: Import the network definition a directory saved from a model defined
            outside slimkit names (``pkg.module:factory`` in ``model.yml``). Off by default:
            loading such a directory runs its code; definitions already registered in this
            process (``--model-def``, ``register_model_def``) load without it.
    """
    model_dir = Path(model_dir)
    info = modeldir.read_model_yml(model_dir)
    model = build_task(info, repr(str(model_dir / modeldir.MODEL_YML)), trust_model_def)
    model.status = info["status"]
    model.source_dir = model_dir
    if model.status == "Quant":
        onnx_path = model_dir / modeldir.ONNX_INT8
        if not onnx_path.is_file():
            raise ValueError(
                f"{str(onnx_path)!r} not found: the Quant model directory is incomplete"
            )
        model.net = None
        model.runtime = OrtRunner(onnx_path)
        return model
    assert model.net is not None
    model.net, model.prune_plan = modeldir.restore_net(
        model_dir, model.status, model.net, model.example_inputs()
    )
    return model
