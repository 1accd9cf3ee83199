"""Sensitivity analysis: the naive PaddleSlim-style loop vs slimkit's fast path, over a sweep.

Each row analyses one model (every prunable group at every ratio of the row) twice: the naive loop
(``fast=False``: ``prune_model`` and a full evaluation of the validation set for each point, plus
the baseline) and the fast path (one trace, every point pruned in place, cached activations of
everything before the group's first member replayed, batches merged where that is exact and
faster). Both must give the same numbers (to float rounding: see below). Rows: validation set
128 / 512 / 1024 images × ratios (0.1 … 0.9) and (0.3, 0.6) × trained and random weights ×
MobileNetV2 ×0.5 (32 px, 4 classes) and UNet (base 8, depth 3, 32 px, 3 classes); plus the
configuration of issue 13 (random MobileNetV2 ×1.0 at 64 px, 6 batches of 16, two ratios).

Naive and fast runs alternate (the order flips every round) and each row reports the median time
of ``--rounds`` rounds, the fast/naive ratio and the largest absolute difference between the two
sensitivity tables. The machine load is printed before and after. The last two lines are the
worst row and the headline row (trained MobileNetV2, 9 ratios, 512 images)::

    fast/naive time ratio: R max abs diff: D

The models train here for a few seconds each on synthetic images (a blob whose position and tint
give the class; for UNet, a disc and a square whose pixels are the classes). Run it on a quiet
machine, one thread::

    python benchmarks/sensitivity_speed.py                 # the whole sweep (~30 min a round)
    python benchmarks/sensitivity_speed.py --quick         # a smoke test (tiny models, 2 ratios)
    python benchmarks/sensitivity_speed.py --models mobilenetv2 --sizes 512 --grids 9 --weights trained

What bounds the ratio: the fast path runs, for every point, what follows the group's first
consuming layer, so a row's ratio tends to the mean share of a forward pass after that cut as the
validation set grows (and the naive loop's per-point ``prune_model`` matters less). For this UNet
every layer after a group's cut depends on the pruned channels, and its last full-resolution
decoder level and head, which every group feeds, take about 40 % of a forward pass: in NCHW the
points alone took 0.45 of the naive loop (trained, 2 ratios, 1024 images). Where it is faster, the
fast path runs image batches in channels-last memory format (1.7x for this UNet's forward on one
CPU thread), so "max abs diff" is float rounding there (about 1e-7) and 0 where the layout stays
NCHW or, as for MobileNetV2, gives the same bits; ``exact=True`` would keep it 0 everywhere.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.models import create_model
from slimkit.prune import analyze_sensitivity

Batches = list[tuple[torch.Tensor, torch.Tensor]]
GRIDS = {"9": tuple(round(0.1 * k, 1) for k in range(1, 10)), "2": (0.3, 0.6)}


@dataclass(frozen=True)
class Row:
    model: str
    weights: str
    grid: str
    images: int
    batch: int = 32
    size: int = 32

    def label(self) -> str:
        return (
            f"{self.model:11s} {self.weights:7s} {len(GRIDS[self.grid])} ratios "
            f"{self.images:5d} img ({self.images // self.batch} x {self.batch}, {self.size} px)"
        )


# ------------------------------------------------------------------------------------------ data
def blob_images(n: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images; the class sets where a bright blob sits and tints the background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    angle = 2 * math.pi * (labels.float() + 0.3 * torch.rand(n, generator=g)) / classes
    cy, cx = size / 2 + size / 4 * angle.sin(), size / 2 + size / 4 * angle.cos()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dist2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = torch.exp(-dist2 / (2 * (size / 8) ** 2))
    tint = torch.eye(3)[labels % 3][:, :, None, None] * 0.3
    images = 1.5 * blob[:, None] + tint + 0.8 * torch.randn(n, 3, size, size, generator=g)
    return images, labels


def shape_masks(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with a bright disc (class 1) and a dark square (class 2) on background 0."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    c = torch.rand(n, 4, generator=g) * size * 0.6 + size * 0.2
    r = size * (0.12 + 0.1 * torch.rand(n, 2, generator=g))
    disc = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2 < r[
        :, 0, None, None
    ] ** 2
    square = ((yy - c[:, 2, None, None]).abs() < r[:, 1, None, None]) & (
        (xx - c[:, 3, None, None]).abs() < r[:, 1, None, None]
    )
    masks = torch.where(square, 2, torch.where(disc, 1, 0))
    signal = disc.float() - square.float()
    images = signal[:, None] * torch.tensor([1.0, 0.5, -0.5])[:, None, None]
    return images + 0.6 * torch.randn(n, 3, size, size, generator=g), masks


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Batches:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


# ---------------------------------------------------------------------------------------- models
def build(model: str, small: bool) -> nn.Module:
    torch.manual_seed(0)
    if model == "unet":
        return create_model("unet", num_classes=3, base_channels=4 if small else 8, depth=3)
    width = 0.25 if small else (1.0 if model == "repro" else 0.5)
    return create_model("mobilenetv2", num_classes=4, width_mult=width)


def train(net: nn.Module, model: str, size: int, images: int, epochs: int) -> nn.Module:
    """A few epochs of AdamW on the synthetic task, then exact BatchNorm statistics."""
    x, y = shape_masks(images, size, 1) if model == "unet" else blob_images(images, size, 4, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recalibrate_bn(net, x)
    return net


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: torch.Tensor) -> None:
    """Set BatchNorm statistics to their exact averages over ``images`` (short training leaves
    the running averages behind the weights), then switch to eval mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(images), 64):
        net(images[i : i + 64])
    for m in norms:
        m.momentum = 0.1
    net.eval()


