"""Tests of slimkit.bench.report (benchmark rows, ratios, bench.json/bench.md) and bench.plots."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimkit.bench.plots import pareto_front, plot_pareto, plot_size_metric
from slimkit.bench.report import (
    ENGINES,
    ROW_FIELDS,
    add_ratios,
    benchmark_model,
    format_table,
    onnx_macs,
    onnx_params,
    run_bench,
)
from slimkit.prune.counting import count_macs, count_params

MACHINE_FIELDS = ("cpu", "cpu_count", "threads", "torch", "onnxruntime", "date", "cuda_device")
NAMES = ["orig", "pruned", "int8"]
STATS_FIELDS = ("median_ms", "p10_ms", "p90_ms", "runs", "warmup", "threads")


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run_bench over a tiny MobileNetV2: the original, a pruned and an INT8 model directory."""
    import slimkit.cls
    from slimkit import slim
    from slimkit.data.generate import make_dataset
    from slimkit.tasks.factory import open_split

    root = tmp_path_factory.mktemp("bench")
    make_dataset("cls", root / "data", num_train=8, num_val=8, image_size=32)
    model = slimkit.cls.MobileNetV2(num_classes=4, input_size=32, width_mult=0.25)
    model.save(root / "orig")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        slim.prune(root / "orig", 0.5, root / "pruned")
        val = open_split("cls", root / "data", "val")
        slim.export_quant_model(
            model, val, batch_size=1, batch_num=2, save_dir=root / "int8", keep_fp32_if_slower=False
        )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = run_bench(
            [root / "orig", root / "pruned", root / "int8"],
            root / "data",
            root / "out",
            threads=1,
            runs=3,
            names=NAMES,
            warmup=1,
            title="tiny bench",
        )
    return {"root": root, "result": result, "stdout": buf.getvalue(), "out": root / "out"}


