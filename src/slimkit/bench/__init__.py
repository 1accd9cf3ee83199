"""Benchmarks: latency of PyTorch modules and ONNX Runtime sessions.

onnxruntime is imported only when :func:`onnx_latency` runs.
"""

from slimkit.bench.latency import LatencyStats as LatencyStats
from slimkit.bench.latency import measure as measure
from slimkit.bench.latency import onnx_latency as onnx_latency
from slimkit.bench.latency import torch_latency as torch_latency
from slimkit.bench.report import benchmark_model as benchmark_model
from slimkit.bench.report import run_bench as run_bench

__all__ = [
    "benchmark_model",
    "LatencyStats",
    "measure",
    "onnx_latency",
    "run_bench",
    "torch_latency",
]
