"""Sensitivity analysis wall time with 1 vs N processes under torchrun (one thread each).

Trains the MobileNetV2 ×0.5 of ``sensitivity_speed.py`` (or takes random weights), then runs the
same fast analysis (every group × 9 ratios) with ``torchrun --standalone --nproc_per_node 1`` and
``--nproc_per_node N``: the ranks split the groups, each keeps its share in its own file, rank 0
merges them into the one file. Prints both wall times (whole command, and the analysis alone as
rank 0 measured it), their ratios, and checks that both files hold the same numbers. The last
line reads ``N processes / 1 process wall time: R (analysis alone: A)``.

    python benchmarks/sensitivity_ranks.py [--images 512] [--procs 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sensitivity_speed import GRIDS, build, load, train

WORKER = """
import json, sys, time, torch
sys.path.insert(0, {here!r})
from sensitivity_speed import GRIDS, batches, blob_images, build, true_class_probability
from slimkit._distributed import world
from slimkit.prune import analyze_sensitivity

torch.set_num_threads(1)
net = build("mobilenetv2", {quick!r})
net.load_state_dict(torch.load({weights!r}, weights_only=True))
net.eval()
x, y = blob_images({images}, 32, 4, 2)
start = time.perf_counter()
analyze_sensitivity(net, batches(x, y, 32), true_class_probability, ratios=GRIDS[{grid!r}],
                    save_file=sys.argv[1], progress=False)
if world()[0] == 0:
    json.dump({{"seconds": time.perf_counter() - start}}, open(sys.argv[1] + ".time", "w"))
"""


def run(procs: int, script: Path, out: Path) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(procs), str(script), str(out)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    wall = time.perf_counter() - start
    return wall, json.loads(Path(f"{out}.time").read_text())["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512, help="validation images")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--weights", choices=["trained", "random"], default="trained")
    p.add_argument("--quick", action="store_true", help="a tiny model, 2 ratios: a smoke test")
    args = p.parse_args()
    torch.set_num_threads(1)
    grid = "2" if args.quick else "9"
    images = 64 if args.quick else args.images
    net = build("mobilenetv2", args.quick)
    if args.weights == "trained":
        net = train(net, "mobilenetv2", 32, 128 if args.quick else 1024, 1 if args.quick else 4)
    print(f"{load()}; {images} images, {len(GRIDS[grid])} ratios", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights, script = Path(tmp) / "net.pt", Path(tmp) / "worker.py"
        torch.save(net.state_dict(), weights)
        here = str(Path(__file__).resolve().parent)
        script.write_text(
            WORKER.format(
                here=here, quick=args.quick, weights=str(weights), images=images, grid=grid
            )
        )
        one = run(1, script, Path(tmp) / "one.json")
        many = run(args.procs, script, Path(tmp) / "many.json")
        same = [
            json.loads((Path(tmp) / f).read_text())["sensitivities"]
            for f in ("one.json", "many.json")
        ]
    print(f"1 process:   {one[0]:.1f} s wall, analysis {one[1]:.1f} s")
    print(f"{args.procs} processes: {many[0]:.1f} s wall, analysis {many[1]:.1f} s")
    print(f"same numbers: {same[0] == same[1]}; {load()}")
    print(
        f"{args.procs} processes / 1 process wall time: {many[0] / one[0]:.3f} "
        f"(analysis alone: {many[1] / one[1]:.3f})"
    )


if __name__ == "__main__":
    main()
