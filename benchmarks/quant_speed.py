"""What INT8 post-training quantization buys on the demo's trained zoo models, and what it costs.

For each trained original model of the demo (cls MobileNetV2, det YOLOv3-MobileNetV1, seg UNet on
the built-in data, ``DIR/{cls,det,seg}/original/best_model``; trained here with the demo's own code
path, ``slimkit.demo.prepare_data`` + ``train_original``, when missing):

* the FP32 net is exported to ONNX at the model's training input size (batch 1) and pre-processed
  the way ``slimkit.quant.quantize`` does it;
* it is quantized to QDQ INT8 with each activation-range algorithm, KL (TensorRT entropy),
  min-max, percentile (99.99) and onnxruntime's own Entropy calibrator (``ort_entropy``). The first
  ``--batch-num`` val images (batch 1) calibrate; slimkit's streaming |x| histograms are collected
  once into a cache folder and re-used by the other slimkit algorithms, ``ort_entropy`` runs ORT's
  calibrator;
* the FP32 and every INT8 model are evaluated on the val split through ONNX Runtime (the task's
  ``evaluate`` inside ``model.using_onnx``): acc1 (cls), VOC bbox mAP@0.5 (det) or mIoU (seg); the drop
  is ``100 * (FP32 - INT8)`` percentage points;
* on-disk ONNX size, and ONNX Runtime CPU latency at the model's input size: batch 1,
  ``--threads`` intra-op threads, all graph optimisations, median of ``--runs`` timed runs after
  ``--warmup``; measured in ``--rounds`` interleaved rounds (FP32, INT8 KL, INT8 min-max, ...) and
  the lowest median kept, which damps noise from other processes on a shared machine (the KL
  INT8/FP32 ratio of every round is printed under each table, with the load average on top).

MobileNetV2 at 224x224: the cls model is trained at 64x64, but MobileNetV2 is fully convolutional
up to its global pooling, so the SAME trained weights are re-exported at 1x3x224x224, calibrated
with KL on val images resized to 224 (the task's eval transforms follow ``input_size``) and
evaluated at 224 (FP32 and INT8); its ORT latency ratio is the headline figure.

Calibration memory: the streaming histogram observer (``slimkit.quant.observers``) runs on the cls
model over 10 and over 100 batches (the val set cycled), each in a fresh process, printing the peak
RSS growth during the run (the RSS high-water mark, reset just before it, minus the RSS before it;
``getrusage`` where the mark cannot be reset), the tracemalloc peak (numpy/Python heap) and the
histogram state size.

The last line reads ``INT8/FP32 latency ratio (mobilenetv2 224): R metric drop: D`` (R: ORT CPU
INT8/FP32 median latency at 224x224 batch 1; D: KL metric drop at 224 in percentage points).
Targets: ratio <= 0.5, drop <= 0.5 pp, calibration memory flat from 10 to 100 batches.

    OMP_NUM_THREADS=1 python benchmarks/quant_speed.py --quick     # tiny 1-epoch models, a check
    python benchmarks/quant_speed.py [--demo-dir demo_output] [--tasks cls,det,seg] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import multiprocessing as mp
import os
import resource
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALGOS = ("KL", "minmax", "percentile", "ort_entropy")
TARGET_RATIO = 0.5
TARGET_DROP_PP = 0.5
MEMORY_BATCHES = (10, 100)


@dataclass
class Row:
    """One algorithm's line of a model's table."""

    algo: str
    metric_int8: float
    size_int8: int
    latency_int8: float
    calibration: str


@dataclass
class ModelResult:
    """What was measured for one model at one input size."""

    label: str
    metric_name: str
    input_shape: tuple[int, ...]
    metric_fp32: float
    size_fp32: int
    latency_fp32: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- helpers ------------------------------------------------------------------------------------


def drop_pp(fp32: float, int8: float) -> float:
    """Metric drop in percentage points (metrics are fractions in [0, 1])."""
    return 100.0 * (fp32 - int8)


def mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def ort_metric(model: Any, onnx_path: Path, val_ds: Any, threads: int) -> float:
    """The task's metric of an ONNX model on ``val_ds`` (same loop as ``slim.export_quant_model``)."""
    with model.using_onnx(onnx_path, threads=threads):
        return float(model.evaluate(val_ds)[model.metric_name])


def latencies(paths: list[Path], args: argparse.Namespace) -> list[list[float]]:
    """Median ORT CPU latency (ms) of each model in each of ``args.rounds`` interleaved rounds."""
    from slimkit.bench.latency import onnx_latency

    medians: list[list[float]] = [[] for _ in paths]
    for _ in range(args.rounds):
        for i, path in enumerate(paths):
            stats = onnx_latency(
                path, None, threads=args.threads, warmup=args.warmup, runs=args.runs
            )
            medians[i].append(stats.median_ms)
    return medians


