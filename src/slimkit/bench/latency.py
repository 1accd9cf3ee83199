"""Latency measurement: a generic timer, PyTorch modules and ONNX Runtime sessions.

Each sample times one call with :func:`time.perf_counter` after ``warmup`` untimed calls. The
statistics are over the samples; no outlier is dropped. onnxruntime is imported only when
:func:`onnx_latency` is called.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit._utils import eval_mode, make_ort_session

__all__ = ["LatencyStats", "measure", "onnx_latency", "torch_latency"]

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Summary of one latency measurement (milliseconds per call).

    Attributes:
        median_ms: Median.
        mean_ms: Mean.
        p10_ms: 10th percentile (linear interpolation).
        p90_ms: 90th percentile (linear interpolation).
        std_ms: Population standard deviation.
        runs: Number of timed calls.
        warmup: Number of untimed calls before them.
        threads: Intra-op threads used, or None when not controlled.
        device: Where it ran, e.g. ``"cpu"``, ``"cuda:0"``.
    """

    median_ms: float
    mean_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    runs: int
    warmup: int
    threads: int | None
    device: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON/YAML ready)."""
        return dataclasses.asdict(self)


def _check_counts(warmup: int, runs: int) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an integer >= 1, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")


def measure(
    fn: Callable[[], Any],
    warmup: int = 5,
    runs: int = 20,
    sync: Callable[[], Any] | None = None,
    *,
    threads: int | None = None,
    device: str = "cpu",
) -> LatencyStats:
    """Times ``fn()``: ``warmup`` untimed calls, then ``runs`` calls timed one by one.

    Args:
        fn: The work to time, called with no arguments.
        warmup: Untimed calls first (lazy initialisation, caches, allocator).
        runs: Timed calls; one sample each.
        sync: Called after each ``fn()`` inside the timed region, for asynchronous devices (e.g.
            ``torch.cuda.synchronize``).
        threads: Recorded in the result only.
        device: Recorded in the result only.

    Returns:
        The statistics of the ``runs`` samples.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _check_counts(warmup, runs)
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = perf_counter()
        fn()
        if sync is not None:
            sync()
        samples[i] = perf_counter() - start
    ms = samples * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return LatencyStats(
        median_ms=float(median),
        mean_ms=float(ms.mean()),
        p10_ms=float(p10),
        p90_ms=float(p90),
        std_ms=float(ms.std()),
        runs=runs,
        warmup=warmup,
        threads=threads,
        device=device,
    )


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(
            f"input_shape must be a sequence of positive ints incl. the batch, e.g. (1, 3, 224, "
            f"224); got {input_shape!r}"
        )
    return shape


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Sets torch's intra-op thread count for the block and restores the previous one."""
    previous = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """The module itself when its tensors are on ``device``, else a copy moved there."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def torch_latency(
    module: nn.Module,
    input_shape: Sequence[int],
    threads: int | None = 1,
    warmup: int = 5,
    runs: int = 20,
    device: str | torch.device = "cpu",
) -> LatencyStats:
    """Latency of ``module(x)`` for a random ``x`` of ``input_shape``, in eval and inference mode.

    Args:
        module: The model. It is not modified: training flags are restored, and a module whose
            tensors are not on ``device`` is timed as a moved copy.
        input_shape: Input shape including the batch, e.g. ``(1, 3, 224, 224)``.
        threads: ``torch.set_num_threads`` value during the measurement (the previous value is
            restored afterwards); None keeps the current one.
        warmup: Untimed calls first.
        runs: Timed calls.
        device: ``"cpu"`` or a CUDA device; on CUDA each call is followed by
            ``torch.cuda.synchronize``.

    Returns:
        The statistics, with the thread count and device used.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    shape = _check_shape(input_shape)
    _check_counts(warmup, runs)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    net = _on_device(module, dev)
    with _torch_threads(threads) as used_threads, eval_mode(net), torch.inference_mode():
        x = torch.randn(shape, device=dev)
        return measure(lambda: net(x), warmup, runs, sync, threads=used_threads, device=str(dev))


def _ort_feed(session: Any, input_shape: Sequence[int] | None) -> dict[str, np.ndarray]:
    """A random input for a single-input session, its shape from ``input_shape`` or the model."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"onnx_latency supports single-input models; this one has {names}")
    spec = inputs[0]
    if spec.type not in _ORT_DTYPES:
        raise ValueError(f"unsupported input type {spec.type} for input {spec.name!r}")
    if input_shape is None:
        # A symbolic leading (batch) dimension is taken as 1; any other must be given.
        dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(spec.shape)]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(
                f"input {spec.name!r} has dynamic shape {spec.shape}; pass input_shape=(...)"
            )
        input_shape = dims
    shape = _check_shape(input_shape)
    dtype = _ORT_DTYPES[spec.type]
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        data = rng.standard_normal(shape).astype(dtype)
    else:
        data = rng.integers(0, 8, size=shape).astype(dtype)
    return {spec.name: data}


def onnx_latency(
    onnx_path: str | os.PathLike[str],
    input_shape: Sequence[int] | None = None,
    threads: int = 1,
    warmup: int = 5,
    runs: int = 20,
    providers: Sequence[str] | None = None,
) -> LatencyStats:
    """Latency of an ONNX model under ONNX Runtime (FP32 or QDQ INT8 alike).

    The session uses ``intra_op_num_threads=threads``, ``inter_op_num_threads=1``, sequential
    execution and all graph optimisations (``ORT_ENABLE_ALL``).

    Args:
        onnx_path: The ``.onnx`` file; the model must have a single input.
        input_shape: Input shape incl. batch; None reads it from the model (a symbolic batch
            dimension becomes 1, other symbolic dimensions raise).
        threads: Intra-op threads.
        warmup: Untimed runs first.
        runs: Timed runs.
        providers: ONNX Runtime execution providers; None means ``["CPUExecutionProvider"]``.

    Returns:
        The statistics; ``device`` is the first provider in use without its suffix, e.g. ``"cpu"``.
    """
    path = os.fspath(onnx_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"onnx_latency: no ONNX file at {path!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    _check_counts(warmup, runs)
    session = make_ort_session(path, threads=threads, providers=providers)
    feed = _ort_feed(session, input_shape)
    device = session.get_providers()[0].removesuffix("ExecutionProvider").lower()
    return measure(lambda: session.run(None, feed), warmup, runs, threads=threads, device=device)
