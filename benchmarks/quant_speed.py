"""slimkit's INT8 post-training quantization next to ONNX Runtime's and NNCF's, on the same inputs.

For every model (the demo's trained zoo models: cls MobileNetV2, det YOLOv3-MobileNetV1, seg UNet;
``--variants original,method1`` adds the demo's pruned models; with ``--foreign`` also two PP-OCR ONNX files from the ``rapidocr-onnxruntime`` wheel, see
``quant_foreign.py``):

* the FP32 model is exported (zoo) and pre-processed the way ``slimkit.quant.quantize`` does it
  (opset upgrade to 13, onnxruntime's ``quant_pre_process``); every tool quantizes that file;
* calibration as ``slim.export_quant_model`` defaults: ``--batch-num`` (10) inputs of batch 1, the
  first ones of the evaluation set ("val head"); with ``--calib-seeds`` also random draws of
  ``--batch-num`` inputs from another split (the train split; for the foreign models, other
  rendered images), one per seed, to show the calibration-sample variance; a "mean over draws"
  row, and the gap of slimkit KL to the best peer both on the val head and on that mean (one draw
  moves a tool by up to about 1 point on the detector: the val-head gap alone is one sample);
* columns: FP32, slimkit KL (the default: guarded range choice + bias correction), slimkit min-max
  (+ bias correction), ONNX Runtime MinMax and Entropy (its calibrators, slimkit's QDQ writer;
  "ORT Entropy" at onnxruntime's defaults, whose 128 histogram bins for 128 quantized bins leave
  one candidate threshold, so it equals MinMax; "ORT Entropy2048" searches 2048 bins), NNCF (``nncf.quantize`` defaults, in ``--nncf-python``'s environment; skipped without it);
* metrics through ONNX Runtime on the evaluation set: acc1 (cls), VOC mAP@0.5 (det), mIoU (seg),
  accuracy / F1 (foreign); drops in percentage points with the resolution of the set
  (100 / N pp for accuracies: one image);
* an ablation of slimkit's parts (plain KL, guarded KL, bias correction, min-max) on the val-head
  calibration;
* ORT CPU latency (``--threads``, median of ``--runs``, best of ``--rounds`` interleaved rounds)
  of FP32 and slimkit KL INT8 per model, and MobileNetV2 re-exported at 224x224;
* calibration + quantization peak memory (RSS high-water mark growth in a fresh process) of
  slimkit KL, slimkit min-max and ORT's calibrators, on the cls model and the foreign detector.

The last line reads ``INT8/FP32 latency ratio (mobilenetv2 224): R metric drop: D``.

    OMP_NUM_THREADS=1 python benchmarks/quant_speed.py --quick           # tiny models: a check
    python benchmarks/quant_speed.py --demo-dir demo_output --val-dir DIR \\
        --nncf-python /work/side/quant/bin/python --foreign --calib-seeds 1,2,3 \\
        --variants original,method1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("KL", "minmax", "ort_minmax", "ort_entropy", "ort_entropy2048", "nncf")
TITLES = {
    "KL": "slimkit KL",
    "minmax": "slimkit min-max",
    "ort_minmax": "ORT MinMax",
    "ort_entropy": "ORT Entropy",
    "ort_entropy2048": "ORT Entropy2048",
    "nncf": "NNCF",
}
ABLATION = ("KL_plain-bc", "KL_plain", "KL-bc", "KL", "minmax-bc", "minmax")
TARGET_RATIO = 0.5
HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    """A model to quantize: its FP32 file, calibration draws, evaluation and metric."""

    name: str
    metric_name: str
    source: Path  # the FP32 model given to slimkit.quant.quantize (exported or foreign)
    calib: dict[str, list[np.ndarray]]  # {"val head": inputs, "seed 1": ...}
    evaluate: Callable[[Path], float]
    num_eval: int
    fp32: Path | None = None  # the pre-processed FP32 model (set by the first quantize)
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # {calib: {column: m}}
    ablation: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)


# -- quantizers -------------------------------------------------------------------------------


def slimkit_int8(
    case: Case, variant: str, calib: list[np.ndarray], out: Path, align: bool = True
) -> Path:
    """``variant``: a slimkit algo, ``-bc`` suffix to switch the bias correction off;
    ``align=False`` leaves convs' input channels as they are (``QuantConfig.align_channels``)."""
    from slimkit.quant import QuantConfig, quantize

    algo, off = variant.removesuffix("-bc"), variant.endswith("-bc")
    config = QuantConfig(
        algo=algo,
        batch_num=len(calib),
        bias_correction=not off,
        latency_check=False,
        align_channels=align,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress
        result = quantize(case.source, calib, out, config, fp32_path=out.with_suffix(".fp32.onnx"))
    case.fp32 = case.fp32 or result.fp32_path
    return result.model_path


def nncf_int8(case: Case, calib: list[np.ndarray], out: Path, python: str) -> Path:
    """NNCF's PTQ of the pre-processed FP32 model, in ``python``'s environment."""
    assert case.fp32 is not None
    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **{f"x{k}": x for k, x in enumerate(calib)})
    cmd = [python, str(HERE / "nncf_quantize.py"), str(case.fp32), str(npz), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return out


def has_nncf(python: str | None) -> bool:
    if not python:
        return False
    probe = subprocess.run([python, "-c", "import nncf"], capture_output=True)
    return probe.returncode == 0


# -- cases ------------------------------------------------------------------------------------


def ort_metric(model: Any, onnx_path: Path, val_ds: Any) -> float:
    """The task's metric of an ONNX model on ``val_ds`` (as ``slim.export_quant_model``)."""
    with model.using_onnx(onnx_path, threads=1):
        return float(model.evaluate(val_ds)[model.metric_name])


def inputs_of(model: Any, dataset: Any, indices: list[int]) -> list[np.ndarray]:
    """Preprocessed single-image inputs (batch 1) of ``dataset[indices]``."""
    from torch.utils.data import DataLoader, Subset

    from slimkit.data.collate import collate_fn

    ds = Subset(model._transformed(dataset, False), indices)
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_fn(model.task))
    return [images.numpy() for images, _ in loader]


