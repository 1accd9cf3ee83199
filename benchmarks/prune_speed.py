"""What uniform channel pruning buys: params, MACs and CPU latency, original vs pruned.

For each zoo model every prunable group loses the same fraction of its channels (L1 criterion,
default 50%). Latency is the median of single-image calls on one thread, in PyTorch eager mode
and in ONNX Runtime FP32 (exported with ``torch.onnx.export``, opset 17). Weights are random:
speed does not depend on them.

    OMP_NUM_THREADS=1 python benchmarks/prune_speed.py [--ratio 0.5] [--runs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.bench.latency import onnx_latency, torch_latency
from slimkit.models import create_model
from slimkit.prune import prunable_groups, prune_model
from slimkit.prune.counting import count_macs, count_params, format_count

# (label, registry name, factory kwargs, input side): sizes that run in a minute or two.
MODELS: list[tuple[str, str, dict[str, Any], int]] = [
    ("mobilenetv2", "mobilenetv2", {"num_classes": 1000}, 224),
    ("yolov3_mobilenetv1", "yolov3_mobilenetv1", {"num_classes": 20, "input_size": 320}, 320),
    ("unet (base 32)", "unet", {"num_classes": 2, "base_channels": 32}, 256),
]


def export(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Export to ONNX (opset 17) with the TorchScript exporter (fast, no dynamo)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), opset_version=17, dynamo=False)
    return path


def measure(module: nn.Module, x: torch.Tensor, path: Path, args: argparse.Namespace) -> dict:
    """Params, MACs and the two latencies (ms) of one model."""
    shape = tuple(x.shape)
    eager = torch_latency(module, shape, threads=args.threads, warmup=args.warmup, runs=args.runs)
    ort = onnx_latency(
        export(module, x, path), shape, threads=args.threads, warmup=args.warmup, runs=args.runs
    )
    return {
        "params": count_params(module),
        "MACs": count_macs(module, x),
        f"torch eager {args.threads}T (ms)": eager.median_ms,
        f"ORT FP32 {args.threads}T (ms)": ort.median_ms,
    }


def report(label: str, before: dict, after: dict, info: str) -> None:
    print(f"\n{label}  [{info}]")
    print(f"  {'':24s} {'original':>10s} {'pruned':>10s} {'pruned/orig':>12s}")
    for key, b in before.items():
        a = after[key]
        fmt = format_count if key in ("params", "MACs") else (lambda v: f"{v:.2f}")
        print(f"  {key:24s} {fmt(b):>10s} {fmt(a):>10s} {a / b:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"uniform pruning ratio {args.ratio}, L1 criterion; latency = median of {args.runs} runs")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, kwargs, side in MODELS:
            model = create_model(name, **kwargs).eval()
            x = torch.randn(1, 3, side, side)
            start = time.perf_counter()
            pruned = prune_model(model, args.ratio, x).eval()
            prune_s = time.perf_counter() - start
            groups = len(prunable_groups(model, x))
            before = measure(model, x, Path(tmp) / f"{name}.onnx", args)
            after = measure(pruned, x, Path(tmp) / f"{name}_pruned.onnx", args)
            info = f"{side}x{side}, {groups} groups, pruned in {prune_s:.2f} s"
            report(label, before, after, info)


if __name__ == "__main__":
    main()
