"""Benchmark model directories and write the PaddleX-style comparison table, JSON and plots.

``benchmark_model`` measures one Normal / Prune / Quant model directory: on-disk size, parameters,
FLOPs, the task metric and batch-1 latency on every engine that applies (torch eager FP32, ONNX
Runtime FP32, ONNX Runtime INT8; torch eager on CUDA when available). ``run_bench`` runs it over
several directories, adds ratios against a baseline row and writes ``bench.json``, ``bench.md`` and
two plots. ``onnx_macs`` / ``onnx_params`` count an ONNX graph, for Quant models that have no torch
net.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from slimkit._io import atomic_file, atomic_write_json, atomic_write_text
from slimkit._outputs import check_target
from slimkit.bench.latency import onnx_latency, torch_latency
from slimkit.bench.plots import plot_pareto, plot_size_metric
from slimkit.models import list_models, model_spec
from slimkit.prune.counting import count_macs, count_params, file_size, format_bytes, format_count
from slimkit.quant import export_onnx
from slimkit.tasks import modeldir
from slimkit.tasks.factory import open_split
from slimkit.tasks.loading import load_model
from slimkit.tasks.logging import log

BENCH_FORMAT_VERSION = 1
CPU_ENGINES = ("cpu_torch", "cpu_ort_fp32", "cpu_ort_int8")
ENGINES = (*CPU_ENGINES, "gpu_torch")
ENGINE_LABELS = {
    "cpu_torch": "torch FP32",
    "cpu_ort_fp32": "ORT FP32",
    "cpu_ort_int8": "ORT INT8",
    "gpu_torch": "torch CUDA",
}
METRIC_LABELS = {"acc1": "Top1准确率 acc1", "bbox_map": "MAP bbox_map", "miou": "mIOU miou"}
NO_CUDA = "n/a (no CUDA)"
ROW_FIELDS = tuple(
    "name variant model_dir architecture model_class task status input_size metric_name metric "
    "metrics size_file size_bytes onnx_fp32_bytes params onnx_params macs flops complexity_source "
    "latency gpu_note best_cpu ratios".split()
)


# -- ONNX graph counting ---------------------------------------------------------------------------
def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def _fix_batch_dims(model: Any) -> int:
    """Set symbolic leading (batch) dims of the graph inputs to 1; return the static batch size."""
    inits = {i.name for i in model.graph.initializer}
    batch = 1
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = int(dims[0].dim_value)
        else:
            dims[0].Clear()
            dims[0].dim_value = 1
    return batch


def _shape_table(graph: Any) -> dict[str, list[int | None]]:
    """Static shapes (None for unknown dims) of every named value in an inferred graph."""
    table: dict[str, list[int | None]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            table[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in graph.initializer:
        table[init.name] = list(init.dims)
    return table


def _node_macs(node: Any, shapes: dict[str, list[int | None]]) -> int:
    """Multiply-accumulates of one Conv / ConvTranspose / Gemm / MatMul node (0 for other ops)."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    names = [node.input[0], node.input[1], node.output[0]]
    known = [shapes.get(n) for n in names]
    if any(s is None or None in s for s in known):
        raise ValueError(
            f"ONNX node {node.name or op!r} ({op}) has unknown shapes after shape inference; "
            "export the model with static input height and width"
        )
    a, b, out = (cast("list[int]", s) for s in known)
    if op == "Conv":  # W: [Cout, Cin/g, k...]
        return _prod(out) * _prod(b[1:])
    if op == "ConvTranspose":  # W: [Cin, Cout/g, k...]
        return _prod(a) * _prod(b[1:])
    if op == "Gemm":
        attrs = {at.name: at.i for at in node.attribute}
        k = a[0] if attrs.get("transA", 0) else a[-1]
        return _prod(out) * int(k)
    return _prod(out) * int(a[-1])  # MatMul: [..., M, K] @ [..., K, N]