def cpu_info() -> str:
    """CPU model and the int8 dot-product extension ORT's u8s8 kernels use (VNNI), if any."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name or 'unknown CPU'} ({', '.join(vnni) or 'no VNNI'})"


def int8_convs(path: Path) -> str:
    """How many convolutions ORT's optimised CPU graph runs as int8 kernels."""
    from slimkit.quant.qdq import int8_kernel_ops

    ops = int8_kernel_ops(path)
    return f"{ops['QLinearConv']} QLinearConv, {ops['Conv'] + ops['FusedConv']} float Conv"


# -- data and models ------------------------------------------------------------------------------


def trained_model(task: str, args: argparse.Namespace) -> tuple[Path, Any]:
    """The demo's trained original model dir of ``task`` (trained now if missing) and its val set."""
    from slimkit.demo import CONFIGS, prepare_data, train_original

    cfg = CONFIGS[task].quick() if args.quick else CONFIGS[task]
    demo = Path(args.demo_dir)
    best = demo / task / "original" / "best_model"
    existed = (best / "model.yml").is_file()
    train_ds, val_ds = prepare_data(cfg, demo / "data" / task)
    if not existed:
        print(f"[{task}] training {cfg.architecture} ({cfg.epochs} epochs) into {best.parent}")
        start = time.time()
        train_original(cfg, train_ds, val_ds, demo / task)
        print(f"[{task}] trained in {time.time() - start:.0f} s")
    elif not (best.parent / f"epoch_{cfg.epochs}" / "model.yml").is_file():
        # train_original (like the demo) skips training whenever best_model exists, also when an
        # earlier run was killed after an intermediate evaluation
        print(
            f"[{task}] WARNING: {best} exists but {best.parent}/epoch_{cfg.epochs} does not: the "
            "training was interrupted, these figures are for a partly trained model"
        )
    return best, val_ds


def quantize_all(
    label: str,
    model: Any,
    val_ds: Any,
    work: Path,
    args: argparse.Namespace,
    algos: tuple[str, ...] = ALGOS,
) -> tuple[ModelResult, dict[str, Path]]:
    """Export, quantize with each algorithm (one cached calibration), evaluate, size and time."""
    from slimkit.quant import QuantConfig, export_onnx, quantize

    work.mkdir(parents=True, exist_ok=True)
    raw = export_onnx(model.net.cpu().eval(), model.example_inputs(1), work / "model_raw.onnx")
    fp32 = work / "model_fp32.onnx"  # onnxruntime-pre-processed FP32: what every INT8 comes from
    cache = work / "calib_cache"
    int8: dict[str, Path] = {}
    calib: dict[str, str] = {}
    for algo in algos:
        start = time.time()
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrator prints progress
            result = quantize(
                raw,
                model.make_loader(val_ds, 1),
                work / f"model_int8_{algo}.onnx",
                QuantConfig(algo=algo, batch_num=args.batch_num),
                cache_dir=cache,
                fp32_path=fp32,
            )
        int8[algo] = result.model_path
        if algo == "ort_entropy":
            calib[algo] = "ORT Entropy calibrator"
        elif result.calibration_cached:
            calib[algo] = "histograms from cache"
        else:
            calib[algo] = f"{result.calibration_batches} batches -> cache"
        calib[algo] += f", {time.time() - start:.1f} s"
    metric_fp32 = ort_metric(model, fp32, val_ds, args.threads)
    rounds = latencies([fp32, *int8.values()], args)
    times = [min(r) for r in rounds]  # the least disturbed round of each model
    res = ModelResult(
        label=label,
        metric_name=model.metric_name,
        input_shape=tuple(model.example_inputs(1).shape),
        metric_fp32=metric_fp32,
        size_fp32=fp32.stat().st_size,
        latency_fp32=times[0],
    )
    per_round = " ".join(f"{i / f:.2f}" for i, f in zip(rounds[1], rounds[0], strict=True))
    res.notes.append(f"{algos[0]} INT8/FP32 latency ratio in each round: {per_round}")
    for (algo, path), ms in zip(int8.items(), times[1:], strict=True):
        metric = ort_metric(model, path, val_ds, args.threads)
        res.rows.append(Row(algo, metric, path.stat().st_size, ms, calib[algo]))
    return res, int8