def true_class_probability(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Mean softmax probability of the true class (per image or per pixel): continuous, so any
    difference between the two paths would show."""
    probs = torch.cat(outputs).softmax(1)
    return float(probs.gather(1, torch.cat(targets).unsqueeze(1)).mean())


# -------------------------------------------------------------------------------------- timing
def analyse(net: nn.Module, data: Batches, grid: tuple[float, ...], fast: bool) -> dict:
    return analyze_sensitivity(
        net, data, true_class_probability, ratios=grid, fast=fast, progress=False
    )


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), "the two paths analysed different groups"
    return max((abs(a[g][r] - b[g][r]) for g in a for r in a[g]), default=0.0)


def time_row(net: nn.Module, data: Batches, grid: tuple[float, ...], rounds: int) -> dict[str, Any]:
    """Median naive and fast times over interleaved rounds, and the largest difference."""
    times: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, list[dict]] = {False: [], True: []}
    for k in range(rounds):
        for fast in (False, True) if k % 2 == 0 else (True, False):
            start = time.perf_counter()
            results[fast].append(analyse(net, data, grid, fast))
            times[fast].append(time.perf_counter() - start)
    diff = max(max_diff(n, f) for n in results[False] for f in results[True])
    naive, fast = statistics.median(times[False]), statistics.median(times[True])
    points = sum(len(v) for v in results[False][0].values())
    return {"naive": naive, "fast": fast, "ratio": fast / naive, "diff": diff, "points": points}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def rows_of(args: argparse.Namespace) -> list[Row]:
    rows = [
        Row(model, weights, grid, images)
        for model in args.models
        for weights in args.weights
        for grid in args.grids
        for images in args.sizes
        if model != "repro"
    ]
    if "repro" in args.models:  # issue 13's configuration
        rows.append(Row("repro", "random", "2", 16 if args.quick else 96, batch=16, size=64))
    return rows


def run(args: argparse.Namespace) -> dict[Row, dict[str, Any]]:
    nets: dict[tuple[str, str], nn.Module] = {}
    results = {}
    for row in rows_of(args):
        key = (row.model, row.weights)
        if key not in nets:
            net = build(row.model, args.quick)
            if row.weights == "trained":
                net = train(net, row.model, row.size, args.train_images, args.epochs)
            nets[key] = net.eval()
        if row.model == "unet":
            x, y = shape_masks(row.images, row.size, 2)
        else:
            x, y = blob_images(row.images, row.size, 4, 2)
        data = batches(x, y, row.batch)
        results[row] = res = time_row(nets[key], data, GRIDS[row.grid], args.rounds)
        print(
            f"{row.label()}: naive {res['naive']:7.1f} s  fast {res['fast']:6.1f} s  "
            f"fast/naive {res['ratio']:.3f}  max abs diff {res['diff']:.3g}  "
            f"({res['points']} points)",
            flush=True,
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenetv2", "unet", "repro"])
    p.add_argument("--weights", nargs="+", default=["trained", "random"])
    p.add_argument("--grids", nargs="+", default=["9", "2"], choices=list(GRIDS))
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 512, 1024])
    p.add_argument("--rounds", type=int, default=3, help="interleaved naive/fast rounds per row")
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest timings)")
    p.add_argument("--quick", action="store_true", help="tiny models and sets: a smoke test")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.grids, args.rounds = [32, 64], ["2"], 1
        args.train_images, args.epochs = 128, 1
    torch.set_num_threads(args.threads)
    print(f"{load()}; torch threads {args.threads}", flush=True)
    results = run(args)
    print(load())
    worst_row, worst = max(results.items(), key=lambda kv: kv[1]["ratio"])
    print(f"worst row: {worst_row.label()}: fast/naive {worst['ratio']:.3f}")
    candidates = [
        r for r in results if (r.model, r.weights, r.grid) == ("mobilenetv2", "trained", "9")
    ]
    headline = min(candidates, key=lambda r: abs(r.images - 512), default=worst_row)
    res = results[headline]
    print(f"headline row: {headline.label()}")
    diff = max(r["diff"] for r in results.values())
    print(f"fast/naive time ratio: {res['ratio']:.3f} max abs diff: {diff:.3g}")


if __name__ == "__main__":
    main()
