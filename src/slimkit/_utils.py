"""Small helpers shared by several packages (module modes and calls, sizes, ONNX Runtime sessions).

Atomic file and directory writes live in :mod:`slimkit._io`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "agg_figure",
    "as_hw",
    "call_module",
    "eval_mode",
    "keep_training_modes",
    "make_ort_session",
]


@contextmanager
def keep_training_modes(module: nn.Module) -> Iterator[None]:
    """Restores the ``training`` flag of ``module`` and of every submodule on exit.

    Unlike ``module.train(was_training)``, a model whose submodules were in mixed modes (e.g. frozen
    BatchNorm layers in eval mode inside a training model) gets exactly its own flags back.
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Puts every submodule in eval mode (no BatchNorm statistic updates), then restores them."""
    with keep_training_modes(module):
        module.eval()
        yield


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """torch's CPU random generator seeded ``seed`` inside the block; the caller's state after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    """``obj.<name>`` is ``value`` inside the block and what it was after it (errors included)."""
    previous = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, previous)


def call_module(module: nn.Module, inputs: Any) -> Any:
    """Run ``module`` on its inputs, as every slimkit API takes them.

    Args:
        module: The module to call.
        inputs: A tensor (``module(x)``), a tuple/list of positional inputs (``module(*inputs)``)
            or a mapping of keyword inputs (``module(**inputs)``); anything else is passed as the
            single argument.

    Returns:
        Whatever the module returns.
    """
    if isinstance(inputs, torch.Tensor):
        return module(inputs)
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def as_hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``(height, width)`` from an int (a square) or a ``(height, width)`` pair of positive ints.

    Args:
        size: The size to normalise.
        name: How error messages call the argument (e.g. ``"input_size"``).

    Raises:
        ValueError: ``size`` is not a positive int or a pair of positive ints.
    """

    def integral(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    pair: tuple[Any, ...] = ()
    if integral(size):
        pair = (size, size)
    elif not isinstance(size, (str, bytes)):
        try:
            pair = tuple(size)  # type: ignore[arg-type]  # anything iterable; checked below
        except TypeError:
            pass
    if len(pair) != 2 or not all(integral(v) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


_OPTIMIZATION_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "none": "ORT_DISABLE_ALL",
}


def make_ort_session(
    model: str | Path | bytes,
    threads: int | None = None,
    optimize: str = "all",
    providers: Sequence[str] | None = None,
    optimized_model_path: str | Path | None = None,
) -> Any:
    """Create an ``onnxruntime.InferenceSession`` (sequential execution, CPU provider by default).

    Args:
        model: Path to an ONNX file, or serialised model bytes.
        threads: Intra-op threads (None: onnxruntime's default, all cores); inter-op is 1 when set.
        optimize: ``"all"``, ``"extended"``, ``"basic"`` or ``"none"`` graph optimisation.
        providers: Execution providers; None means ``["CPUExecutionProvider"]``.
        optimized_model_path: Where onnxruntime writes the optimised graph (None: nowhere).

    Returns:
        The session.

    Raises:
        ValueError: ``optimize`` is not one of the levels above, or ONNX Runtime cannot load the
            model (a missing, empty or corrupt file, an invalid graph).
    """
    # onnxruntime is heavy and only needed by ORT paths; importing slimkit must stay cheap.
    import onnxruntime as ort

    if optimize not in _OPTIMIZATION_LEVELS:
        raise ValueError(
            f"optimize must be one of {sorted(_OPTIMIZATION_LEVELS)}, got {optimize!r}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[optimize]
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            source, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
    except _ort_load_errors() as e:
        what = "the ONNX model bytes" if isinstance(model, bytes) else repr(str(model))
        raise ValueError(f"ONNX Runtime cannot load {what}: {' '.join(str(e).split())}") from e


def _ort_load_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception types for a model file it cannot load (missing, empty, garbage,
    an invalid graph, an operator it lacks): the user's file is at fault, not slimkit."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ["Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf"]
    names += ["InvalidGraph", "NotImplemented"]
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def agg_figure(width: float, height: float, dpi: int = 100) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas: draws headless, leaves pyplot's backend alone.

    Use ``fig.subplots()`` / ``fig.add_subplot()`` and ``fig.savefig(path)``; no ``close`` needed.
    """
    # matplotlib is heavy and only needed for plots; importing slimkit must stay cheap.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig
