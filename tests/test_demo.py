"""The README's main command in --quick mode: the whole workflow for the three tasks."""

import json

from slimkit.cli import main


def test_quick_demo_runs_the_whole_workflow(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for task in ("cls", "det", "seg"):
        root = tmp_path / task
        assert (root / "model.sensi.json").is_file()
        for stage in ("original/best_model", "method1/best_model", "int8", "method1_int8"):
            assert (root / stage / "model.yml").is_file(), stage
        bench = json.loads((root / "bench" / "bench.json").read_text())
        names = [row["name"] for row in bench["rows"]]
        assert names[0] == "original" and "method1 INT8" in names
        assert (root / "bench" / "bench_pareto.png").stat().st_size > 1000
        assert f"# {task}:" in out
    assert "demo finished in" in out
