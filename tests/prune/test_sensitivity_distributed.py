"""A sensitivity analysis under torchrun: 2 processes (gloo, CPU) split the points, each resumes
its own share after a failure, and rank 0's merged file equals a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sensitivity_models import TinyDetector, analyze, assert_same, make_data, randomize_bn

from slimkit.prune.sensitivity_file import load_sensitivities

WORKER = textwrap.dedent(
    """
    import json, os, sys, torch
    sys.path.insert(0, {tests!r})
    from sensitivity_models import TinyDetector, closeness, make_data, randomize_bn
    from slimkit.prune import analyze_sensitivity

    torch.manual_seed(0)
    model = randomize_bn(TinyDetector())
    data = make_data(model)
    path, fail_after = sys.argv[1], int(sys.argv[2])
    rank, calls = int(os.environ["RANK"]), []

    def metric(outputs, targets):
        calls.append(1)
        if rank == 1 and len(calls) == fail_after + 2:  # the baseline and fail_after points done
            raise SystemExit(3)
        return closeness(outputs, targets)

    result = analyze_sensitivity(model, data, metric, ratios=(0.25, 0.5, 0.75), save_file=path,
                                 progress=False)
    with open(f"{{path}}.calls{{rank}}", "w") as f:
        json.dump({{"calls": len(calls), "groups": sorted(result)}}, f)
    """
)


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_two_ranks_merge_into_what_one_process_measures(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "s.json"
    failed = torchrun(script, str(path), "2")  # rank 1 dies after 2 of its points
    assert failed.returncode != 0
    shares = sorted(p.name for p in tmp_path.glob("s.rank*-of-2.json"))
    assert shares == ["s.rank0-of-2.json", "s.rank1-of-2.json"], failed.stderr[-2000:]
    kept = load_sensitivities(tmp_path / "s.rank1-of-2.json")["sensitivities"]
    assert sum(len(v) for v in kept.values()) == 2  # what it measured before dying is kept

    done = torchrun(script, str(path), "1000000")  # no failure
    assert done.returncode == 0, done.stderr[-3000:]
    model = randomize_bn(TinyDetector())
    alone = analyze(model, make_data(model))
    merged = load_sensitivities(path)["sensitivities"]
    assert_same(merged, alone)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["s.json"]
    calls = [json.loads((tmp_path / f"s.json.calls{r}").read_text()) for r in (0, 1)]
    assert all(c["groups"] == sorted(alone) for c in calls)  # every rank returns every group
    points = sum(len(v) for v in alone.values())
    # the second run measured only what was missing: the 2 points rank 1 kept are not redone
    # (each rank also evaluates its baseline once)
    assert calls[0]["calls"] + calls[1]["calls"] - 2 <= points - 2
