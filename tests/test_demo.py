"""The README's main command in --quick mode: the whole workflow for the three tasks."""

import json

import pytest
import yaml

from slimkit.cli import main
from slimkit.demo import CONFIGS, prepare_data


def test_quick_demo_runs_the_whole_workflow(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    learned = 0
    for task in ("cls", "det", "seg"):
        root = tmp_path / task
        bench = json.loads((root / "bench" / "bench.json").read_text())
        names = [row["name"] for row in bench["rows"]]
        assert names[0] == "original" and "original INT8" in names
        if bench["rows"][0]["metric"] == 0:  # a --quick detector may not learn in two steps
            assert "skipped: the original model's metric is 0" in out
            continue
        assert (root / "model.sensi.json").is_file()
        for stage in ("method1/best_model", "int8", "method1_int8"):
            assert (root / stage / "model.yml").is_file(), stage
        assert "method1 INT8" in names
        learned += 1
        assert (root / "bench" / "bench_pareto.png").stat().st_size > 1000
        assert f"# {task}:" in out
    assert learned >= 2  # cls and seg always get a positive metric
    assert "demo finished in" in out

    # a second budget reuses the original and the analysis, and writes beside the first run
    seg = tmp_path / "seg"
    kept = {p: p.stat().st_mtime_ns for p in (seg / "original").rglob("*") if p.is_file()}
    first = (seg / "method1" / "best_model" / "model.yml").read_text()
    assert (
        main(
            [
                "demo",
                "--quick",
                "--tasks",
                "seg",
                "--out",
                str(tmp_path),
                "--eval-metric-loss",
                "0.05",
            ]
        )
        == 0
    )
    record = yaml.safe_load((seg / "method1_loss0.05" / "best_model" / "model.yml").read_text())
    assert record["pruning"]["eval_metric_loss"] == 0.05
    assert (seg / "method1_loss0.05_int8" / "model.yml").is_file()
    assert "method1 (loss 0.05)" in (seg / "bench_loss0.05" / "bench.md").read_text()
    summary = json.loads((tmp_path / "summary_loss0.05.json").read_text())
    assert summary["eval_metric_loss"] == {"seg": 0.05}
    assert kept == {p: p.stat().st_mtime_ns for p in kept}  # the original is not redone
    assert (seg / "method1" / "best_model" / "model.yml").read_text() == first


def test_demo_budget_is_checked_before_any_work(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "o"), "--eval-metric-loss", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err == "slimkit: error: eval_metric_loss must be in (0, 1), got 1.5\n"
    assert not (tmp_path / "o").exists()


def test_demo_data_of_other_sizes_is_refused(tmp_path):
    # a quick run's data in the folder of a full run would silently train on 16 images
    quick = CONFIGS["seg"].quick()
    train_ds, val_ds = prepare_data(quick, tmp_path / "seg")
    assert (len(train_ds), len(val_ds)) == (quick.num_train, quick.num_val)
    with pytest.raises(ValueError, match="16 train / 8 val images but this demo makes 600 / 100"):
        prepare_data(CONFIGS["seg"], tmp_path / "seg")
