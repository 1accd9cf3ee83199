"""kill -9 at random instants: every output is the old complete one or the new complete one.

``train``, ``analyze`` and ``quantize`` run as child processes of a *zygote* (a process that has
imported slimkit once and forks one child per run, so a run starts in milliseconds, not seconds)
and are killed with SIGKILL after a random delay (seeded). The zygote does the killing while the
child is still unreaped, so the signal can never reach another process. After every kill:

* each model directory loads with ``slimkit.load_model`` and every one of its files comes from
  one side: the previous complete directory (old) or one written by an uninterrupted run of the
  same command (new) — never a mixture;
* the sensitivity file loads, and every point in it equals the uninterrupted run's;

and after the run that finally completes, no temporary file or directory is left and the result
equals the uninterrupted run's. ``pytest -m slow`` selects these tests; ``make test`` runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the zygote forks (POSIX only)"),
]

KILLS = 10  # runs that must really be killed, per command
MAX_RUNS = 40  # a delay past the end of a run kills nothing; give up after this many runs

ZYGOTE = textwrap.dedent(
    """
    import json, os, signal, sys, time, traceback
    import numpy, torch
    torch.set_num_threads(1)
    from slimkit.cli import main

    def child(job):
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        torch.manual_seed(job["seed"])
        numpy.random.seed(job["seed"])
        try:
            code = main(job["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pids = []
        for job in request["jobs"]:
            pid = os.fork()
            if pid == 0:
                child(job)
            pids.append(pid)
        start, status = time.monotonic(), {}
        while len(status) < len(pids):
            for pid in pids:
                if pid not in status:
                    done, code = os.waitpid(pid, os.WNOHANG)
                    if done:
                        status[pid] = code
            late = request["kill_after"] is not None
            if late and time.monotonic() - start >= request["kill_after"]:
                for pid in pids:  # still unreaped: the pid cannot belong to anyone else
                    if pid not in status:
                        os.kill(pid, signal.SIGKILL)
                        status[pid] = os.waitpid(pid, 0)[1]
            time.sleep(0.002)
        codes = [os.waitstatus_to_exitcode(status[p]) for p in pids]
        print(json.dumps({"codes": codes, "seconds": time.monotonic() - start}), flush=True)
    """
)


class Zygote:
    """A process that imported slimkit once and runs CLI commands in forked children."""

    def __init__(self, logs: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.logs, self.count = logs, 0

    def run(self, *argvs: list[str], kill_after: float | None = None, seed: int = 0):
        """Run the commands (at once); returns their exit codes (-9: killed) and the seconds."""
        jobs = []
        for argv in argvs:
            self.count += 1
            jobs.append({"argv": argv, "seed": seed, "log": str(self.logs / f"{self.count}.log")})
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"jobs": jobs, "kill_after": kill_after}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        reply = json.loads(line)
        return reply["codes"], reply["seconds"]

    def log(self) -> str:
        return (self.logs / f"{self.count}.log").read_text()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("logs"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    import slimkit
    from slimkit.data.generate import make_dataset

    root = tmp_path_factory.mktemp("kill")
    make_dataset("cls", root / "cls", num_train=8, num_val=4, image_size=32)
    make_dataset("seg", root / "seg", num_train=4, num_val=4, image_size=32, seed=2)
    seg = slimkit.seg.UNet(num_classes=4, input_size=32, base_channels=4, depth=2)
    seg.save(root / "unet")
    return root


# -- what a directory holds -----------------------------------------------------------------------
# keys of model.yml / model.quant.json that a rerun may legitimately change: timings and what
# they decide (FP32 or INT8 shipped, hence the top-level metrics), paths (the report names the
# temporary directory it was written in)
VARYING = ("latency", "shipped", "time", "_path", "faster")
VARYING_KEYS = ("metrics",)


def _stable(value):
    if isinstance(value, dict):
        return {
            k: _stable(v)
            for k, v in value.items()
            if k not in VARYING_KEYS and not any(w in k for w in VARYING)
        }
    return value


def digests(model_dir: Path) -> dict[str, str]:
    """File name -> SHA-256 (model.yml and JSON files: of their content less ``VARYING`` keys)."""
    import yaml

    out = {}
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        if f.suffix in (".yml", ".json"):
            data = json.dumps(_stable(yaml.safe_load(data)), sort_keys=True).encode()
        out[f.name] = hashlib.sha256(data).hexdigest()
    return out


GRAPHS = ("model.onnx", "model_fp32.onnx", "model_int8.onnx")
SHIPPED = ("model.onnx", "model_int8.onnx")  # FP32 or INT8, by a latency measurement


def _is_version(mine: dict[str, str], version: dict[str, str]) -> bool:
    """Whether ``mine`` is ``version`` (the graph shipped may differ: FP32 or INT8)."""
    graphs = {version[g] for g in GRAPHS if g in version}
    needed = set(version) - {"model_int8.onnx"}
    return needed <= set(mine) and all(
        digest in graphs if name in SHIPPED else digest == version.get(name)
        for name, digest in mine.items()
    )


def side_of(model_dir: Path, versions: dict[str, list[dict[str, str]]]) -> str:
    """``old`` or ``new``: the side whose complete version the directory equals; fails otherwise.

    ``versions`` holds every complete version of each side. A Quant directory ships the FP32 or the
    INT8 graph as model.onnx by a latency measurement (the other one as model_int8.onnx or not at
    all), so those two files may hold either graph of their version.
    """
    import slimkit

    slimkit.load_model(model_dir)  # loads (a complete directory)
    mine = digests(model_dir)
    for side, candidates in versions.items():
        if any(_is_version(mine, version) for version in candidates):
            return side
    raise AssertionError(f"{model_dir} matches no complete version: {mine}")


def leftovers(root: Path) -> list[str]:
    """Temporary files or directories anywhere under ``root``."""
    from slimkit._io import is_temporary

    return [str(p) for p in root.rglob("*") if is_temporary(p.name) or p.name.endswith(".tmp")]


def kill_runs(zygote, argv, seconds, rng, check, finished=lambda: None):
    """Run ``argv`` killed after uniform random delays in [0, 1.1 ``seconds``] until ``KILLS``
    runs really died; ``check()`` after each run, ``finished()`` after one that completed.

    Returns:
        The delays of the killed runs.
    """
    delays: list[float] = []
    for _ in range(MAX_RUNS):
        delay = rng.uniform(0.0, 1.1 * seconds)
        (code,), _ = zygote.run(argv, kill_after=delay)
        check()
        if code == -9:
            delays.append(delay)
            if len(delays) == KILLS:
                return delays
        else:
            assert code == 0, zygote.log()
            finished()
    raise AssertionError(f"only {len(delays)} of {MAX_RUNS} runs were killed")


# -- train -----------------------------------------------------------------------------------------
def test_kill_train(world, zygote, tmp_path):
    train = ["train", "--model", "mobilenetv1", "--data", str(world / "cls"), "--input-size", "32"]
    train += ["--width-mult", "0.25", "--batch-size", "4", "--epochs", "3", "--optimizer", "adam"]
    run, ref = tmp_path / "run", tmp_path / "ref"
    (code,), _ = zygote.run([*train, "--lr", "0.05", "--save-dir", str(run)], seed=1)
    assert code == 0, zygote.log()
    old = {d.name: digests(d) for d in run.iterdir()}
    new_argv = [*train, "--lr", "0.01", "--save-dir"]
    (code,), seconds = zygote.run([*new_argv, str(ref)])
    assert code == 0, zygote.log()
    new = {d.name: digests(d) for d in ref.iterdir()}
    assert sorted(new) == sorted(old) == ["best_model", "epoch_1", "epoch_2", "epoch_3"]
    epochs = [v for k, v in new.items() if k.startswith("epoch_")]  # best_model is one of them

    def check() -> None:
        for name in old:
            if (run / name).exists():
                new_versions = epochs if name == "best_model" else [new[name]]
                side_of(run / name, {"old": [old[name]], "new": new_versions})
            else:  # only a kill inside the two-rename fallback swap can leave it missing
                assert sys.platform != "linux", f"{name} is missing after a kill"

    argv = [*new_argv, str(run), "--overwrite"]
    delays = kill_runs(zygote, argv, seconds, random.Random(12), check)
    (code,), _ = zygote.run(argv)
    assert code == 0, zygote.log()
    assert {d.name: digests(d) for d in run.iterdir()} == new  # deterministic: the same result
    assert leftovers(tmp_path) == []
    assert len(delays) == KILLS


# -- quantize --------------------------------------------------------------------------------------
def test_kill_quantize(world, zygote, tmp_path):
    import slimkit

    slimkit.cls.MobileNetV1(num_classes=4, input_size=32, width_mult=0.25).save(tmp_path / "m")
    quantize = ["quantize", str(tmp_path / "m"), "--data", str(world / "cls"), "--batch-num"]
    q, ref = tmp_path / "q", tmp_path / "ref"
    (code,), _ = zygote.run([*quantize, "1", "--algo", "minmax", "--save-dir", str(q)])
    assert code == 0, zygote.log()
    (code,), seconds = zygote.run([*quantize, "2", "--save-dir", str(ref)])
    assert code == 0, zygote.log()
    versions = {"old": [digests(q)], "new": [digests(ref)]}
    sides = []

    def check() -> None:
        assert q.exists(), "the Quant directory is missing after a kill"
        sides.append(side_of(q, versions))

    argv = [*quantize, "2", "--save-dir", str(q), "--overwrite"]
    delays = kill_runs(zygote, argv, seconds, random.Random(13), check)
    (code,), _ = zygote.run(argv)
    assert code == 0, zygote.log()
    assert side_of(q, versions) == "new"
    assert leftovers(tmp_path) == []
    assert len(delays) == KILLS and "old" in sides  # some kills fell before the swap


# -- analyze ---------------------------------------------------------------------------------------
def analyze_argv(world: Path, save_file: Path, *more: str) -> list[str]:
    data = ["--data", str(world / "seg"), "--batch-size", "4"]
    return ["analyze", str(world / "unet"), *data, "--save-file", str(save_file), *more]


def points(path: Path) -> dict:
    from slimkit.prune import load_sensitivities

    return load_sensitivities(path)["sensitivities"]


def test_kill_analyze_then_resume_gives_the_same_result(world, zygote, tmp_path):
    ref, sens = tmp_path / "ref.json", tmp_path / "s.json"
    (code,), seconds = zygote.run(analyze_argv(world, ref))
    assert code == 0, zygote.log()
    expected = points(ref)
    assert sum(len(v) for v in expected.values()) >= 20
    progress = [0]  # points in the file after each run, since it was last started afresh

    def check() -> None:
        got = points(sens) if sens.exists() else {}  # loads: never torn
        for group, losses in got.items():
            assert losses == {r: expected[group][r] for r in losses}, group
        count = sum(len(v) for v in got.values())
        assert count >= progress[-1]  # a resumed run never loses points
        progress.append(count)

    def finished() -> None:  # complete: same as the uninterrupted run; start again
        assert points(sens) == expected
        sens.unlink()
        progress.append(0)

    argv = analyze_argv(world, sens)
    delays = kill_runs(zygote, argv, seconds, random.Random(14), check, finished)
    (code,), _ = zygote.run(argv)
    assert code == 0, zygote.log()
    assert points(sens) == expected
    assert leftovers(tmp_path) == []
    assert len(delays) == KILLS


def test_concurrent_shards_on_one_file_keep_every_point(world, zygote, tmp_path):
    pytest.importorskip(
        "slimkit.prune.sensitivity_file", reason="needs locked writes of sensitivity files"
    )
    ref, shared = tmp_path / "ref.json", tmp_path / "shared.json"
    (code,), _ = zygote.run(analyze_argv(world, ref))
    assert code == 0, zygote.log()
    codes, _ = zygote.run(
        analyze_argv(world, shared, "--shard", "0/2"), analyze_argv(world, shared, "--shard", "1/2")
    )
    assert codes == [0, 0], zygote.log()
    assert points(shared) == points(ref)


def test_the_zygote_kills_only_its_child(zygote, tmp_path):
    """A run that ends before the delay is not killed; one that is still running is (-9)."""
    (code,), seconds = zygote.run(
        [
            "datasets",
            "make",
            "--task",
            "cls",
            str(tmp_path / "a"),
            "--num-train",
            "1",
            "--num-val",
            "1",
        ],
        kill_after=60.0,
    )
    assert code == 0 and seconds < 60
    (code,), _ = zygote.run(
        ["datasets", "make", "--task", "cls", str(tmp_path / "b")], kill_after=0.05
    )
    assert code == -9
    assert not (tmp_path / "b").exists()  # written whole or not at all
    (code,), _ = zygote.run(
        [
            "datasets",
            "make",
            "--task",
            "cls",
            str(tmp_path / "b"),
            "--num-train",
            "1",
            "--num-val",
            "1",
        ]
    )
    assert code == 0 and leftovers(tmp_path) == []  # the killed run's temp dir is gone
