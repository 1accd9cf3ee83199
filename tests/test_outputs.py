"""The output rule (slimkit._outputs) as the API and the CLI apply it, and bad API calls."""

from __future__ import annotations

import json
import os

import pytest
import torch

import slimkit
from slimkit import slim
from slimkit._outputs import check_sources, check_target
from slimkit.cli import main
from slimkit.data.generate import make_dataset
from slimkit.tasks.factory import open_split


def tiny(num_classes: int = 4) -> slimkit.tasks.BaseTask:
    return slimkit.cls.MobileNetV1(num_classes=num_classes, input_size=32, width_mult=0.25)


def weights(model_dir) -> bytes:
    return (model_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cls"
    make_dataset("cls", root, num_train=8, num_val=4, image_size=32)
    return root


# -- the rule itself ------------------------------------------------------------------------------
def test_check_target_decides_by_what_is_there(tmp_path):
    none = []
    assert check_target(tmp_path / "new", "model", foreign=lambda p: none) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", "model", foreign=lambda p: none)
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "model.yml").write_text("x")
    with pytest.raises(ValueError, match="already holds a slimkit model directory; pass --overw"):
        check_target(tmp_path / "ours", "model", foreign=lambda p: none)
    check_target(tmp_path / "ours", "model", overwrite=True, foreign=lambda p: none)
    with pytest.raises(ValueError, match=r"not part of a slimkit dataset \(x\.txt\)"):
        check_target(tmp_path / "ours", "dataset", overwrite=True, foreign=lambda p: ["x.txt"])
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(ValueError, match="already exists"):
        check_target(tmp_path / "f.json", "file")
    check_target(tmp_path / "f.json", "file", overwrite=True)
    check_target(tmp_path / "f.json", "resume")  # its owner decides whether to resume it
    with pytest.raises(ValueError, match="not a file slimkit wrote"):
        check_target(tmp_path / "f.json", "file", overwrite=True, foreign=lambda p: [p.name])
    with pytest.raises(ValueError, match="is a directory"):
        check_target(tmp_path / "ours", "file", overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        check_target(tmp_path / "f.json", "model", overwrite=True)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_target(tmp_path / "f.json" / "sub" / "m", "model")


def test_a_source_is_never_a_destination(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.yml").write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    for target, how in ((model, "is"), (tmp_path, "contains"), (model / "q", "lies inside")):
        with pytest.raises(ValueError, match=f"{how} the input"):
            check_sources(target, [model])
    check_sources(data / "output", [data])  # inside a dataset directory: allowed
    with pytest.raises(ValueError, match="is the input"):
        check_sources(data, [data])
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(ValueError, match="is the input"):
        check_sources(link, [model])  # symlinks are resolved


# -- the API ---------------------------------------------------------------------------------------
def test_save_dataset_prune_and_quantize_follow_the_rule(tmp_path, data):
    model = tiny()
    model.save(tmp_path / "a")
    tiny().save(tmp_path / "b")
    b = weights(tmp_path / "b")
    with pytest.raises(ValueError, match="--overwrite"):
        slim.prune(tmp_path / "a", 0.5, tmp_path / "b")
    assert weights(tmp_path / "b") == b
    slim.prune(tmp_path / "a", 0.5, tmp_path / "b", overwrite=True)
    assert slimkit.load_model(tmp_path / "b").status == "Prune"
    a = slimkit.load_model(tmp_path / "a")
    val = open_split("cls", data, "val")
    with pytest.raises(ValueError, match="never writes over its own input"):
        slim.export_quant_model(a, val, batch_num=1, save_dir=tmp_path / "a", overwrite=True)
    assert slimkit.load_model(tmp_path / "a").status == "Normal"
    with pytest.raises(ValueError, match="--overwrite"):
        make_dataset("cls", data, num_train=4, num_val=4, image_size=32)


def test_make_dataset_never_replaces_the_users_own_files(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "labels.txt").write_text("cat\ndog\n")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"not part of a slimkit dataset \(labels.txt\)"):
            make_dataset("cls", own, num_train=4, num_val=4, image_size=32, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == ["own"]
    assert (own / "labels.txt").read_text() == "cat\ndog\n"
    gen = tmp_path / "gen"
    make_dataset("seg", gen, num_train=2, num_val=2, image_size=32)
    make_dataset("cls", gen, num_train=4, num_val=4, image_size=32, overwrite=True)
    assert (gen / "labels.txt").read_text().split() == ["circle", "square", "triangle", "cross"]
    assert not (gen / "images").exists()  # replaced whole: nothing of the seg data is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "own"]


def test_train_replaces_its_own_outputs_but_not_an_earlier_run(tmp_path, data):
    train, val = open_split("cls", data, "train"), open_split("cls", data, "val")
    args = dict(train_dataset=train, eval_dataset=val, train_batch_size=4, progress=False)
    tiny().train(num_epochs=2, save_dir=tmp_path / "run", **args)
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == ["best_model", "epoch_1", "epoch_2"]  # the targets it checked up front
    before = {d: weights(tmp_path / "run" / d) for d in written}
    with pytest.raises(ValueError, match="best_model' already holds a slimkit model directory"):
        tiny().train(num_epochs=1, save_dir=tmp_path / "run", **args)
    model = slimkit.load_model(tmp_path / "run" / "best_model")
    with pytest.raises(ValueError, match="never writes over its own input"):
        model.train(num_epochs=1, save_dir=tmp_path / "run", overwrite=True, **args)
    assert {d: weights(tmp_path / "run" / d) for d in written} == before
    tiny().train(num_epochs=1, save_dir=tmp_path / "run", overwrite=True, **args)
    assert weights(tmp_path / "run" / "epoch_1") != before["epoch_1"]
    assert weights(tmp_path / "run" / "epoch_2") == before["epoch_2"]  # not this run's: kept


def test_train_refuses_a_bad_save_dir_before_training(tmp_path, data, monkeypatch):
    train = open_split("cls", data, "train")
    model = tiny()
    monkeypatch.setattr(type(model), "_fit", lambda *a, **k: pytest.fail("training started"))
    (tmp_path / "file").write_text("x")
    for save_dir in (tmp_path / "file", "/proc/sys/slimkit_out", tmp_path / "file" / "x"):
        with pytest.raises(ValueError, match="file|permission"):
            model.train(num_epochs=1, train_dataset=train, save_dir=save_dir, progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"learning_rate": float("nan")}, ValueError, "learning_rate must be a finite number"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must be > 0"),
        ({"save_interval_epochs": 0}, ValueError, "save_interval_epochs must be >= 1"),
        ({"train_batch_size": 0}, ValueError, "train_batch_size must be >= 1"),
        ({"num_epochs": 2.5}, TypeError, "num_epochs must be an integer"),
        ({"num_epochs": -1}, ValueError, "num_epochs must be in"),
        ({"weight_decay": float("inf")}, ValueError, "weight_decay must be a finite number"),
        ({"lr_decay_epochs": "30"}, TypeError, "lr_decay_epochs must be a list"),
        ({"train_dataset": "data/cls"}, TypeError, "got the path 'data/cls'"),
        ({"eval_dataset": None, "train_dataset": None}, TypeError, "train_dataset must be a dat"),
        ({"sensitivities_file": "s.json", "eval_metric_loss": float("nan")}, ValueError, "nan"),
        ({"prune_round_to": 0}, ValueError, "prune_round_to must be >= 1"),
    ],
)
def test_train_arguments_are_checked_before_anything_runs(tmp_path, data, kwargs, error, match):
    args = dict(num_epochs=1, train_dataset=open_split("cls", data, "train"), progress=False)
    args.update(save_dir=tmp_path / "run", **kwargs)
    if "sensitivities_file" in kwargs:
        args["sensitivities_file"] = tmp_path / "s.json"
        args["sensitivities_file"].write_text("{}")  # exists; its content is read later
    with pytest.raises(error, match=match):
        tiny().train(**args)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: tiny(num_classes=4.7), TypeError, "num_classes must be an integer"),
        (lambda: tiny(num_classes=10**9), ValueError, r"num_classes must be in \[1, 100000\]"),
        (lambda: slimkit.cls.MobileNetV1(4, input_size=100000), ValueError, "input_size must"),
        (lambda: slimkit.cls.MobileNetV1(4, labels="abcd"), TypeError, "labels must be a list"),
        (lambda: slimkit.cls.MobileNetV1(4, labels=["a"]), ValueError, "labels has 1 class"),
        (lambda: slimkit.cls.MobileNetV1(4, std=(1, 0, 1)), ValueError, "std must be > 0"),
        (lambda: slimkit.cls.MobileNetV1(4, width_mult=1e4), ValueError, "parameters"),
    ],
)
def test_model_arguments_are_checked_before_allocating(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_strings_where_lists_are_due(tmp_path, data, monkeypatch):
    model = tiny()
    model.save(tmp_path / "m")
    assert slim.prune(tmp_path / "m", "0.5", tmp_path / "p").status == "Prune"  # parsed
    with pytest.raises(ValueError, match="got the string 'half'"):
        slim.prune(tmp_path / "m", "half", tmp_path / "p2")
    seen = {}

    class Stop(Exception):
        pass

    def config(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(slim, "QuantConfig", config)
    with pytest.raises(Stop):
        slim.export_quant_model(model, open_split("cls", data, "val"), exclude="/stem/conv/Conv")
    assert seen["exclude"] == ("/stem/conv/Conv",)  # one pattern, not 15 characters
    with pytest.raises(TypeError, match="exclude must be a string or a list of strings"):
        slim.export_quant_model(model, open_split("cls", data, "val"), exclude=3)
    with pytest.raises(TypeError, match="test_dataset must be a dataset"):
        slim.export_quant_model(model, None)
    with pytest.raises(TypeError, match="got the path"):
        model.evaluate(str(data))


# -- the CLI ---------------------------------------------------------------------------------------
def test_overwrite_flag_replaces_slimkits_own_outputs(tmp_path, data, capsys):
    tiny().save(tmp_path / "m")
    tiny().save(tmp_path / "other")
    prune = ["prune", str(tmp_path / "m"), "--ratios", "0.5", "--save-dir", str(tmp_path / "other")]
    assert main(prune) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*prune, "--overwrite"]) == 0
    assert slimkit.load_model(tmp_path / "other").status == "Prune"
    a = str(tmp_path / "a.json")
    analyze = ["analyze", str(tmp_path / "m"), "--data", str(data), "--batch-size", "4"]
    assert main([*analyze, "--save-file", a, "--groups", "stem.conv"]) == 0
    merged = str(tmp_path / "all.json")
    assert main(["merge", a, "-o", merged]) == 0
    assert main(["merge", a, "-o", merged]) == 2  # an existing result: only on request
    assert main(["merge", a, "-o", merged, "--overwrite"]) == 0
    assert json.loads(open(merged).read())["sensitivities"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers


def test_one_line_for_os_errors(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(torch.nn.Module, "state_dict", full)
    tiny_dir = tmp_path / "m"
    with pytest.raises(OSError):
        tiny().save(tiny_dir)
    assert not tiny_dir.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr("slimkit.cli.make_dataset", full)
    assert main(["datasets", "make", "--task", "cls", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == f"slimkit: error: No space left on device: '{tmp_path}/x'\n"


# -- values read back from a calibration cache ------------------------------------------------------
@pytest.mark.parametrize(
    "tamper",
    [
        lambda meta, hist: meta["tensors"]["x"].update(upper=float("nan")),
        lambda meta, hist: meta["tensors"]["x"].update(upper=-1.0),
        lambda meta, hist: meta["tensors"]["x"].update(count=-5),
        lambda meta, hist: meta["tensors"]["x"].update(count=10**9),  # does not add up
        lambda meta, hist: meta["tensors"]["x"].update(min=float("inf")),
        lambda meta, hist: meta["tensors"]["x"].update(min=3.0, max=-3.0),
        lambda meta, hist: meta["tensors"]["x"].pop("upper"),
        lambda meta, hist: meta["tensors"]["x"].update(upper="big"),
        lambda meta, hist: meta.update(tensors=[1, 2]),
        lambda meta, hist: hist.__setitem__((0, 0), -7),
    ],
)
def test_an_implausible_calibration_cache_is_recomputed(tmp_path, tamper):
    import numpy as np

    from slimkit.quant.observers import HistogramObserver, load_histograms, save_histograms

    observer = HistogramObserver(64)
    observer.update(np.linspace(-2.0, 3.0, 1000, dtype=np.float32))
    meta_path = save_histograms(tmp_path, "k" * 64, {"x": observer}, {})
    assert load_histograms(tmp_path, "k" * 64, ["x"])["x"].state() == observer.state()
    meta = json.loads(meta_path.read_text())
    with np.load(meta_path.with_suffix(".npz")) as data:
        hist, neg = data["hist"].copy(), data["neg_hist"]
    tamper(meta, hist)
    meta_path.write_text(json.dumps(meta))
    np.savez_compressed(meta_path.with_suffix(".npz"), hist=hist, neg_hist=neg)
    assert load_histograms(tmp_path, "k" * 64, ["x"]) is None  # not trusted: calibrate again
    assert sorted(p.name for p in tmp_path.iterdir()) == [meta_path.name, f"calib_{'k' * 16}.npz"]