def key(task: str, variant: str) -> str:
    """``"det"`` for the original, ``"det-method1"`` for another variant: labels and work folders."""
    return task if variant == "original" else f"{task}-{variant}"


def zoo_case(
    task: str,
    args: argparse.Namespace,
    work: Path,
    size: int | None = None,
    variant: str = "original",
) -> Case | None:
    """A demo zoo model, its val set and calibrations; None when ``variant`` was not built.

    ``variant``: ``"original"`` (trained by the demo's code when missing) or the name of another
    model the demo saved under ``DEMO/<task>/<variant>/best_model`` (e.g. ``"method1"``).
    """
    from slimkit.demo import CONFIGS, prepare_data, train_original
    from slimkit.quant import export_onnx
    from slimkit.tasks.factory import open_split
    from slimkit.tasks.loading import load_model

    cfg = CONFIGS[task].quick() if args.quick else CONFIGS[task]
    demo = Path(args.demo_dir)
    train_ds, val_ds = prepare_data(cfg, demo / "data" / task)
    if variant == "original":
        best = train_original(cfg, train_ds, val_ds, demo / task)
    else:
        best = demo / task / variant / "best_model"
        if not (best / "model.yml").is_file():
            print(f"  [{task} {variant}] no model at {best}: skipped")
            return None
    if args.val_dir and (Path(args.val_dir) / task / "val_list.txt").is_file():
        val_ds = open_split(task, Path(args.val_dir) / task, "val")
    model = load_model(best)
    if size:
        model.input_size = (size, size)  # export shape and eval transforms follow it
    label = f"{key(task, variant)} {model.architecture} {'x'.join(map(str, model.input_size))}"
    source = export_onnx(model.net.cpu().eval(), model.example_inputs(1), work / "model.onnx")
    n = args.batch_num
    calib = {"val head": inputs_of(model, val_ds, list(range(min(n, len(val_ds)))))}
    for seed in args.seeds:
        pick = np.random.default_rng(seed).choice(len(train_ds), min(n, len(train_ds)), False)
        calib[f"train seed {seed}"] = inputs_of(model, train_ds, sorted(pick.tolist()))
    metric = "mAP" if task == "det" else model.metric_name
    return Case(label, metric, source, calib, lambda p: ort_metric(model, p, val_ds), len(val_ds))


