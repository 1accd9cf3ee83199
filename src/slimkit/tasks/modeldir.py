"""Model directories: ``model.yml`` + safetensors weights (+ pruning plan JSON, + ONNX when quantized).

Nothing is pickled. A directory is self-describing: ``model.yml`` names the task, the registered
architecture and its keyword arguments, so the network is rebuilt from the registry, the pruning plan
(if any) is re-applied, and the weights are loaded into the result.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

MODEL_YML = "model.yml"
WEIGHTS = "model.safetensors"
PLAN = "prune_plan.json"
ONNX_INT8 = "model.onnx"
ONNX_FP32 = "model_fp32.onnx"
STATUSES = ("Normal", "Prune", "Quant")


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as YAML to ``path`` through a temp file + rename (never a half-written file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".yml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    os.replace(tmp, path)


def read_model_yml(model_dir: str | os.PathLike) -> dict[str, Any]:
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
    required = ("task", "architecture", "num_classes", "input_size", "status")
    missing = [k for k in required if not isinstance(info, dict) or k not in info]
    if missing:
        raise ValueError(f"{str(path)!r} lacks required keys {missing}")
    if info["status"] not in STATUSES:
        raise ValueError(f"{str(path)!r}: status must be one of {STATUSES}, got {info['status']!r}")
    return info
