"""Benchmarks: latency of PyTorch modules and ONNX Runtime sessions; tables of model directories.

onnxruntime is imported only when :func:`onnx_latency` runs. ``run_bench`` and ``benchmark_model``
(:mod:`slimkit.bench.report`) need the task and pruning layers (torch-pruning): they load on first
use, so that ``import slimkit.bench`` stays light.
"""

from typing import TYPE_CHECKING, Any

from slimkit.bench.latency import LatencyStats as LatencyStats
from slimkit.bench.latency import measure as measure
from slimkit.bench.latency import onnx_latency as onnx_latency
from slimkit.bench.latency import torch_latency as torch_latency

if TYPE_CHECKING:
    from slimkit.bench.report import benchmark_model as benchmark_model
    from slimkit.bench.report import run_bench as run_bench

_REPORT_NAMES = ("benchmark_model", "run_bench")

__all__ = [
    "benchmark_model",
    "LatencyStats",
    "measure",
    "onnx_latency",
    "run_bench",
    "torch_latency",
]


def __getattr__(name: str) -> Any:
    if name in _REPORT_NAMES:  # lazy: slimkit.bench.report imports torch-pruning (see above)
        from slimkit.bench import report

        return getattr(report, name)
    raise AttributeError(f"module 'slimkit.bench' has no attribute {name!r}")