def foreign_case_list(args: argparse.Namespace) -> list[Case]:
    from quant_foreign import detection_set, direction_set, foreign_cases

    cases = []
    nums = (args.foreign_num, args.foreign_det_num)
    wanted = {c.strip() for c in args.foreign_cases.split(",")}
    for fc in foreign_cases(args.foreign_python, nums, args.batch_num):
        if fc.name.split()[0] not in wanted:
            continue
        make = direction_set if fc.metric_name == "acc" else detection_set
        calib = {"val head": [x for x, _ in fc.items[: args.batch_num]]}
        for seed in args.seeds:
            calib[f"rendered seed {seed}"] = [x for x, _ in make(args.batch_num, 1000 + seed)]
        cases.append(Case(fc.name, fc.metric_name, fc.path, calib, fc.evaluate, len(fc.items)))
    return cases


# -- measuring --------------------------------------------------------------------------------


def run_case(case: Case, args: argparse.Namespace, work: Path) -> None:
    """Every column for every calibration draw, then the ablation and the latency."""
    nncf = has_nncf(args.nncf_python)
    for draw, calib in case.calib.items():
        row: dict[str, float] = {}
        tag = draw.replace(" ", "_")
        for column in COLUMNS:
            out = work / f"{tag}_{column}.onnx"
            if column == "nncf":
                if not nncf:
                    continue
                try:
                    path = nncf_int8(case, calib, out, args.nncf_python)
                except subprocess.CalledProcessError as error:
                    tail = error.stderr.decode(errors="replace").strip().splitlines()[-1:]
                    print(f"  [{case.name}] NNCF failed: {tail}")
                    continue
            else:
                path = slimkit_int8(case, column, calib, out)
            row[column] = case.evaluate(path)
        case.results[draw] = row
        print(f"  [{case.name}] {draw}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    assert case.fp32 is not None
    case.results["FP32"] = {"FP32": case.evaluate(case.fp32)}
    head = next(iter(case.calib.values()))
    for variant in () if args.no_ablation else ABLATION:
        path = slimkit_int8(case, variant, head, work / f"ablation_{variant}.onnx")
        case.ablation[variant] = case.evaluate(path)
    if args.runs > 0:
        kl = work / f"{next(iter(case.calib)).replace(' ', '_')}_KL.onnx"
        case.latency = latency_pair(case.fp32, kl, args, head[0].shape)


def latency_pair(
    fp32: Path, int8: Path, args: argparse.Namespace, shape: tuple[int, ...]
) -> dict[str, float]:
    """Best-of-rounds median ORT CPU latency (ms) of both models on ``shape``, interleaved."""
    return latencies({"fp32": fp32, "int8": int8}, args, shape)


def latencies(
    paths: dict[str, Path], args: argparse.Namespace, shape: tuple[int, ...]
) -> dict[str, float]:
    """Best-of-rounds median ORT CPU latency (ms) of every model on ``shape``, interleaved."""
    from slimkit.bench.latency import onnx_latency

    best = dict.fromkeys(paths, float("inf"))
    for _ in range(args.rounds):
        for key, path in paths.items():
            stats = onnx_latency(path, shape, threads=args.threads, warmup=3, runs=args.runs)
            best[key] = min(best[key], stats.median_ms)
    return best


def _peak_child(source: str, calib: list[np.ndarray], algo: str, out: str, queue: Any) -> None:
    """In a fresh process: the RSS high-water mark growth of one ``quantize`` call."""
    from slimkit.quant import QuantConfig, quantize

    def status_kb(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    import onnxruntime  # noqa: F401  (libraries loaded before the baseline)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (Linux >= 4.0)
    base = status_kb("VmRSS")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        quantize(source, calib, out, QuantConfig(algo=algo, batch_num=len(calib)))
    queue.put((status_kb("VmHWM") - base, time.perf_counter() - start))


def peak_memory(case: Case, work: Path) -> dict[str, tuple[float, float]]:
    """``{algo: (peak RSS growth MB, seconds)}`` of quantize with each calibrator."""
    ctx = mp.get_context("spawn")
    calib = next(iter(case.calib.values()))
    out = {}
    for algo in ("KL", "minmax", "ort_minmax", "ort_entropy", "ort_entropy2048"):
        queue = ctx.Queue()
        args = (str(case.source), calib, algo, str(work / f"mem_{algo}.onnx"), queue)
        proc = ctx.Process(target=_peak_child, args=args)
        proc.start()
        kb, seconds = queue.get()
        proc.join()
        out[algo] = (kb / 1024, seconds)
    return out


# -- printing ---------------------------------------------------------------------------------


def resolution(case: Case) -> str:
    if case.metric_name in ("acc1", "acc"):
        return f"1 image = {100 / case.num_eval:.2f} pp"
    return f"{case.num_eval} images"


def print_case(case: Case) -> None:
    fp32 = case.results["FP32"]["FP32"]
    print(
        f"\n## {case.name}: {case.metric_name} x100 on {case.num_eval} images ({resolution(case)})"
    )
    cols = [c for c in COLUMNS if any(c in r for k, r in case.results.items() if k != "FP32")]
    head = f"{'calibration':22s} {'FP32':>7s} " + " ".join(f"{TITLES[c]:>16s}" for c in cols)
    print(head)
    print("-" * len(head))
    for draw, row in case.results.items():
        if draw == "FP32":
            continue
        cells = [f"{100 * row[c]:6.2f} ({100 * (row[c] - fp32):+5.1f})" for c in cols]
        print(f"{draw:22s} {100 * fp32:7.2f} " + " ".join(f"{c:>16s}" for c in cells))
    seeds = [r for k, r in case.results.items() if k not in ("FP32", "val head")]
    if len(seeds) > 1:
        spread = [f"{100 * np.std([r[c] for r in seeds]):16.2f}" for c in cols]
        print(f"{'std over seeds (pp)':22s} {'':7s} " + " ".join(spread))
    means = draw_means(case)
    if len(case.results) > 2:  # FP32 and at least two draws
        cells = [f"{100 * means[c]:6.2f} ({100 * (means[c] - fp32):+5.1f})" for c in cols]
        print(f"{'mean over draws':22s} {100 * fp32:7.2f} " + " ".join(f"{c:>16s}" for c in cells))
    if case.ablation:
        ablation = ", ".join(f"{k} {100 * v:.2f}" for k, v in case.ablation.items())
        print(f"  ablation (val head; -bc: no bias correction): {ablation}")
    if case.latency:
        ratio = case.latency["int8"] / case.latency["fp32"]
        print(
            f"  ORT latency FP32 {case.latency['fp32']:.2f} ms, slimkit KL INT8 "
            f"{case.latency['int8']:.2f} ms: INT8/FP32 {ratio:.2f}"
        )


PEERS = ("ort_minmax", "ort_entropy", "ort_entropy2048", "nncf")


def draw_means(case: Case) -> dict[str, float]:
    """Each column's metric averaged over the calibration draws (columns every draw has)."""
    rows = [r for k, r in case.results.items() if k != "FP32"]
    cols = [c for c in COLUMNS if rows and all(c in r for r in rows)]
    return {c: float(np.mean([r[c] for r in rows])) for c in cols}


def best_gap(row: dict[str, float]) -> float:
    """slimkit KL minus the best of ORT MinMax, ORT Entropy (both) and NNCF in ``row``, in pp."""
    peers = [row[c] for c in PEERS if c in row]
    return 100 * (row["KL"] - max(peers)) if peers and "KL" in row else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default=None, help="demo output folder (models, data)")
    parser.add_argument("--val-dir", default=None, help="DIR/{cls,det,seg} larger val sets")
    parser.add_argument("--out", default=None, help="work folder (default DEMO_DIR/quant_speed)")
    parser.add_argument("--tasks", default="cls,det,seg")
    parser.add_argument(
        "--variants", default="original", help="demo models per task, e.g. original,method1"
    )
    parser.add_argument("--batch-num", type=int, default=10, help="calibration inputs (batch 1)")
    parser.add_argument("--calib-seeds", default="", help="e.g. 1,2,3: extra calibration draws")
    parser.add_argument("--nncf-python", default=None, help="python of an env with nncf")
    parser.add_argument("--foreign", action="store_true", help="also the PP-OCR ONNX models")
    parser.add_argument("--foreign-python", default=None, help="python with rapidocr-onnxruntime")
    parser.add_argument("--foreign-num", type=int, default=1000, help="direction eval images")
    parser.add_argument("--foreign-det-num", type=int, default=300, help="detector eval images")
    parser.add_argument("--foreign-cases", default="ppocr_cls,ppocr_det", help="which of them")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50, help="timed runs (0: no latency)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny demo models: a script check")
    args = parser.parse_args()
    args.demo_dir = args.demo_dir or ("demo_output_quick" if args.quick else "demo_output")
    args.seeds = [int(s) for s in args.calib_seeds.split(",") if s.strip()]
    args.foreign_python = args.foreign_python or args.nncf_python or sys.executable
    work = Path(args.out or Path(args.demo_dir) / "quant_speed")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    nncf = "NNCF via " + args.nncf_python if has_nncf(args.nncf_python) else "no NNCF"
    print(f"slimkit INT8 benchmark: onnxruntime {ort.__version__}, {nncf}; load {load}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    zoo = [zoo_case(t, args, work / key(t, v), variant=v) for t in tasks for v in variants]
    cases = [c for c in zoo if c is not None]
    if args.foreign:
        foreign = foreign_case_list(args)
        print("foreign models: " + (", ".join(c.name for c in foreign) or "not installed, skipped"))
        cases += foreign
    for case in cases:
        run_case(case, args, work / case.name.split()[0])
        print_case(case)
    print("\n## slimkit KL vs the best of ORT MinMax / ORT Entropy / NNCF (pp)")
    print(f"  {'':40s} {'val head':>8s} {'mean over draws':>16s} {'draws':>5s}")
    for case in cases:
        draws = len(case.results) - 1
        gaps = f"{best_gap(case.results['val head']):+8.2f} {best_gap(draw_means(case)):+16.2f}"
        print(f"  {case.name:40s} {gaps} {draws:5d}")
    if not args.no_memory and cases:
        print("\n## peak RSS growth of one quantize call (fresh process; MB, seconds)")
        for case in [cases[0], *(c for c in cases[1:] if c.name.startswith("ppocr_det"))]:
            mem = peak_memory(case, work / "memory")
            cells = ", ".join(f"{k} {mb:.0f} MB ({s:.0f} s)" for k, (mb, s) in mem.items())
            print(f"  {case.name}: {cells}; KL/min-max {mem['KL'][0] / mem['minmax'][0]:.2f}")
    if "cls" in tasks:
        headline(args, work)


def headline(args: argparse.Namespace, work: Path) -> None:
    """MobileNetV2 re-exported at 224x224: slimkit KL drop and INT8/FP32 latency ratio."""
    case = zoo_case("cls", args, work / "cls_224", size=224)
    assert case is not None
    case.calib = {"val head": case.calib["val head"]}
    calib = case.calib["val head"]
    with tempfile.TemporaryDirectory() as tmp:
        int8 = slimkit_int8(case, "KL", calib, Path(tmp) / "kl.onnx")
        plain = slimkit_int8(case, "KL", calib, Path(tmp) / "kl_unaligned.onnx", align=False)
        assert case.fp32 is not None
        drop = 100 * (case.evaluate(case.fp32) - case.evaluate(int8))
        ratio = float("nan")
        if args.runs > 0:
            paths = {"fp32": case.fp32, "int8": int8, "unaligned": plain}
            lat = latencies(paths, args, calib[0].shape)
            ratio = lat["int8"] / lat["fp32"]
            print(
                f"\n  mobilenetv2 224: ORT latency FP32 {lat['fp32']:.2f} ms, slimkit KL INT8 "
                f"{lat['int8']:.2f} ms ({ratio:.3f}); without the stem's channel alignment "
                f"{lat['unaligned']:.2f} ms ({lat['unaligned'] / lat['fp32']:.3f})"
            )
    print(f"\n  target INT8/FP32 <= {TARGET_RATIO} at 224 ({args.threads} thread(s))")
    print(f"INT8/FP32 latency ratio (mobilenetv2 224): {ratio:.2f} metric drop: {drop:.2f}")


if __name__ == "__main__":
    main()