def onnx_macs(path: str | os.PathLike) -> int:
    """Per-sample multiply-accumulates of the Conv/ConvTranspose/Gemm/MatMul nodes of an ONNX model.

    Shapes come from ONNX shape inference with a symbolic batch fixed to 1; a static batch ``B``
    divides the total by ``B``. Other ops (BN, activations, adds) are not counted, as in
    ``slimkit.prune.counting.count_macs``.

    Raises:
        ValueError: the file is missing or unreadable, or a counted node's shape is not static.
    """
    import onnx  # heavy: loaded only when an ONNX graph is counted

    graph_model = _load_onnx(path)
    batch = _fix_batch_dims(graph_model)
    try:
        inferred = onnx.shape_inference.infer_shapes(graph_model, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises several error types
        raise ValueError(f"ONNX shape inference failed on {str(path)!r}: {e}") from None
    shapes = _shape_table(inferred.graph)
    total = sum(_node_macs(node, shapes) for node in inferred.graph.node)
    return total // max(batch, 1)


def onnx_params(path: str | os.PathLike) -> int:
    """Elements of the floating-point initializers of an ONNX model (the learned parameters).

    BatchNormalization running mean / variance (inputs 3 and 4) are buffers, not parameters, and are
    left out; integer initializers (shapes, axes) too.
    """
    import onnx  # heavy: loaded only when an ONNX graph is counted

    model = _load_onnx(path)
    buffers = {
        n.input[i]
        for n in model.graph.node
        if n.op_type == "BatchNormalization"
        for i in (3, 4)
        if len(n.input) > i
    }
    t = onnx.TensorProto
    floats = {t.FLOAT, t.FLOAT16, t.DOUBLE, t.BFLOAT16}
    return sum(
        _prod(i.dims)
        for i in model.graph.initializer
        if i.data_type in floats and i.name not in buffers
    )


def _load_onnx(path: str | os.PathLike) -> Any:
    import onnx  # heavy: loaded only when an ONNX graph is counted

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX file {str(path)!r} not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # DecodeError, OSError, ...
        raise ValueError(f"cannot read ONNX model {str(path)!r}: {e}") from None


# -- one model -------------------------------------------------------------------------------------
def _size_of(path: Path) -> int:
    return int(file_size(path))


def _complexity(model: Any, info: dict[str, Any], fp32_onnx: Path) -> dict[str, Any]:
    """Params and per-image MACs/FLOPs: from the torch net, else model.yml, else the FP32 ONNX.

    ``onnx_params`` counts the exported FP32 graph of every row (BN folded into convs), so that a
    Quant row without stored counts can be compared like for like (see :func:`add_ratios`).
    """
    onnx_count = onnx_params(fp32_onnx)
    if model.net is not None:
        net = model.net.cpu().eval()
        params, macs, source = count_params(net), count_macs(net, model.example_inputs()), "torch"
    elif info.get("macs") and info.get("params"):
        params, macs, source = info["params"], info["macs"], "model.yml"
    else:
        params, macs, source = onnx_count, onnx_macs(fp32_onnx), "onnx"
    return {
        "params": int(params),
        "onnx_params": int(onnx_count),
        "macs": int(macs),
        "flops": 2 * int(macs),
        "complexity_source": source,
    }


def _cpu_latency(
    model: Any, onnx_fp32: Path, onnx_int8: Path | None, threads: int, runs: int, warmup: int
) -> dict[str, Any]:
    """Batch-1 CPU latency of every engine that applies (None where one does not)."""
    shape = tuple(model.example_inputs(1).shape)
    kw = {"threads": threads, "warmup": warmup, "runs": runs}
    out: dict[str, Any] = dict.fromkeys(CPU_ENGINES)
    if model.net is not None:
        net = model.net.cpu().eval()
        out["cpu_torch"] = torch_latency(net, shape, device="cpu", **kw).to_dict()
    for engine, path in (("cpu_ort_fp32", onnx_fp32), ("cpu_ort_int8", onnx_int8)):
        if path is not None:
            stats = onnx_latency(path, shape, threads=threads, warmup=warmup, runs=runs)
            out[engine] = stats.to_dict()
    return out


def _gpu_latency(model: Any, gpu: bool | None, runs: int, warmup: int) -> tuple[Any, str | None]:
    """Torch eager CUDA latency at batch 1, or (None, reason)."""
    if gpu is False:
        return None, "n/a (disabled)"
    if not torch.cuda.is_available():
        return None, NO_CUDA
    if model.net is None:
        return None, "n/a (ONNX INT8 model)"
    shape = tuple(model.example_inputs(1).shape)
    stats = torch_latency(model.net.eval(), shape, warmup=warmup, runs=runs, device="cuda")
    model.net.cpu()
    return stats.to_dict(), None


def _evaluate(model: Any, dataset: Any) -> tuple[float | None, dict[str, float]]:
    if dataset is None:
        return None, {}
    metrics = {k: float(v) for k, v in model.evaluate(dataset).items()}
    if model.metric_name not in metrics:
        raise ValueError(f"evaluate() returned {sorted(metrics)}, without {model.metric_name!r}")
    return metrics[model.metric_name], metrics


def _best_cpu(latency: dict[str, Any]) -> dict[str, Any] | None:
    timed = [(v["median_ms"], k) for k, v in latency.items() if k in CPU_ENGINES and v]
    if not timed:
        return None
    ms, engine = min(timed)
    return {"engine": engine, "median_ms": ms}


def benchmark_model(
    model_dir: str | os.PathLike,
    dataset: Any,
    threads: int = 1,
    runs: int = 20,
    warmup: int = 5,
    gpu: bool | None = None,
) -> dict[str, Any]:
    """Measure one model directory (Normal, Prune or Quant).

    Args:
        model_dir: A directory written by ``model.save`` / ``train`` / ``export_quant_model``.
        dataset: The evaluation dataset of the model's task, or None to skip the metric.
        threads: CPU threads of every CPU engine (torch intra-op, ORT intra-op).
        runs: Timed batch-1 runs per engine (median and p10–p90 are reported).
        warmup: Untimed runs before timing.
        gpu: Also time torch eager on CUDA: None = when available, False = never, True = required.

    Returns:
        A JSON-ready dict: ``size_bytes`` (the deployable file: ``model.safetensors`` or the INT8
        ``model.onnx``), ``onnx_fp32_bytes``, ``params`` (torch count; for Quant the stored one or
        ``onnx_params``), ``onnx_params``, ``macs``, ``flops`` (= 2 × MACs, per image), ``metric``
        (fraction in [0, 1]), ``metrics``, ``latency`` ({engine: LatencyStats dict or None} for
        ``cpu_torch``, ``cpu_ort_fp32``, ``cpu_ort_int8``, ``gpu_torch``), ``gpu_note`` (why the
        GPU column is n/a), ``best_cpu`` (fastest CPU engine and its median).

    Raises:
        ValueError: the directory is not a complete model directory or an argument is out of range.
    """
    _check_args(threads, runs, warmup, gpu)
    model_dir = Path(model_dir)
    info = modeldir.read_model_yml(model_dir)
    model = load_model(model_dir)
    quant = model.net is None
    if quant and not (model_dir / modeldir.ONNX_FP32).is_file():
        raise ValueError(
            f"{str(model_dir / modeldir.ONNX_FP32)!r} not found: a Quant model needs it"
        )
    metric, metrics = _evaluate(model, dataset)
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        fp32 = model_dir / modeldir.ONNX_FP32 if quant else _export_fp32(model, Path(tmp))
        weights = model_dir / (modeldir.ONNX_INT8 if quant else modeldir.WEIGHTS)
        row = {
            "model_dir": str(model_dir),
            "architecture": model.architecture,
            "model_class": info.get("model_class", type(model).__name__),
            "task": model.task,
            "status": model.status,
            "input_size": list(model.input_size),
            "metric_name": model.metric_name,
            "metric": metric,
            "metrics": metrics,
            "size_file": weights.name,
            "size_bytes": _size_of(weights),
            "onnx_fp32_bytes": _size_of(fp32),
            **_complexity(model, info, fp32),
        }
        int8 = weights if quant else None
        latency = _cpu_latency(model, fp32, int8, threads, runs, warmup)
    latency["gpu_torch"], row["gpu_note"] = _gpu_latency(model, gpu, runs, warmup)
    row["latency"] = latency
    row["best_cpu"] = _best_cpu(latency)
    return row


def _export_fp32(model: Any, tmp_dir: Path) -> Path:
    path = tmp_dir / "model_fp32.onnx"
    export_onnx(model.net.cpu().eval(), model.example_inputs(1), path, opset=17)
    return path


def _check_args(threads: int, runs: int, warmup: int, gpu: bool | None) -> None:
    for name, value, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if gpu and not torch.cuda.is_available():
        raise ValueError("gpu=True but torch.cuda.is_available() is False; pass gpu=None or False")


# -- several models --------------------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), thread setting, library versions, CUDA device and date."""
    import onnxruntime  # heavy: loaded only when a report is made

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda_device": cuda,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return float(value) / float(base)


def _median(row: dict[str, Any], engine: str) -> float | None:
    stats = row.get("latency", {}).get(engine)
    return stats["median_ms"] if stats else None


def _same_counter(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether both rows' ``params`` were counted the same way (torch, or stored from torch)."""
    kinds = {"torch": "torch", "model.yml": "torch"}
    src = [kinds.get(r.get("complexity_source", "torch"), "onnx") for r in (row, base)]
    return src[0] == src[1]


def add_ratios(rows: list[dict[str, Any]], baseline: int = 0) -> None:
    """Set ``row["ratios"]`` of every row against ``rows[baseline]`` (in place).

    Ratios are row / baseline: ``size``, ``params`` (the ONNX graph counts when one row was
    counted from torch and the other from ONNX), ``flops``, one per latency engine (the same
    engine on both rows; None where either lacks it) and ``cpu_best`` (the row's fastest CPU engine
    against the baseline's fastest). ``metric_delta`` is row − baseline metric (a fraction).
    """
    if not rows:
        raise ValueError("no rows to compare")
    if not -len(rows) <= baseline < len(rows):
        raise ValueError(f"baseline must index one of the {len(rows)} rows, got {baseline}")
    base = rows[baseline]
    for row in rows:
        params = "params" if _same_counter(row, base) else "onnx_params"
        ratios = {
            k: _ratio(row.get(f), base.get(f))
            for k, f in (("size", "size_bytes"), ("params", params), ("flops", "flops"))
        }
        ratios.update({e: _ratio(_median(row, e), _median(base, e)) for e in ENGINES})
        best, base_best = row.get("best_cpu") or {}, base.get("best_cpu") or {}
        ratios["cpu_best"] = _ratio(best.get("median_ms"), base_best.get("median_ms"))
        m, bm = row.get("metric"), base.get("metric")
        ratios["metric_delta"] = None if m is None or bm is None else float(m) - float(bm)
        row["ratios"] = ratios


def _row_names(dirs: list[Path], names: Sequence[str] | str | None) -> list[str]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if names is None:
        names = [d.name for d in dirs]
        if len(set(names)) < len(names):
            names = [f"{d.parent.name}/{d.name}" for d in dirs]
        return names
    names = list(names)
    if len(names) != len(dirs):
        raise ValueError(f"got {len(names)} names for {len(dirs)} model directories; give one each")
    if len(set(names)) < len(names) or not all(names):
        raise ValueError(f"row names must be unique and non-empty, got {names}")
    return names


def run_bench(
    model_dirs: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "val",
    threads: int = 1,
    runs: int = 20,
    names: Sequence[str] | str | None = None,
    baseline: int = 0,
    title: str | None = None,
    warmup: int = 5,
    gpu: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Benchmark model directories and write ``bench.json``, ``bench.md`` and two plots.

    Args:
        model_dirs: Model directories (Normal / Prune / Quant), one table row each.
        data_dir: Dataset directory; ``split`` of it is the evaluation set of every model.
        out_dir: Output directory (created).
        split: Dataset split to evaluate on.
        threads: CPU threads of every CPU engine.
        runs: Timed batch-1 runs per engine.
        names: Row names (default: the directory names).
        baseline: Index of the row that ratios are taken against (the original model).
        title: Heading of ``bench.md``.
        warmup: Untimed runs before timing.
        gpu: See :func:`benchmark_model`.
        overwrite: Replace the four files of an earlier run in ``out_dir`` (otherwise refused).

    Returns:
        The ``bench.json`` content: ``machine``, ``settings``, ``baseline``, ``rows``, ``files``.

    Raises:
        ValueError: a directory is missing or not a model directory, the data split is missing,
            names / baseline / counts are inconsistent, or an output file exists (without
            ``overwrite``) or would overlap an input. Checked before anything is timed.
    """
    if isinstance(model_dirs, (str, os.PathLike)) or not model_dirs:
        raise ValueError("model_dirs must be a non-empty list of model directories")
    dirs = [Path(d) for d in model_dirs]
    row_names = _row_names(dirs, names)
    if not -len(dirs) <= baseline < len(dirs):
        raise ValueError(f"baseline must index one of the {len(dirs)} model directories")
    _check_args(threads, runs, warmup, gpu)
    for name in OUTPUT_FILES.values():
        check_target(Path(out_dir) / name, "file", overwrite=overwrite, sources=[*dirs, data_dir])
    infos = [modeldir.read_model_yml(d) for d in dirs]
    datasets = {t: open_split(t, data_dir, split) for t in {i["task"] for i in infos}}
    rows = []
    for d, name, info in zip(dirs, row_names, infos, strict=True):
        log(f"bench {name} ({info['status']}): {d}")
        row = benchmark_model(d, datasets[info["task"]], threads, runs, warmup, gpu)
        rows.append({"name": name, "variant": f"{name} ({row['status']})", **row})
    add_ratios(rows, baseline)
    settings = {"split": split, "data_dir": str(data_dir), "batch_size": 1}
    settings.update(threads=threads, runs=runs, warmup=warmup)
    result = {
        "format_version": BENCH_FORMAT_VERSION,
        "title": title or "slimkit benchmark",
        "machine": machine_info(threads),
        "settings": settings,
        "baseline": row_names[baseline],
        "rows": rows,
    }
    return _write_outputs(result, Path(out_dir))


OUTPUT_FILES = {
    "json": "bench.json",
    "markdown": "bench.md",
    "pareto": "bench_pareto.png",
    "size_metric": "bench_size_metric.png",
}


def _write_outputs(result: dict[str, Any], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    files = result["files"] = dict(OUTPUT_FILES)
    with atomic_file(out / files["pareto"]) as tmp:
        plot_pareto(result["rows"], tmp)
    with atomic_file(out / files["size_metric"]) as tmp:
        plot_size_metric(result["rows"], tmp)
    text = format_report(result)
    atomic_write_text(out / files["markdown"], text)
    atomic_write_json(out / files["json"], result, indent=2, ensure_ascii=False)
    print(text)
    return result


# -- Markdown --------------------------------------------------------------------------------------
TABLE_HEADER = (
    "模型 (model)|裁剪情况 (variant)|模型大小 (size)|{metric} (%)|params|FLOPs|CPU torch FP32 (ms)|"
    "CPU ORT FP32 (ms)|CPU ORT INT8 (ms)|GPU torch (ms)|CPU latency ratio vs original"
).split("|")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ms(row: dict[str, Any], engine: str) -> str:
    value = _median(row, engine)
    if value is not None:
        return f"{value:.2f}"
    if engine == "gpu_torch":
        return row.get("gpu_note") or NO_CUDA
    return "—"


def _ratio_cell(row: dict[str, Any]) -> str:
    ratio = (row.get("ratios") or {}).get("cpu_best")
    if ratio is None:
        return "—"
    return f"{ratio:.2f}× ({ENGINE_LABELS[row['best_cpu']['engine']]})"


def _params_cell(row: dict[str, Any], format_count: Callable[[float], str]) -> str:
    marker = " †" if row.get("complexity_source") == "onnx" else ""
    return format_count(row["params"]) + marker


def _display_name(architecture: str) -> str:
    """The registry's display name (``MobileNetV2``); the raw name for an unregistered one."""
    return model_spec(architecture).display_name if architecture in list_models() else architecture


def _table_row(row: dict[str, Any], metric_names: set[str]) -> list[str]:
    metric = row.get("metric")
    metric_text = "—" if metric is None else f"{100 * metric:.2f}"
    if len(metric_names) > 1 and metric is not None:
        metric_text += f" ({row['metric_name']})"
    arch = row.get("architecture", "")
    return [
        _display_name(arch),
        row.get("variant") or row.get("name", ""),
        format_bytes(row["size_bytes"]),
        metric_text,
        _params_cell(row, format_count),
        format_count(row["flops"]),
        *(_ms(row, e) for e in ENGINES),
        _ratio_cell(row),
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The PaddleX-style Markdown table of benchmark rows (one line per row, medians in ms).

    Columns: 模型 · 裁剪情况 · 模型大小 · metric (%) · params · FLOPs · CPU latency per engine ·
    GPU latency · CPU latency ratio vs original (fastest CPU engine, from ``row["ratios"]``).
    """
    if not rows:
        raise ValueError("format_table needs at least one benchmark row")
    metric_names = {r["metric_name"] for r in rows}
    label = (
        METRIC_LABELS.get(next(iter(metric_names)), "metric") if len(metric_names) == 1 else None
    )
    header = [h.format(metric=label or "metric") for h in TABLE_HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" :--- " for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in _table_row(row, metric_names)) + " |")
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    """``bench.md``: title, the table, and how and where the numbers were measured."""
    m, s = result["machine"], result["settings"]
    gpu = m.get("cuda_device") or "none (GPU column n/a)"
    notes = [
        f"- CPU: {m['cpu']} ({m['cpu_count']} logical cores), {s['threads']} thread(s) per engine; "
        f"GPU: {gpu}.",
        f"- Latency: batch 1, median of {s['runs']} runs after {s['warmup']} warm-up runs; "
        "p10–p90 spreads are in bench.json.",
        f"- Metric on split {s['split']!r} of {s['data_dir']}; size = deployable weights file "
        "(model.safetensors, or model.onnx for INT8); FLOPs = 2 × MACs per image.",
        f"- Ratios vs {result['baseline']!r}: fastest CPU engine of each row vs the baseline's.",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime']}, {m['date']}.",
    ]
    if any(r.get("complexity_source") == "onnx" for r in result["rows"]):
        notes.append("- † params counted on the exported FP32 ONNX graph (BatchNorm folded).")
    return f"# {result['title']}\n\n{format_table(result['rows'])}\n\n" + "\n".join(notes) + "\n"
