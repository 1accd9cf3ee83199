"""Model directories: ``model.yml`` + safetensors weights (+ pruning plan JSON, + ONNX when quantized).

Nothing is pickled. A directory is self-describing: ``model.yml`` names the task, the registered
architecture and its keyword arguments, so the network is rebuilt from the registry, the pruning plan
(if any) is re-applied, and the weights are loaded into the result.

A directory is written as one unit (:func:`writing`, on :func:`slimkit._io.atomic_directory`): a kill
at any instant leaves the previous complete directory or the new one. :func:`write_model_yml` is the
only writer of ``model.yml``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from slimkit._io import atomic_directory, atomic_write_text

MODEL_YML = "model.yml"
WEIGHTS = "model.safetensors"
PLAN = "prune_plan.json"
ONNX_INT8 = "model.onnx"
ONNX_FP32 = "model_fp32.onnx"
QUANT_REPORT = "model.quant.json"
STATUSES = ("Normal", "Prune", "Quant")
REQUIRED_KEYS = ("task", "architecture", "num_classes", "input_size", "status")
# Every file a model directory may hold: a directory with anything else is not replaced.
MODEL_FILES = frozenset({MODEL_YML, WEIGHTS, PLAN, ONNX_INT8, ONNX_FP32, QUANT_REPORT})


def _check_info(info: Any, where: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise ValueError(f"{where} lacks required keys {missing}")
    if info["status"] not in STATUSES:
        raise ValueError(f"{where}: status must be one of {STATUSES}, got {info['status']!r}")
    return info


def read_model_yml(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``model.yml`` of a model directory.

    Raises:
        ValueError: the directory or file is missing, unreadable, or lacks required keys.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model directory {str(model_dir)!r} does not exist")
    path = model_dir / MODEL_YML
    if not path.is_file():
        raise ValueError(
            f"{str(path)!r} not found: {str(model_dir)!r} is not a slimkit model directory "
            "(expected the output of model.train(...) or model.save(...))"
        )
    try:
        info = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{str(path)!r} is not valid YAML: {e}") from None
    return _check_info(info, repr(str(path)))


def write_model_yml(model_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``info`` as ``model_dir/model.yml`` (atomically); the one writer of ``model.yml``.

    Raises:
        ValueError: ``info`` lacks a required key or has an unknown status.
    """
    path = Path(model_dir) / MODEL_YML
    _check_info(info, "model.yml content")
    atomic_write_text(path, yaml.safe_dump(info, sort_keys=False, allow_unicode=True))
    return path


@contextmanager
def writing(model_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a whole model directory as one unit; yields the temporary directory to fill.

    ``model_dir`` may be new, empty or a model directory (which is replaced as a whole).

    Raises:
        ValueError: ``model_dir`` is a file, or a directory holding files a model directory does
            not (nothing of the user's is ever deleted).
    """
    model_dir = Path(model_dir)
    if model_dir.is_dir():
        foreign = sorted(p.name for p in model_dir.iterdir() if p.name not in MODEL_FILES)
        if foreign:
            raise ValueError(
                f"refusing to replace {str(model_dir)!r}: it holds {foreign[:5]}, which are not "
                "model files; save to a new or empty directory"
            )
    with atomic_directory(model_dir) as tmp:
        yield tmp


def save_weights(net: nn.Module, model_dir: Path) -> Path:
    """Write the state dict of ``net`` to ``model_dir/model.safetensors`` (CPU, contiguous)."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    path = model_dir / WEIGHTS
    save_file(state, str(path))
    return path


def load_weights(net: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``net`` (strict: every key and shape must match).

    Raises:
        ValueError: the file is missing or unreadable, or does not match the architecture.
    """
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read weights {str(path)!r}: {e}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(
            f"weights {str(path)!r} do not match the architecture in model.yml: {first}"
        ) from None


def restore_net(
    model_dir: Path, status: str, net: nn.Module, example_inputs: torch.Tensor
) -> tuple[nn.Module, Any]:
    """A freshly built ``net`` with the directory's pruning plan applied and its weights loaded.

    Returns:
        The net (in eval mode) and the plan (None for a Normal model).

    Raises:
        ValueError: the plan or the weights are missing or do not fit.
    """
    plan = None
    if status == "Prune":
        # torch-pruning is heavy: slimkit.prune loads only when a pruned model is read
        from slimkit.prune import apply_plan, load_plan

        plan_path = model_dir / PLAN
        if not plan_path.is_file():
            raise ValueError(f"{str(plan_path)!r} not found: a Prune model needs its pruning plan")
        plan = load_plan(plan_path)
        net = apply_plan(net, plan, example_inputs)
    load_weights(net, model_dir / WEIGHTS)
    return net.eval(), plan