def print_table(res: ModelResult, args: argparse.Namespace) -> None:
    shape = "x".join(str(d) for d in res.input_shape)
    m = res.metric_name
    print(
        f"\n## {res.label}  [input {shape}; metric {m} on val via ONNX Runtime; "
        f"latency: ORT CPU, {args.threads} thread(s), median of {args.runs}, "
        f"best of {args.rounds} rounds]"
    )
    head = (
        f"{'algo':12s} {m + ' FP32':>10s} {m + ' INT8':>10s} {'drop (pp)':>9s} "
        f"{'size FP32':>10s} {'size INT8':>10s} {'lat FP32':>9s} {'INT8':>9s} {'ratio':>6s}"
        f"  calibration"
    )
    print(head)
    print("-" * len(head))
    for r in res.rows:
        print(
            f"{r.algo:12s} {res.metric_fp32:10.4f} {r.metric_int8:10.4f} "
            f"{drop_pp(res.metric_fp32, r.metric_int8):9.2f} {mb(res.size_fp32):>10s} "
            f"{mb(r.size_int8):>10s} {res.latency_fp32:7.2f}ms {r.latency_int8:7.2f}ms "
            f"{r.latency_int8 / res.latency_fp32:6.2f}  {r.calibration}"
        )
    for note in res.notes:
        print(f"  {note}")


# -- calibration memory ---------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; 0 when unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(fp32: str, model_dir: str, data_dir: str, batches: int, queue: Any) -> None:
    """In a fresh process: stream ``batches`` cls val batches into the histogram observers."""
    import onnx

    from slimkit.quant.observers import calibration_tensors, collect_histograms
    from slimkit.quant.qdq import quantizable_op_types
    from slimkit.quant.runtime import to_feed
    from slimkit.tasks.factory import open_split
    from slimkit.tasks.loading import load_model

    model = load_model(model_dir)
    loader = model.make_loader(open_split("cls", data_dir, "val"), 1)
    onnx_model = onnx.load(fp32)
    tensors = calibration_tensors(onnx_model, quantizable_op_types())
    names = [i.name for i in onnx_model.graph.input]

    def feeds():  # the val set cycled, one batch at a time (nothing kept)
        for images, _ in itertools.islice(
            itertools.chain.from_iterable(itertools.repeat(loader)), batches
        ):
            yield to_feed(images, names)

    next(iter(loader))  # lazy imports of the image pipeline happen outside the measurement
    # Peak RSS: the process's high-water mark, reset just before the run (Linux clear_refs).
    # VmHWM rather than getrusage's ru_maxrss: in a spawned child ru_maxrss also holds the
    # high-water mark of the forked parent image from before exec, which clear_refs cannot reset.
    reset = _reset_peak_rss() and _proc_status_kb("VmHWM") > 0
    base = _proc_status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    observers = collect_histograms(onnx_model, feeds(), tensors)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _proc_status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "batches": batches,
            "tensors": len(observers),
            "state": sum(o.hist.nbytes for o in observers.values()),
            "bins": next(iter(observers.values())).num_bins,
            "rss_growth_kb": max(peak - base, 0),
            "peak_reset": reset,
            "traced_peak": traced_peak,
            "seconds": seconds,
            "count": sum(o.count for o in observers.values()),
        }
    )


def calibration_memory(fp32: Path, model_dir: Path, data_dir: Path) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = []
    for n in MEMORY_BATCHES:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_memory_child, args=(str(fp32), str(model_dir), str(data_dir), n, queue)
        )
        proc.start()
        out.append(queue.get())
        proc.join()
    return out


