"""What one more process buys: ``slimkit analyze`` (and optionally ``slimkit train``) under torchrun
with 1 vs N processes, one thread each, on a small built-in model and the built-in data.

Generates a classification dataset, trains the zoo MobileNetV2 on it for a model directory, then
runs the same CLI command with ``torchrun --standalone --nproc_per_node 1`` and ``N``, timing the
whole command (process start-up included: what a user waits for). Both sensitivity files must hold
the same numbers. With ``--train-epochs E`` it also times ``slimkit train`` for E epochs with 1 vs N
processes (the global batch is the same, so each of the N ranks takes 1/N of it). The last line reads
``N processes / 1 process analysis wall time: R (max abs diff D)``.

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py [--procs 2] [--images 256] [--train-epochs 1]
    OMP_NUM_THREADS=1 python benchmarks/scale_out.py --quick     # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slimkit.data.generate import make_dataset
from slimkit.prune import load_sensitivities
from slimkit.tasks.factory import create_task, open_split


def torchrun(procs: int, *args: str) -> float:
    """Wall seconds of ``torchrun --standalone --nproc_per_node procs -m slimkit.cli args``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(procs), "-m", "slimkit.cli", *args]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def max_abs_diff(a: Path, b: Path) -> float:
    """The largest difference between two sensitivity files' losses (inf: other points)."""
    sa, sb = (load_sensitivities(p)["sensitivities"] for p in (a, b))
    if sa.keys() != sb.keys() or any(sa[g].keys() != sb[g].keys() for g in sa):
        return float("inf")
    diffs = [abs((sa[g][r] or 0.0) - (sb[g][r] or 0.0)) for g in sa for r in sa[g]]
    return max(diffs, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--images", type=int, default=256, help="validation images")
    p.add_argument("--size", type=int, default=64, help="input side (px)")
    p.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width multiplier")
    p.add_argument("--train-epochs", type=int, default=0, help="also time train (0: skip)")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    a = p.parse_args()
    if a.quick:
        a.images, a.size, a.width, a.train_epochs = 16, 32, 0.25, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = Path(tmp) / "data", Path(tmp) / "model"
        num_train = max(4 * a.images, 64)
        make_dataset("cls", data, num_train=num_train, num_val=a.images, image_size=a.size, seed=0)
        train = open_split("cls", data, "train")
        model = create_task("mobilenetv2", train.num_classes, a.size, width_mult=a.width)
        model.train(1 if a.quick else 3, train, 32, save_dir=model_dir, progress=False)
        print(f"mobilenetv2 x{a.width} at {a.size} px, {a.images} validation images", flush=True)
        if a.train_epochs:
            common = ["train", "--model", "mobilenetv2", "--data", str(data), "--input-size"]
            common += [str(a.size), "--width-mult", str(a.width), "--batch-size", "32"]
            common += ["--epochs", str(a.train_epochs)]
            t1 = torchrun(1, *common, "--save-dir", str(Path(tmp) / "t1"))
            tn = torchrun(a.procs, *common, "--save-dir", str(Path(tmp) / "tn"))
            print(
                f"train {a.train_epochs} epoch(s) of {num_train} images: 1 process {t1:.1f} s, "
                f"{a.procs} processes {tn:.1f} s"
            )
            print(f"{a.procs} processes / 1 process train wall time: {tn / t1:.3f}")
        files = [Path(tmp) / "one.json", Path(tmp) / "many.json"]
        times = [
            torchrun(
                n,
                "analyze",
                str(model_dir / "best_model"),
                "--data",
                str(data),
                "--save-file",
                str(f),
            )
            for n, f in zip((1, a.procs), files, strict=True)
        ]
        diff = max_abs_diff(*files)
        print(f"analyze: 1 process {times[0]:.1f} s, {a.procs} processes {times[1]:.1f} s")
        print(
            f"{a.procs} processes / 1 process analysis wall time: {times[1] / times[0]:.3f} "
            f"(max abs diff {diff:.2g})"
        )


if __name__ == "__main__":
    main()
