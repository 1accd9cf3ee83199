"""Sensitivity files: every value is checked on load, resume, merge and when choosing ratios;
the criterion travels with the file; concurrent workers on one file keep every point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sensitivity_models import TinyClassifier, analyze, assert_same, make_data, randomize_bn

from slimkit.prune import get_ratios_by_loss, ratios_for_flops
from slimkit.prune.sensitivity_file import FORMAT, load_sensitivities, merge_sensitivities


def record(metric: str = "acc1", baseline: float = 0.8, **losses: dict) -> dict:
    return {
        "format": FORMAT,
        "version": 1,
        "architecture": "Net",
        "fingerprint": "sha256:x",
        "metric": metric,
        "baseline": baseline,
        "ratios": [0.25, 0.5],
        "criterion": "l1",
        "sensitivities": losses or {"a": {"0.25": 0.01, "0.5": 0.04}},
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sensitivities": {"a": {"0.25": "NaN"}}}, "not a number|finite"),
        ({"sensitivities": {"a": {"0.25": 1e400}}}, "finite"),
        ({"sensitivities": {"a": {"1.5": 0.1}}}, r"ratio key.*\(0, 1\)"),
        ({"sensitivities": {"a": {"0": 0.1}}}, r"\(0, 1\)"),
        ({"sensitivities": {"a": {"0.25": 1.2}}}, r"pruned acc1 would be .*outside \[0, 1\]"),
        ({"sensitivities": {"a": {"0.25": -0.5}}}, r"pruned acc1 would be 1\.2"),
        ({"sensitivities": {"a": {"0.25": True}}}, "not a number"),
        ({"sensitivities": {"a": [0.1]}}, "expected a name and"),
        ({"baseline": -0.5}, "baseline"),
        ({"baseline": 1.5}, "baseline 1.5 is impossible for 'acc1'"),
        ({"ratios": [0.5, 2]}, r"ratios.*\(0, 1\)"),
        ({"unprunable": {"a": "broken"}}, "have losses and are unprunable"),
        ({"unprunable": ["a"]}, "'unprunable' must map"),
    ],
)
def test_bad_values_are_refused_on_load(tmp_path: Path, change: dict, message: str) -> None:
    raw = record()
    raw.update(change)
    path = write(tmp_path / "s.json", json.dumps(raw))
    with pytest.raises(ValueError, match=message):
        load_sensitivities(path)
    with pytest.raises(ValueError, match=message):
        get_ratios_by_loss(raw, 0.05)  # the same record passed as a dict


def test_json_constants_are_refused(tmp_path: Path) -> None:
    text = json.dumps(record()).replace("0.01", "NaN")
    with pytest.raises(ValueError, match="NaN; values must be finite"):
        load_sensitivities(write(tmp_path / "nan.json", text))
    text = json.dumps(record()).replace("0.04", "-Infinity")
    with pytest.raises(ValueError, match="Infinity"):
        merge_sensitivities([write(tmp_path / "inf.json", text)])


def test_what_is_legal() -> None:
    # improving the metric gives a negative loss; within [1 - 1/baseline, 1] for acc1
    ok = record(a={"0.25": -0.25, "0.5": 1.0})
    assert get_ratios_by_loss(ok, 0.0) == {"a": pytest.approx(0.25 + 0.25 * 0.25 / 1.25)}
    # an open-ended metric may lose more than 100 % (it can turn negative)
    psnr = record(metric="psnr_margin", baseline=3.0, a={"0.25": 0.1, "0.5": 2.5})
    assert get_ratios_by_loss(psnr, 0.2) == {"a": pytest.approx(0.25 + 0.1 / 2.4 * 0.25)}
    with pytest.raises(ValueError, match="finite"):
        get_ratios_by_loss({"a": {0.5: math.nan}}, 0.05)  # raw dicts are checked too
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        get_ratios_by_loss({"a": {1.0: 0.1}}, 0.05)


def test_resume_rejects_bad_points_and_merge_rejects_nan_shards(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "s.json"
    good = analyze(model, data, save_file=path)
    raw = json.loads(path.read_text())
    for losses in raw["sensitivities"].values():
        for key in losses:
            losses[key] = math.nan
    bad = write(tmp_path / "bad.json", json.dumps(raw, allow_nan=True))
    with pytest.raises(ValueError, match="NaN.*restart=True"):
        analyze(model, data, save_file=bad)  # never resumed with NaN points
    with pytest.raises(ValueError, match="NaN"):
        merge_sensitivities([path, bad])
    assert_same(analyze(model, data, save_file=bad, restart=True), good)


def test_api_strings_where_lists_are_expected(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "s.json"
    whole = analyze(model, data, save_file=path)
    assert (
        merge_sensitivities(str(path))["sensitivities"] == load_sensitivities(path)["sensitivities"]
    )
    assert merge_sensitivities(path)["baseline"] == 1.0
    group = sorted(whole)[1]
    assert list(analyze(model, data, groups=group)) == [group]
    with pytest.raises(TypeError, match="str or Path"):
        load_sensitivities(3)


def test_criterion_is_recorded_and_checked(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "fpgm.json"
    analyze(model, data, criterion="fpgm", save_file=path)
    assert get_ratios_by_loss(path, 0.5, criterion="fpgm")
    with pytest.raises(ValueError, match="analysed with criterion 'fpgm' but are used with 'l1'"):
        get_ratios_by_loss(path, 0.5, criterion="l1")
    with pytest.raises(ValueError, match="criterion='fpgm'"):
        ratios_for_flops(path, model, data[0][0], 0.2, criterion="l1")
    with pytest.raises(ValueError, match="criterion 'fpgm' in the file vs 'l1' in this run"):
        analyze(model, data, save_file=path)


WORKER = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from sensitivity_models import TinyClassifier, closeness, make_data, randomize_bn
    from slimkit.prune import analyze_sensitivity

    torch.manual_seed(0)
    model = randomize_bn(TinyClassifier())
    data = make_data(model)

    def slow(outputs, targets):  # interleave the two workers' writes
        time.sleep(0.05)
        return closeness(outputs, targets)

    index, count, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    analyze_sensitivity(model, data, slow, ratios=(0.25, 0.5, 0.75), save_file=path,
                        shard=None if count == 0 else (index, count), progress=False)
    """
)