def print_memory(rows: list[dict], shape: tuple[int, ...]) -> bool:
    shape_s = "x".join(str(d) for d in shape)
    print(
        f"\n## calibration memory: streaming |x| histograms of the cls model [input {shape_s}, "
        "val set cycled, one fresh process per run]"
    )
    how = (
        "VmHWM (RSS high-water mark, reset just before the run) minus RSS before"
        if rows[0]["peak_reset"]
        else "getrusage ru_maxrss (high-water mark not resettable: may be an underestimate)"
    )
    print(f"  peak RSS growth: {how}; tracemalloc: numpy/Python heap peak during the run")
    head = (
        f"{'batches':>7s} {'tensors':>7s} {'hist state':>18s} {'peak RSS growth':>16s} "
        f"{'tracemalloc peak':>17s} {'values seen':>12s} {'time':>7s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        state = f"{r['state'] / 1024:.0f} KiB ({r['bins']} bins)"
        print(
            f"{r['batches']:7d} {r['tensors']:7d} {state:>18s} "
            f"{r['rss_growth_kb'] / 1024:13.1f} MB {r['traced_peak'] / 1e6:14.2f} MB "
            f"{r['count']:12d} {r['seconds']:6.1f}s"
        )
    lo, hi = rows[0], rows[-1]
    rss_ratio = hi["rss_growth_kb"] / max(lo["rss_growth_kb"], 1)
    traced_ratio = hi["traced_peak"] / max(lo["traced_peak"], 1)
    state_ratio = hi["state"] / max(lo["state"], 1)
    print(
        f"  {hi['batches']} vs {lo['batches']} batches: peak RSS growth x{rss_ratio:.2f}, "
        f"tracemalloc peak x{traced_ratio:.2f}, histogram state x{state_ratio:.2f} "
        f"(data seen x{hi['count'] / max(lo['count'], 1):.1f})"
    )
    return state_ratio == 1.0 and rss_ratio <= 1.2 and traced_ratio <= 1.2


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo-dir",
        default=None,
        help="demo output folder (default demo_output, demo_output_quick with --quick)",
    )
    parser.add_argument("--out", default=None, help="work folder (default DEMO_DIR/quant_speed)")
    parser.add_argument("--tasks", default="cls,det,seg")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per latency")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--batch-num", type=int, default=10, help="calibration batches (of 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="demo CONFIGS[t].quick() models (tiny data, 1 epoch): a script check",
    )
    args = parser.parse_args()
    args.demo_dir = args.demo_dir or ("demo_output_quick" if args.quick else "demo_output")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if "cls" not in tasks:
        parser.error("--tasks must include cls (the MobileNetV2 224 and memory figures use it)")
    work = Path(args.out or Path(args.demo_dir) / "quant_speed")

    import onnxruntime as ort
    import torch

    from slimkit.tasks.loading import load_model

    torch.manual_seed(0)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"slimkit INT8 PTQ benchmark: onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"{cpu_info()}; {'quick' if args.quick else 'full'} "
        f"demo models from {args.demo_dir}/; load average {load} on {os.cpu_count()} CPUs"
    )
    results: dict[str, ModelResult] = {}
    trained: dict[str, tuple[Path, Any]] = {}
    for task in tasks:
        best, val_ds = trained_model(task, args)
        trained[task] = (best, val_ds)
        model = load_model(best)
        label = (
            f"{task}: {model.architecture} (trained {model.input_size[0]}x{model.input_size[1]}, "
            f"{len(val_ds)} val images, {args.batch_num} calibration batches of 1)"
        )
        res, _ = quantize_all(label, model, val_ds, work / task, args)
        results[task] = res
        print_table(res, args)

    # MobileNetV2 at 224x224: the same trained weights, re-exported at 1x3x224x224.
    best, val_ds = trained["cls"]
    model224 = load_model(best)
    native = model224.input_size
    model224.input_size = (224, 224)  # export shape and eval/calibration transforms follow it
    label = (
        f"mobilenetv2 224: cls weights trained at {native[0]}x{native[1]} re-exported at "
        f"224x224, val images resized to 224 for calibration (KL) and both metrics"
    )
    res224, int8_224 = quantize_all(label, model224, val_ds, work / "cls_224", args, algos=("KL",))
    res224.notes.append(
        f"every figure in this table is at 224x224, batch 1; ORT INT8 graph: "
        f"{int8_convs(int8_224['KL'])}"
    )
    print_table(res224, args)

    # Calibration memory, 10 vs 100 batches, on the cls model at its trained size.
    cls_fp32 = work / "cls" / "model_fp32.onnx"
    mem = calibration_memory(cls_fp32, best, Path(args.demo_dir) / "data" / "cls")
    flat = print_memory(mem, results["cls"].input_shape)

    kl224 = res224.rows[0]
    ratio = kl224.latency_int8 / res224.latency_fp32
    drop224 = drop_pp(res224.metric_fp32, kl224.metric_int8)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def within(value: float, target: float) -> bool:
        return round(value, 6) <= target  # 1 image of 200 is 0.5 pp, not 0.50000000001

    print("\n## targets")
    print(
        f"  INT8/FP32 ORT latency, mobilenetv2 224x224 batch 1, {args.threads} thread(s): "
        f"{ratio:.2f} (target <= {TARGET_RATIO}): {verdict(within(ratio, TARGET_RATIO))}"
    )
    for task, res in results.items():
        kl = next(r for r in res.rows if r.algo == "KL")
        d = drop_pp(res.metric_fp32, kl.metric_int8)
        shape = "x".join(str(s) for s in res.input_shape[2:])
        print(
            f"  metric drop, {task} KL at {shape}: {d:.2f} pp {res.metric_name} "
            f"(target <= {TARGET_DROP_PP}): {verdict(within(d, TARGET_DROP_PP))}"
        )
    print(
        f"  metric drop, mobilenetv2 KL at 224x224: {drop224:.2f} pp {res224.metric_name} "
        f"(target <= {TARGET_DROP_PP}): {verdict(within(drop224, TARGET_DROP_PP))}"
    )
    print(
        f"  calibration memory flat from {MEMORY_BATCHES[0]} to {MEMORY_BATCHES[-1]} batches: "
        f"{verdict(flat)}"
    )
    print(f"INT8/FP32 latency ratio (mobilenetv2 224): {ratio:.2f} metric drop: {drop224:.2f}")


if __name__ == "__main__":
    main()
