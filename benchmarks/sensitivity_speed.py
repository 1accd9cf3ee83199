"""Sensitivity analysis: the naive PaddleSlim-style loop vs slimkit's fast path.

Both analyse the same trained MobileNetV2, every prunable group at 9 ratios, and must give the same
numbers. The naive loop (``fast=False``) calls ``prune_model`` and evaluates the whole validation
set for each of the 9 N points (plus the baseline); the fast path traces each group once, prunes it
step by step, and replays the cached activations of everything before the group's first changed
layer. Prints both times, their ratio and the largest absolute difference between the two
sensitivity tables; the last line reads ``fast/naive time ratio: R max abs diff: D``.

The ratio depends on how much of a point the evaluation takes: MobileNetV2 spreads its cost evenly
over depth, so replaying the prefix saves about half of each evaluation, and step pruning saves the
per-point ``prune_model``. Larger validation sets (``--val-images``) move the ratio towards 0.5.

By default a MobileNetV2 (width 0.5, 4 classes) is trained here for a few seconds on a synthetic
image set (a blob whose position and tint give the class); ``--model-dir`` analyses a saved slimkit
classifier on the ``val_list.txt`` of ``--data-dir`` instead (``slimkit datasets make --task cls``).

    python benchmarks/sensitivity_speed.py [--val-images 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.prune.sensitivity import analyze_sensitivity

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def synthetic_set(
    n: int, size: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images; the class sets where a bright blob sits and tints the background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    angle = 2 * math.pi * (labels.float() + 0.3 * torch.rand(n, generator=g)) / num_classes
    cy = size / 2 + size / 4 * angle.sin()
    cx = size / 2 + size / 4 * angle.cos()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dist2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = torch.exp(-dist2 / (2 * (size / 8) ** 2))
    tint = torch.eye(3)[labels % 3][:, :, None, None] * 0.3
    images = 1.5 * blob[:, None] + tint + 0.8 * torch.randn(n, 3, size, size, generator=g)
    return images, labels


def train_synthetic(args: argparse.Namespace) -> tuple[nn.Module, Batches]:
    """A MobileNetV2 trained with a plain loop, and its validation batches."""
    from slimkit.models import create_model

    torch.manual_seed(0)
    net = create_model("mobilenetv2", num_classes=4, width_mult=0.5)
    x, y = synthetic_set(args.train_images, args.size, 4, seed=1)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recalibrate_bn(net, x)
    vx, vy = synthetic_set(args.val_images, args.size, 4, seed=2)
    return net, [(vx[i : i + 32], vy[i : i + 32]) for i in range(0, len(vx), 32)]


@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: torch.Tensor) -> None:
    """Set BatchNorm statistics to their exact averages over ``images`` (short training leaves
    the running averages behind the weights), then switch to eval mode."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(images), 64):
        net(images[i : i + 64])
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    net.eval()


def true_class_probability(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """Mean softmax probability of the true class: continuous, so any difference would show."""
    probs = torch.cat(outputs).softmax(1)
    return float(probs.gather(1, torch.cat(targets)[:, None]).mean())


def accuracy(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    return float((torch.cat(outputs).argmax(1) == torch.cat(targets)).float().mean())


def from_model_dir(args: argparse.Namespace) -> tuple[nn.Module, Batches, Callable[..., float]]:
    """A saved slimkit classifier, its validation batches and its task metric."""
    import os

    import slimkit

    model = slimkit.load_model(args.model_dir)
    d = args.data_dir
    ds = slimkit.datasets.ImageNet(
        d, os.path.join(d, "val_list.txt"), os.path.join(d, "labels.txt")
    )
    return model.net.eval(), model.eval_batches(ds, batch_size=32), model.metric_fn


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", help="a saved slimkit classifier (default: train one here)")
    p.add_argument("--data-dir", help="its dataset directory (with val_list.txt, labels.txt)")
    p.add_argument("--size", type=int, default=32, help="synthetic image size")
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest timings)")
    args = p.parse_args()
    if bool(args.model_dir) != bool(args.data_dir):
        p.error("--model-dir and --data-dir go together")
    torch.set_num_threads(args.threads)

    if args.model_dir:
        net, data, metric = from_model_dir(args)
    else:
        (net, data), t_train = timed(lambda: train_synthetic(args))
        metric = true_class_probability
        with torch.inference_mode():
            outs = [net(x) for x, _ in data]
        targets = [y for _, y in data]
        acc1 = accuracy(outs, targets)
        print(f"trained MobileNetV2 x0.5 in {t_train:.1f} s: val acc1 {acc1:.3f}")
    images = sum(len(x) for x, _ in data)
    print(f"validation: {images} images in {len(data)} batches, {args.threads} threads")

    def run(fast: bool) -> dict:
        return analyze_sensitivity(net, data, metric, fast=fast, progress=False)

    naive, t_naive = timed(lambda: run(False))
    fast, t_fast = timed(lambda: run(True))
    points = sum(len(v) for v in naive.values())
    diff = max(abs(fast[g][r] - naive[g][r]) for g in naive for r in naive[g])
    worst = max(max(v.values()) for v in naive.values())
    print(f"{len(naive)} groups, {points} points; largest relative loss {worst:.3f}")
    print(f"naive loop: {t_naive:.1f} s ({t_naive / points:.3f} s/point)")
    print(f"fast path:  {t_fast:.1f} s ({t_fast / points:.3f} s/point)")
    print(f"fast/naive time ratio: {t_fast / t_naive:.3f} max abs diff: {diff:.3g}")


if __name__ == "__main__":
    main()