def test_concurrent_workers_on_one_file_keep_every_point(tmp_path: Path) -> None:
    script = write(tmp_path / "worker.py", WORKER.format(tests=str(Path(__file__).parent)))
    shared, alone = tmp_path / "shared.json", tmp_path / "alone.json"
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": ":".join(sys.path)}
    workers = [
        subprocess.Popen([sys.executable, str(script), str(i), "2", str(shared)], env=env)
        for i in range(2)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    subprocess.run([sys.executable, str(script), "0", "0", str(alone)], env=env, check=True)
    together, single = load_sensitivities(shared), load_sensitivities(alone)
    assert together["sensitivities"].keys() == single["sensitivities"].keys()
    assert_same(together["sensitivities"], single["sensitivities"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.json", "shared.json", "worker.py"]


def test_arguments_as_users_pass_them() -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    assert_same(analyze(model, data, ratios=0.5), analyze(model, data, ratios=[0.5]))
    assert_same(analyze(model, data, shard="1/2"), analyze(model, data, shard=(1, 2)))
    with pytest.raises(TypeError, match="ratios must be numbers"):
        analyze(model, data, ratios="0.5")
    for bad in [(0.5, "0.7"), (0.5, True), (0.5, math.nan)]:
        with pytest.raises(ValueError, match=r"fractions in \(0, 1\)"):
            analyze(model, data, ratios=bad)
    for shard in ["2/2", "a/b", (1,), (0, 2, 3), (True, 2)]:
        with pytest.raises(ValueError, match="shard must be"):
            analyze(model, data, shard=shard)
    with pytest.raises(ValueError, match="loss_cap"):
        analyze(model, data, loss_cap=math.nan)
    with pytest.raises(ValueError, match="cache_memory_mb"):
        analyze(model, data, cache_memory_mb=-1)
    with pytest.raises(TypeError, match="groups must be"):
        analyze(model, data, groups=3)


def test_merge_never_replaces_other_files(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "s.json"
    analyze(model, data, save_file=path)
    target = tmp_path / "model.yml"
    target.write_text("task: cls\n")
    with pytest.raises(ValueError, match="not a slimkit sensitivity file"):
        merge_sensitivities([path], save_file=target)
    assert target.read_text() == "task: cls\n"
    merge_sensitivities([path], save_file=tmp_path / "all.json")
    merge_sensitivities([path], save_file=tmp_path / "all.json")  # a sensitivity file: replaced
