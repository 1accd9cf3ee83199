"""Model directories: ``model.yml`` + safetensors weights (+ pruning plan JSON, + ONNX when quantized).

Nothing is pickled. A directory is self-describing: ``model.yml`` names the task, the registered
architecture and its keyword arguments, so the network is rebuilt from the registry, the pruning plan
(if any) is re-applied, and the weights are loaded into the result.

A directory is written as one unit (:func:`writing`, on :func:`slimkit._io.atomic_directory`): a kill
at any instant leaves the previous complete directory or the new one. Whether it may be written at
all is :func:`slimkit._outputs.check_target`'s rule (an existing model directory is replaced only
with ``overwrite``; a directory holding other files never). :func:`write_model_yml` is the only
writer of ``model.yml``; :func:`read_model_yml` checks every value it reads (types, ranges, sizes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from slimkit._checks import MAX_CLASSES, MAX_INPUT_SIDE, check_float, check_int
from slimkit._io import atomic_directory, atomic_write_text
from slimkit._outputs import check_target, listing

MODEL_YML = "model.yml"
WEIGHTS = "model.safetensors"
PLAN = "prune_plan.json"
ONNX_INT8 = "model.onnx"
ONNX_FP32 = "model_fp32.onnx"
QUANT_REPORT = "model.quant.json"
STATUSES = ("Normal", "Prune", "Quant")
TASKS = ("cls", "det", "seg")
MAX_YML_BYTES = 1 << 20
REQUIRED_KEYS = ("task", "architecture", "num_classes", "input_size", "status")
# Every file a model directory may hold: a directory with anything else is not replaced.
# (model_int8.onnx: the INT8 graph kept aside when the FP32 one ships as model.onnx.)
MODEL_FILES = frozenset(
    {MODEL_YML, WEIGHTS, PLAN, ONNX_INT8, ONNX_FP32, QUANT_REPORT, "model_int8.onnx"}
)


def foreign_files(path: Path) -> list[str]:
    """What in directory ``path`` is not part of a slimkit model directory (empty: it is one)."""
    names = listing(path)
    if MODEL_YML not in names:
        return names
    return [n for n in names if n not in MODEL_FILES]


def _checked(where: str, check: Any, *args: Any) -> Any:
    """``check(value, name, *args)`` with a wrong type reported as a corrupt file (ValueError)."""
    try:
        return check(*args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _check_sizes(info: dict[str, Any], where: str) -> None:
    """num_classes, input_size, labels, mean and std: types, finiteness and the size limits."""
    n = _checked(where, check_int, info["num_classes"], "num_classes", 1, MAX_CLASSES)
    size = info["input_size"]
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not isinstance(size, list) or len(size) != 2:
        raise ValueError(f"{where}: input_size must be [height, width], got {size!r}")
    for side in size:
        _checked(where, check_int, side, "input_size", 1, MAX_INPUT_SIDE)
    labels = info.get("labels")
    if labels is not None and (
        not isinstance(labels, list)
        or len(labels) != n
        or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels)
    ):
        raise ValueError(f"{where}: labels must be a list of {n} class names (num_classes)")
    for key in ("mean", "std"):
        values = info.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != 3:
            raise ValueError(f"{where}: {key} must be 3 numbers (R, G, B), got {values!r}")
        for v in values:
            _checked(where, check_float, v, key, 0.0 if key == "std" else None, None)
            if key == "std" and v == 0:
                raise ValueError(f"{where}: std must be > 0, got {values!r}")


def _check_info(info: Any, where: str) -> dict[str, Any]:
    missing = [k for k in REQUIRED_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise ValueError(f"{where} lacks required keys {missing}")
    if info["status"] not in STATUSES:
        raise ValueError(f"{where}: status must be one of {STATUSES}, got {info['status']!r}")
    if info["task"] not in TASKS:
        raise ValueError(f"{where}: task must be one of {TASKS}, got {info['task']!r}")
    if not isinstance(info["architecture"], str):
        raise ValueError(
            f"{where}: architecture must be a model name, got {info['architecture']!r}"
        )
    for key in ("model_kwargs", "metrics"):
        if not isinstance(info.get(key, {}), dict):
            raise ValueError(f"{where}: {key} must be a mapping, got {info[key]!r}")
    if not isinstance(info.get("model_class", ""), str):
        raise ValueError(f"{where}: model_class must be a class name, got {info['model_class']!r}")
    _check_sizes(info, where)
    return info


def read_model_yml(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``model.yml`` of a model directory.

    Raises:
        ValueError: the directory or file is missing, unreadable, lacks required keys, or holds a
            value out of range (``num_classes`` up to ``MAX_CLASSES``, input sides up to
            ``MAX_INPUT_SIDE``, as many labels as classes, finite mean and positive std).
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
    if path.stat().st_size > MAX_YML_BYTES:
        raise ValueError(f"{str(path)!r} is {path.stat().st_size} bytes: not a model.yml")
    try:
        info = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text: {e}") from None
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


def check_model_target(
    model_dir: str | os.PathLike[str],
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Whether a model directory may be written at ``model_dir`` (see :mod:`slimkit._outputs`).

    Raises:
        ValueError: ``model_dir`` is a file, overlaps one of ``sources``, holds a model directory
            and ``overwrite`` is False, or holds files a model directory does not (never replaced:
            nothing of the user's is ever deleted).
    """
    return check_target(
        model_dir, "model", overwrite=overwrite, sources=sources, foreign=foreign_files
    )


@contextmanager
def writing(
    model_dir: str | os.PathLike[str],
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Write a whole model directory as one unit; yields the temporary directory to fill.

    ``model_dir`` may be new or empty; an existing model directory is replaced as a whole only
    with ``overwrite`` (:func:`check_model_target`).
    """
    model_dir = check_model_target(model_dir, overwrite, sources)
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
