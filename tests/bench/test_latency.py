"""Latency measurement: deterministic statistics, then smoke runs of the torch and ORT paths."""

import math
import subprocess
import sys
import time
import warnings

import onnx
import pytest
import torch
from torch import nn

import slimkit.bench.latency as latency
from slimkit.bench import LatencyStats, measure, onnx_latency, torch_latency

INPUT_SHAPE = (1, 3, 16, 16)


def tiny_conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )


def test_measure_statistics_with_a_fake_clock(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(latency, "perf_counter", lambda: clock[0])
    warmup_ms = [100.0, 100.0, 100.0]  # must not reach the statistics
    timed_ms = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 10.0, 4.0, 8.0, 6.0]
    durations = iter(warmup_ms + timed_ms)
    calls = {"fn": 0, "sync": 0}

    def fn():
        calls["fn"] += 1
        clock[0] += next(durations) / 1e3

    def sync():
        calls["sync"] += 1

    stats = measure(fn, warmup=3, runs=10, sync=sync)
    assert calls == {"fn": 13, "sync": 13}
    # Samples 1..10 ms: median 5.5, mean 5.5; linear percentiles at positions 0.9 and 8.1 of the
    # sorted samples: 1.9 and 9.1; population std sqrt(mean((k - 5.5)^2)) = sqrt(8.25).
    assert stats.median_ms == pytest.approx(5.5)
    assert stats.mean_ms == pytest.approx(5.5)
    assert stats.p10_ms == pytest.approx(1.9)
    assert stats.p90_ms == pytest.approx(9.1)
    assert stats.std_ms == pytest.approx(math.sqrt(8.25))
    assert (stats.runs, stats.warmup, stats.threads, stats.device) == (10, 3, None, "cpu")


def test_measure_real_sleeps_are_ordered_and_bounded_below():
    sleeps = iter([0.0, 0.001, 0.004, 0.001, 0.004, 0.001])  # warmup 1, then 5 timed
    stats = measure(lambda: time.sleep(next(sleeps)), warmup=1, runs=5)
    assert stats.runs == 5
    assert stats.p10_ms >= 1.0  # sleep() waits at least as long as asked
    assert stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.median_ms >= 1.0 and stats.p90_ms >= 4.0  # sorted: 1, 1, 1, 4, 4 ms
    assert stats.std_ms > 0


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="runs"):
        measure(lambda: None, runs=0)
    with pytest.raises(ValueError, match="warmup"):
        measure(lambda: None, warmup=-1)
    with pytest.raises(TypeError, match="callable"):
        measure(None)


def _check_consistent(stats: LatencyStats, runs: int) -> None:
    assert stats.runs == runs
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0 and stats.std_ms >= 0
    assert set(stats.to_dict()) == {
        "median_ms", "mean_ms", "p10_ms", "p90_ms", "std_ms", "runs", "warmup", "threads", "device"
    }  # fmt: skip


def test_torch_latency_restores_threads_and_mode():
    net = tiny_conv_net().train()
    before = torch.get_num_threads()
    stats = torch_latency(net, INPUT_SHAPE, threads=2, warmup=1, runs=3)
    _check_consistent(stats, runs=3)
    assert (stats.threads, stats.device, stats.warmup) == (2, "cpu", 1)
    assert torch.get_num_threads() == before
    assert net.training and net[1].training
    with pytest.raises(ValueError, match="input_shape"):
        torch_latency(net, (1, 3, 0, 16))
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny_conv_net().eval(), (torch.randn(INPUT_SHAPE),), str(path), opset_version=17
        )
    return path


def test_onnx_latency_reads_shape_from_model(onnx_file):
    stats = onnx_latency(onnx_file, threads=1, warmup=1, runs=3)
    _check_consistent(stats, runs=3)
    assert (stats.threads, stats.device) == (1, "cpu")


def _with_symbolic_dims(src, dst, dims):
    model = onnx.load(str(src))
    for value in (model.graph.input[0], model.graph.output[0]):
        for index, name in dims.items():
            value.type.tensor_type.shape.dim[index].dim_param = name
    onnx.save(model, str(dst))
    return dst


def test_onnx_latency_symbolic_dims(onnx_file, tmp_path):
    batch = _with_symbolic_dims(onnx_file, tmp_path / "batch.onnx", {0: "batch"})
    _check_consistent(onnx_latency(batch, warmup=0, runs=2), runs=2)  # batch taken as 1
    _check_consistent(onnx_latency(batch, input_shape=(2, 3, 16, 16), warmup=0, runs=2), runs=2)
    height = _with_symbolic_dims(onnx_file, tmp_path / "height.onnx", {2: "h"})
    with pytest.raises(ValueError, match="pass input_shape"):
        onnx_latency(height, runs=1)
    with pytest.raises(FileNotFoundError):
        onnx_latency(tmp_path / "missing.onnx")


def test_importing_bench_does_not_import_onnxruntime():
    code = "import sys, slimkit.bench; sys.exit('onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
