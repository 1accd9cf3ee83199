"""Export an ``nn.Module`` to a static-shape ONNX file, and check it against torch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit._utils import eval_mode

from .runtime import as_numpy, make_session

if TYPE_CHECKING:
    import torch

__all__ = ["check_onnx_matches_torch", "export_onnx"]

_EXPORTERS = ("auto", "torchscript", "dynamo")


def _example_tensor(module: torch.nn.Module, example: Any) -> torch.Tensor:
    """An example input tensor from a tensor/array or an input shape, on the module's device."""
    import torch

    if isinstance(example, torch.Tensor):
        tensor = example.detach()
    elif isinstance(example, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(example))
    elif isinstance(example, Sequence) and all(isinstance(d, int) and d > 0 for d in example):
        tensor = torch.randn(*example, generator=torch.Generator().manual_seed(0))
    else:
        raise TypeError(
            "example_input must be a tensor, a numpy array or an input shape such as "
            f"(1, 3, 224, 224), got {type(example).__name__}: {example!r}"
        )
    param = next(module.parameters(), None)
    if param is not None:
        tensor = tensor.to(param.device)
    return tensor.float() if tensor.is_floating_point() else tensor


def _default_output_names(outputs: Any) -> list[str]:
    """``["output"]`` for one tensor, ``["output0", "output1", ...]`` for a tuple/list."""
    if isinstance(outputs, (tuple, list)):
        return [f"output{i}" for i in range(len(outputs))]
    return ["output"]


def export_onnx(
    module: torch.nn.Module,
    example_input: Any,
    path: str | Path,
    opset: int = 17,
    output_names: Sequence[str] | None = None,
    input_name: str = "input",
    exporter: str = "auto",
) -> Path:
    """Export ``module`` (in eval mode) to ONNX with a static input shape.

    The TorchScript exporter is preferred ("auto"): on torch 2.13 it still works, exports in
    milliseconds at exactly the requested opset, folds constants (Conv+BN in eval mode) and names
    nodes after module paths (``/features.3/conv/Conv``), which makes ``exclude`` lists readable.
    If it fails or is gone, the ``torch.export``-based exporter (onnxscript, opset >= 18) is used.

    Args:
        module: The network; its train/eval mode is restored afterwards.
        example_input: An input tensor/array, or an input shape such as ``(1, 3, 224, 224)``.
        path: Output ``.onnx`` file (parent folders are created).
        opset: ONNX opset version.
        output_names: Names of the outputs (default ``output`` or ``output0..N``).
        input_name: Name of the single input.
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"``.

    Returns:
        The path written, validated by ``onnx.checker``.
    """
    import torch

    if exporter not in _EXPORTERS:
        raise ValueError(f"exporter must be one of {_EXPORTERS}, got {exporter!r}")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(module):
        example = _example_tensor(module, example_input)
        with torch.no_grad():
            outputs = module(example)
        names = list(output_names) if output_names else _default_output_names(outputs)
        _run_exporter(module, example, path, opset, input_name, names, exporter)
    _check_model(path)
    return path


def _run_exporter(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    input_name: str,
    output_names: list[str],
    exporter: str,
) -> None:
    import torch

    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    do_constant_folding=True,
                    input_names=[input_name],
                    output_names=output_names,
                )
            return
        except Exception:
            if exporter == "torchscript":
                raise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=max(opset, 18),
            optimize=True,
            verbose=False,
            input_names=[input_name],
            output_names=output_names,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path), external_data=False)


def _check_model(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


def check_onnx_matches_torch(
    module: torch.nn.Module,
    onnx_path: str | Path,
    example_input: Any,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Run ``module`` and the ONNX file on the same input and compare every output.

    Args:
        module: The network (run in eval mode; its mode is restored).
        onnx_path: The exported model.
        example_input: An input tensor/array or shape (as for `export_onnx`).
        rtol: Relative tolerance, scaled by each torch output's max |value|.
        atol: Absolute tolerance.

    Returns:
        The largest absolute difference over all outputs.

    Raises:
        ValueError: If the number of outputs differs or an output is off by more than
            ``atol + rtol * max|torch output|``.
    """
    import torch

    with eval_mode(module):
        example = _example_tensor(module, example_input)
        with torch.no_grad():
            expected = module(example)
    expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    session = make_session(onnx_path, threads=1)
    got = session.run(None, {session.get_inputs()[0].name: as_numpy(example)})
    if len(got) != len(expected):
        raise ValueError(f"ONNX model has {len(got)} outputs, torch module {len(expected)}")
    worst = 0.0
    for index, (ref, out) in enumerate(zip(expected, got, strict=True)):
        ref = as_numpy(ref)
        diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
        limit = atol + rtol * float(np.max(np.abs(ref), initial=0.0))
        if ref.shape != out.shape or diff > limit:
            raise ValueError(
                f"ONNX output {index} differs from torch: shapes {out.shape} vs {ref.shape}, "
                f"max abs diff {diff:.3g} > {limit:.3g}"
            )
        worst = max(worst, diff)
    return worst