class TinyNet(nn.Module):
    """Conv, depthwise conv, transposed conv, Linear on 3-D input (MatMul) and on 2-D (Gemm)."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.tok = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.dw(torch.relu(self.bn(self.c1(x)))))
        return self.fc(self.tok(x.flatten(2).transpose(1, 2)).mean(1))


def _export(net: nn.Module, path: Path, batch: int, dynamic: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            torch.randn(batch, 3, 16, 16),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}} if dynamic else None,
        )
    return path


def _row(name: str, metric: float | None, ms: dict[str, float], size: int = 1000) -> dict:
    latency = {e: None for e in ENGINES}
    for engine, value in ms.items():
        latency[engine] = {"median_ms": value, "p10_ms": value, "p90_ms": value}
    cpu = [(v, e) for e, v in ms.items() if e.startswith("cpu")]
    best = {"engine": min(cpu)[1], "median_ms": min(cpu)[0]} if cpu else None
    return {
        "name": name,
        "variant": f"{name} (Normal)",
        "architecture": "mobilenetv2",
        "status": "Normal",
        "metric_name": "acc1",
        "metric": metric,
        "size_bytes": size,
        "params": 2_200_000,
        "flops": 600_000_000,
        "latency": latency,
        "best_cpu": best,
        "gpu_note": "n/a (no CUDA)",
    }


# -- run_bench end to end --------------------------------------------------------------------------
def test_bench_json_has_every_field(bench_run: dict[str, Any]) -> None:
    data = json.loads((bench_run["out"] / "bench.json").read_text())
    assert {"format_version", "machine", "settings", "baseline", "rows", "files"} <= set(data)
    assert all(k in data["machine"] for k in MACHINE_FIELDS)
    assert data["machine"]["threads"] == 1 and data["settings"]["runs"] == 3
    assert [r["name"] for r in data["rows"]] == NAMES
    assert [r["status"] for r in data["rows"]] == ["Normal", "Prune", "Quant"]
    for row in data["rows"]:
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert set(row["latency"]) == set(ENGINES)
        assert row["latency"]["cpu_ort_fp32"]["runs"] == 3
        for stats in filter(None, row["latency"].values()):
            assert all(k in stats for k in STATS_FIELDS)
            assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
        assert row["size_bytes"] > 0 and row["onnx_fp32_bytes"] > 0 and row["params"] > 0
        assert row["flops"] == 2 * row["macs"] > 0
        assert 0.0 <= row["metric"] <= 1.0 and row["metric_name"] == "acc1"
    orig, pruned, int8 = data["rows"]
    for row in (orig, pruned):  # torch nets: eager timing, no INT8 graph
        assert row["size_file"] == "model.safetensors" and row["complexity_source"] == "torch"
        assert row["latency"]["cpu_torch"] is not None and row["latency"]["cpu_ort_int8"] is None
    # export_quant_model records the FP32 net's params/MACs in model.yml; the report uses them
    assert int8["size_file"] == "model.onnx" and int8["complexity_source"] == "model.yml"
    assert (int8["params"], int8["macs"]) == (orig["params"], orig["macs"])
    assert int8["latency"]["cpu_torch"] is None and int8["latency"]["cpu_ort_int8"] is not None
    assert int8["macs"] == orig["macs"]  # counted on the FP32 ONNX graph
    assert pruned["macs"] < orig["macs"] and pruned["params"] < orig["params"]


def test_bench_ratios(bench_run: dict[str, Any]) -> None:
    orig, pruned, int8 = (r["ratios"] for r in bench_run["result"]["rows"])
    for key in ("size", "params", "flops", "cpu_torch", "cpu_ort_fp32", "cpu_best"):
        assert orig[key] == pytest.approx(1.0)  # the baseline against itself
    assert orig["cpu_ort_int8"] is None and orig["metric_delta"] == 0.0
    assert pruned["flops"] < 1.0 and pruned["size"] < 1.0
    assert int8["size"] < 0.6 and int8["flops"] == pytest.approx(1.0)
    assert int8["params"] == pytest.approx(1.0)  # like for like: both ONNX graph counts
    assert int8["cpu_torch"] is None and int8["cpu_ort_fp32"] is not None


def test_bench_markdown_table_and_stdout(bench_run: dict[str, Any]) -> None:
    md = (bench_run["out"] / "bench.md").read_text(encoding="utf-8")
    assert md.startswith("# tiny bench")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "模型 (model)" in table[0] and "裁剪情况 (variant)" in table[0]
    assert "模型大小 (size)" in table[0] and "acc1 (%)" in table[0]
    assert len(table) == 2 + 3  # header, separator, one row per model
    variants = ("orig (Normal)", "pruned (Prune)", "int8 (Quant)")
    for line, variant in zip(table[2:], variants, strict=True):
        assert line.startswith("| MobileNetV2 | " + variant)
    assert "1.00×" in table[2] and "†" not in table[2] and "†" not in table[4]
    assert table[0] in bench_run["stdout"] and table[4] in bench_run["stdout"]  # printed


def test_bench_plots_are_written(bench_run: dict[str, Any]) -> None:
    files = bench_run["result"]["files"]
    for key in ("pareto", "size_metric"):
        path = bench_run["out"] / files[key]
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


def test_benchmark_model_without_dataset_skips_metric(bench_run: dict[str, Any]) -> None:
    row = benchmark_model(bench_run["root"] / "orig", None, runs=1, warmup=0, gpu=False)
    assert row["metric"] is None and row["metrics"] == {}
    assert row["latency"]["gpu_torch"] is None and row["gpu_note"] == "n/a (disabled)"
    assert row["best_cpu"]["engine"] in ("cpu_torch", "cpu_ort_fp32")


# -- bad input -------------------------------------------------------------------------------------
def test_missing_model_dir_is_a_clear_error(bench_run: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope.*does not exist"):
        run_bench([bench_run["root"] / "orig", missing], bench_run["root"] / "data", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        benchmark_model(missing, None)
    broken = tmp_path / "int8_without_fp32"
    shutil.copytree(bench_run["root"] / "int8", broken)
    (broken / "model_fp32.onnx").unlink()
    with pytest.raises(ValueError, match="model_fp32.onnx.*not found"):
        benchmark_model(broken, None)
    assert not (tmp_path / "bench.json").exists()


def test_inconsistent_arguments_are_errors(bench_run: dict[str, Any], tmp_path: Path) -> None:
    orig, data = bench_run["root"] / "orig", bench_run["root"] / "data"
    with pytest.raises(ValueError, match="2 names for 1 model"):
        run_bench([orig], data, tmp_path, names=["a", "b"])
    with pytest.raises(ValueError, match="baseline"):
        run_bench([orig], data, tmp_path, baseline=3)
    with pytest.raises(ValueError, match="runs"):
        run_bench([orig], data, tmp_path, runs=0)
    with pytest.raises(ValueError, match="non-empty list"):
        run_bench([], data, tmp_path)
    with pytest.raises(ValueError, match="split"):
        run_bench([orig], data, tmp_path, split="test")
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        benchmark_model(orig, None, warmup=-1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="gpu=True"):
            run_bench([orig], data, tmp_path, gpu=True)
    assert not (tmp_path / "bench.json").exists()


# -- table and ratios on synthetic rows ------------------------------------------------------------
def test_format_table_columns_and_gpu_note() -> None:
    rows = [
        _row("base", 0.975, {"cpu_torch": 40.0, "cpu_ort_fp32": 30.0}, size=13_000_000),
        _row("int8", 0.97, {"cpu_ort_fp32": 30.0, "cpu_ort_int8": 12.0}, size=3_300_000),
    ]
    add_ratios(rows, baseline=0)
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and lines[1].count("|") == lines[0].count("|")
    assert "Top1准确率 acc1 (%)" in lines[0] and "GPU torch (ms)" in lines[0]
    assert "97.50" in lines[2] and "n/a (no CUDA)" in lines[2] and "12.40 MiB" in lines[2]
    assert "0.40× (ORT INT8)" in lines[3]  # 12 ms INT8 vs the baseline's best, 30 ms
    assert rows[1]["ratios"]["cpu_ort_fp32"] == 1.0 and rows[1]["ratios"]["cpu_torch"] is None
    assert rows[1]["ratios"]["metric_delta"] == pytest.approx(-0.005)


def test_format_table_mixed_metrics_and_escaping() -> None:
    a, b = _row("a|b", 0.5, {"cpu_torch": 1.0}), _row("seg", None, {"cpu_torch": 2.0})
    b["metric_name"] = "miou"
    a["variant"] = "a|b"
    table = format_table([a, b])
    assert "| metric (%) |" in table and "50.00 (acc1)" in table and "a\\|b" in table
    with pytest.raises(ValueError, match="at least one"):
        format_table([])
    with pytest.raises(ValueError, match="baseline"):
        add_ratios([a, b], baseline=2)


# -- ONNX counting ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("batch", "dynamic"), [(1, False), (2, False), (2, True)])
def test_onnx_macs_equals_count_macs(tmp_path: Path, batch: int, dynamic: bool) -> None:
    net = TinyNet(bn=True)
    path = _export(net, tmp_path / "tiny.onnx", batch, dynamic)
    assert onnx_macs(path) == count_macs(net, torch.randn(1, 3, 16, 16)) > 0


def test_onnx_params_equals_count_params(tmp_path: Path) -> None:
    net = TinyNet(bn=False)  # a BN is folded into its conv on export, changing the count
    assert onnx_params(_export(net, tmp_path / "tiny.onnx", 1, False)) == count_params(net)


def test_onnx_counting_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        onnx_macs(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="cannot read ONNX"):
        onnx_params(tmp_path / "bad.onnx")


# -- plots -----------------------------------------------------------------------------------------
def test_pareto_front() -> None:
    points = [(10.0, 0.9), (5.0, 0.8), (7.0, 0.7), (20.0, 0.95), (5.0, 0.6)]
    assert pareto_front(points) == [1, 0, 3]
    assert pareto_front([]) == []


def test_plots_write_png_even_without_data(tmp_path: Path) -> None:
    rows = [_row("a", 0.9, {"cpu_torch": 10.0}), _row("b", 0.8, {"cpu_ort_int8": 4.0}, size=300)]
    empty = [_row("c", None, {})]
    for fn in (plot_pareto, plot_size_metric):
        for name, data in (("full", rows), ("empty", empty)):
            path = fn(data, tmp_path / "sub" / f"{fn.__name__}_{name}.png")
            assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path: Path) -> None:
    code = (
        "import matplotlib; matplotlib.use('svg'); "
        "from slimkit.bench.plots import plot_pareto; "
        f"plot_pareto([], {str(tmp_path / 'p.png')!r}); print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_table_rows_use_the_registry_display_name() -> None:
    row = _row("base", 0.9, {"cpu_torch": 1.0})
    add_ratios([row], baseline=0)
    for arch, shown in (("yolov3_mobilenetv1", "YOLOv3-MobileNetV1"), ("my_net", "my_net")):
        row["architecture"] = arch
        assert format_table([row]).splitlines()[2].startswith(f"| {shown} |")
