"""Model cost counting: parameters, multiply-accumulates, FLOPs and on-disk size.

Conventions (the same everywhere in slimkit's reports):

* One multiply-accumulate (MAC) is one multiplication plus its addition; **FLOPs = 2 × MACs**.
* Only convolutions (``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``) and ``Linear`` layers are counted.
  Biases, normalisation, activations, pooling, element-wise additions and resizing are not: they are
  a small share of a vision CNN's cost and have no agreed convention.
* Counts are reported **per sample**: the total for ``example_inputs`` is divided by its batch size
  (the first dimension of the first input tensor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._utils import call_module, eval_mode

__all__ = [
    "count_flops",
    "count_macs",
    "count_params",
    "file_size",
    "format_bytes",
    "format_count",
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (a parameter shared between layers counts once; buffers such
    as BatchNorm running statistics are not parameters and do not count).

    Args:
        module: Any module.

    Returns:
        The total number of elements of ``module.parameters()``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"count_params expects an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())


def _layer_macs(layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one call of a counted layer, for the whole batch it was called with."""
    if isinstance(layer, _TRANSPOSED_CONVS):
        # Every input element is multiplied by (out_channels / groups) * prod(kernel) weights.
        per_input = layer.out_channels // layer.groups * _prod(layer.kernel_size)
        return int(inputs[0].numel()) * int(per_input)
    if isinstance(layer, _CONVS):
        # Every output element sums (in_channels / groups) * prod(kernel) products.
        per_output = layer.in_channels // layer.groups * _prod(layer.kernel_size)
        return _numel(output) * per_output
    if isinstance(layer, nn.Linear):
        return _numel(output) * layer.in_features  # = batch (all leading dims) * in * out
    raise AssertionError(f"no MAC rule for {type(layer).__name__}")


def _prod(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def _numel(output: Any) -> int:
    """Element count of a tensor or of the tensors in a (nested) tuple/list."""
    if isinstance(output, torch.Tensor):
        return output.numel()
    if isinstance(output, (tuple, list)):
        return sum(_numel(o) for o in output)
    return 0


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    """The positional arguments for ``module(*args)``; checks there is a batch dimension."""
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim == 0:
        raise TypeError(
            "example_inputs must be a tensor with a batch dimension, or a tuple/list of "
            f"positional inputs whose first is one; got {type(example_inputs).__name__}"
        )
    return args


def count_macs(module: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...]) -> int:
    """Multiply-accumulates of one forward pass, per sample.

    One MAC = one multiply plus its add (FLOPs = 2 × MACs, see :func:`count_flops`). Counted with
    forward hooks during one pass of ``module(*example_inputs)`` in eval mode without gradients:

    * convolution: output elements × (in_channels / groups) × prod(kernel_size);
    * transposed convolution: input elements × (out_channels / groups) × prod(kernel_size);
    * linear: batch (all leading dims) × in_features × out_features.

    Biases, normalisation, activations and pooling are not counted. A layer called twice counts
    twice. The model may return tensors, tuples or lists.

    Args:
        module: The model. Its training flags are restored afterwards.
        example_inputs: A tensor, or a tuple/list of positional inputs, whose first dimension is the
            batch; the total is divided by that batch size.

    Returns:
        MACs for a batch of one.
    """
    args = _as_args(example_inputs)
    batch = args[0].shape[0]
    if batch == 0:
        raise ValueError("example_inputs has batch size 0; pass at least one sample")
    total = 0

    def hook(layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        total += _layer_macs(layer, inputs, output)

    counted = (*_CONVS, *_TRANSPOSED_CONVS, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad(), eval_mode(module):
            call_module(module, args)
    finally:
        for handle in handles:
            handle.remove()
    return int(total // batch)


def count_flops(module: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...]) -> int:
    """FLOPs of one forward pass per sample: ``2 * count_macs(module, example_inputs)``."""
    return 2 * count_macs(module, example_inputs)


def file_size(path: str | os.PathLike[str]) -> int:
    """Size on disk in bytes: of a file, or the sum over the files under a directory (recursive;
    symbolic links are not followed).

    Args:
        path: A file or a directory (e.g. a saved model directory).

    Returns:
        The size in bytes.
    """
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    raise FileNotFoundError(f"file_size: no file or directory at {str(p)!r}")


def _format_scaled(n: float, base: float, units: tuple[str, ...], sep: str, precision: int) -> str:
    """Formats ``n`` in the largest unit that keeps the rounded mantissa below ``base``."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        raise TypeError(f"expected an int or float, got {type(n).__name__}")
    value, exponent = float(n), 0
    while exponent < len(units) - 1 and round(abs(value), precision) >= base:
        value /= base
        exponent += 1
    text = str(int(value)) if exponent == 0 and value.is_integer() else f"{value:.{precision}f}"
    unit = units[exponent]
    return f"{text}{sep}{unit}" if unit else text


def format_count(n: float, precision: int = 2) -> str:
    """Human-readable count with decimal units: ``1234567 -> "1.23M"`` (K, M, G, T; below 1000 the
    number itself)."""
    return _format_scaled(n, 1000.0, ("", "K", "M", "G", "T"), "", precision)


def format_bytes(n: float, precision: int = 2) -> str:
    """Human-readable size with binary units: ``1536 -> "1.50 KiB"`` (1 KiB = 1024 B; below 1 KiB
    ``"512 B"``)."""
    return _format_scaled(n, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB"), " ", precision)
