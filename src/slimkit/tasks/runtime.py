"""Run a task's ONNX model (Quant models, INT8 evaluation) with ONNX Runtime on torch batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slimkit.quant import OrtModel


class OrtRunner:
    """Runs an ONNX model with ONNX Runtime on torch batches (batch split when the model is static).

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (None: onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.model = OrtModel(str(path), threads=threads)
        self.path = Path(path)

    def run_torch(self, images: torch.Tensor) -> Any:
        """The model's outputs on ``images`` as tensors (one tensor, or a tuple of them)."""
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
