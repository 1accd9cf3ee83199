"""The `slimkit` command: thin wrappers, one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from slimkit.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimkit.cli", *args], capture_output=True, text=True
    )


def test_datasets_train_evaluate_predict(tmp_path, capsys):
    data = tmp_path / "cls"
    assert (
        main(
            [
                "datasets",
                "make",
                "--task",
                "cls",
                str(data),
                "--num-train",
                "16",
                "--num-val",
                "8",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    assert (data / "train_list.txt").is_file() and (data / "labels.txt").is_file()
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "mobilenetv1",
                "--data",
                str(data),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--input-size",
                "32",
                "--width-mult",
                "0.25",
                "--save-dir",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out / "best_model"), "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["acc1"] <= 1.0
    image = next((data).rglob("*.jpg"))
    assert main(["predict", str(out / "best_model"), str(image)]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pred["result"][0]["category"] in (data / "labels.txt").read_text().split()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["evaluate", "/nonexistent/model", "--data", "/tmp"], "does not exist"),
        (["train", "--model", "mobilenetv3", "--data", "/tmp"], "mobilenetv2"),
        (["prune", "/nonexistent/model", "--ratios", "abc", "--save-dir", "/tmp/x"], "--ratios"),
        (
            ["prune", "/nonexistent/model", "--ratios", "0.5", "--save-dir", "/tmp/x"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimkit: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_compression_commands_chain(tmp_path, capsys):
    """prune → analyze (two shards) → merge → visualize → quantize → bench, on a tiny model."""
    import slimkit
    from slimkit.data.generate import make_dataset

    data = tmp_path / "seg"
    make_dataset("seg", data, num_train=8, num_val=4, image_size=32, seed=2)
    model = slimkit.seg.UNet(num_classes=4, input_size=32, base_channels=4, depth=2)
    model.save(tmp_path / "m")
    assert (
        main(["prune", str(tmp_path / "m"), "--ratios", "0.5", "--save-dir", str(tmp_path / "p")])
        == 0
    )
    assert "params" in capsys.readouterr().out
    pruned = slimkit.load_model(tmp_path / "p")
    assert pruned.status == "Prune" and sum(p.numel() for p in pruned.net.parameters()) < sum(
        p.numel() for p in model.net.parameters()
    )
    shards = []
    for i in range(2):
        shards.append(str(tmp_path / f"s{i}.json"))
        assert (
            main(
                [
                    "analyze",
                    str(tmp_path / "m"),
                    "--data",
                    str(data),
                    "--save-file",
                    shards[-1],
                    "--shard",
                    f"{i}/2",
                    "--batch-size",
                    "4",
                    *(["--exact"] if i == 0 else []),  # one shard bit for bit the loop's
                ]
            )
            == 0
        )
    assert main(["merge", *shards, "-o", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["metric"] == "miou" and len(merged["sensitivities"]) >= 2
    assert (
        main(
            [
                "visualize",
                str(tmp_path / "m"),
                str(tmp_path / "all.json"),
                "--save-dir",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    assert (tmp_path / "plots" / "sensi_budget.png").stat().st_size > 0
    # no built-in sensitivities for this width: a clear error, not a crash
    with pytest.raises(ValueError, match="no built-in \\(DEFAULT\\) sensitivities"):
        model.train(
            num_epochs=1,
            train_dataset=slimkit.datasets.SegDataset(
                data, data / "train_list.txt", data / "labels.txt"
            ),
            sensitivities_file="DEFAULT",
            save_dir=tmp_path / "d",
            progress=False,
        )
    assert (
        main(
            [
                "quantize",
                str(tmp_path / "p"),
                "--data",
                str(data),
                "--batch-num",
                "2",
                "--save-dir",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    assert slimkit.load_model(tmp_path / "q").status == "Quant"
    assert (
        main(
            [
                "bench",
                str(tmp_path / "m"),
                str(tmp_path / "q"),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "b"),
                "--runs",
                "2",
            ]
        )
        == 0
    )
    assert (tmp_path / "b" / "bench.md").is_file()


def test_flag_errors_are_one_line_naming_the_command():
    proc = run_cli("prune", "m", "--ratios", "0.5", "--save-dir", "o", "--criterion", "l3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("slimkit: error: prune: argument --criterion: invalid choice")
    assert "'fpgm'" in proc.stderr  # the choices come from slimkit.prune.CRITERIA


def test_choices_come_from_the_libraries(capsys):
    from slimkit.models import list_models
    from slimkit.prune import CRITERIA
    from slimkit.quant.config import ALGOS

    for command, values in (("train", list_models()), ("analyze", CRITERIA), ("quantize", ALGOS)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(v in text for v in values), (command, values)


def test_a_bug_is_not_turned_into_a_user_error(monkeypatch):
    """A TypeError from the library is a bug: it propagates with its traceback."""
    import slimkit.cli as cli

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "merge_sensitivities", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["merge", "a.json", "-o", "b.json"])
