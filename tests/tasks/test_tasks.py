"""Task API: train → evaluate → save → load round trips on tiny built-in data."""

from pathlib import Path

import numpy as np
import pytest
import torch

import slimkit
from slimkit.data.generate import make_dataset
from slimkit.tasks.factory import create_task, open_split

TINY = {
    "cls": ("mobilenetv2", {"width_mult": 0.25}, 32),
    "det": ("yolov3_mobilenetv1", {"width_mult": 0.25}, 64),
    "seg": ("unet", {"base_channels": 8}, 32),
}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    dirs = {}
    for task, (_, _, size) in TINY.items():
        dirs[task] = root / task
        make_dataset(task, dirs[task], num_train=16, num_val=8, image_size=size, seed=1)
    return dirs


def _model(task: str, ds) -> slimkit.tasks.BaseTask:
    arch, kwargs, size = TINY[task]
    return create_task(arch, ds.num_classes, size, labels=ds.labels, **kwargs)


@pytest.mark.parametrize("task", ["cls", "det", "seg"])
def test_train_save_load_round_trip(task, data_dirs, tmp_path):
    train_ds, val_ds = (
        open_split(task, data_dirs[task], "train"),
        open_split(task, data_dirs[task], "val"),
    )
    model = _model(task, train_ds)
    best = model.train(
        num_epochs=1,
        train_dataset=train_ds,
        train_batch_size=8,
        eval_dataset=val_ds,
        save_dir=tmp_path,
        learning_rate=0.01,
        progress=False,
    )
    assert model.metric_name in best and 0.0 <= best[model.metric_name] <= 1.0
    for d in ("best_model", "epoch_1"):
        assert (tmp_path / d / "model.yml").is_file() and (
            tmp_path / d / "model.safetensors"
        ).is_file()
    model.save(tmp_path / "saved")
    loaded = slimkit.load_model(tmp_path / "saved")
    assert type(loaded) is type(model) and loaded.status == "Normal"
    x = torch.randn(2, 3, *model.input_size)
    model.net.eval()
    with torch.no_grad():
        a, b = model.net(x), loaded.net(x)
    for ta, tb in zip(
        a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True
    ):
        assert torch.equal(ta, tb)
    assert loaded.evaluate(val_ds) == model.evaluate(val_ds)


def test_predict_formats(data_dirs):
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cls = _model("cls", open_split("cls", data_dirs["cls"]))
    top = cls.predict(img)
    assert len(top) == min(5, cls.num_classes) and top[0]["category"] in cls.labels
    assert top[0]["score"] >= top[-1]["score"]
    seg = _model("seg", open_split("seg", data_dirs["seg"]))
    out = seg.predict([img, img])
    assert len(out) == 2 and out[0]["label_map"].shape == (40, 50)
    det = _model("det", open_split("det", data_dirs["det"]))
    dets = det.predict(img)
    for d in dets:
        x, y, w, h = d["bbox"]
        assert w >= 0 and h >= 0 and -1e-3 <= x <= 50 and -1e-3 <= y <= 40


def test_pretrain_weights_mismatch_is_clear(data_dirs, tmp_path):
    ds = open_split("cls", data_dirs["cls"])
    model = _model("cls", ds)
    model.save(tmp_path / "m")
    other = slimkit.cls.MobileNetV1(num_classes=ds.num_classes, input_size=32, width_mult=0.25)
    with pytest.raises(ValueError, match="mobilenetv2"):
        other.load_weights_from(tmp_path / "m")


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        slimkit.load_model(tmp_path / "nope")
    with pytest.raises(ValueError, match="model.yml"):
        slimkit.load_model(tmp_path)
    (tmp_path / "model.yml").write_text("task: cls\n")
    with pytest.raises(ValueError, match="lacks required keys"):
        slimkit.load_model(tmp_path)


def test_wrong_task_dataset_is_clear(data_dirs):
    model = _model("cls", open_split("cls", data_dirs["cls"]))
    with pytest.raises(ValueError, match="'seg' dataset"):
        model.evaluate(open_split("seg", data_dirs["seg"], "val"))


def test_method1_pruning_rounds_kept_channels(data_dirs, tmp_path):
    from torch import nn

    from slimkit import slim

    train_ds = open_split("cls", data_dirs["cls"], "train")
    val_ds = open_split("cls", data_dirs["cls"], "val")
    model = slimkit.cls.MobileNetV2(num_classes=train_ds.num_classes, input_size=32, width_mult=1.0)
    model.train(
        num_epochs=1,
        train_dataset=train_ds,
        train_batch_size=8,
        save_dir=tmp_path / "a",
        progress=False,
    )
    sens = tmp_path / "s.json"
    slim.analysis(model, val_ds, batch_size=8, save_file=sens, ratios=(0.3, 0.6), progress=False)
    before = {n: m.out_channels for n, m in model.net.named_modules() if isinstance(m, nn.Conv2d)}
    model.train(
        num_epochs=0,
        train_dataset=train_ds,
        sensitivities_file=sens,
        eval_metric_loss=0.99,
        prune_mode="per_group",  # no eval_dataset: PaddleX's per-group choice
        prune_round_to=8,
        save_dir=tmp_path / "b",
        progress=False,
    )
    assert model.status == "Prune"
    after = {n: m.out_channels for n, m in model.net.named_modules() if isinstance(m, nn.Conv2d)}
    changed = [n for n in after if after[n] != before[n]]
    assert changed and all(after[n] % 8 == 0 for n in changed)
    loaded = slimkit.load_model(tmp_path / "b" / "best_model")
    assert (
        loaded.status == "Prune"
        and loaded.net.classifier.in_features == model.net.classifier.in_features
    )


def test_save_replaces_a_model_dir_whole_and_refuses_foreign_files(tmp_path):
    model = slimkit.seg.UNet(num_classes=2, input_size=32, base_channels=4, depth=2)
    target = tmp_path / "m"
    model.prune(0.5, log_fn=lambda line: None)
    model.save(target)
    assert (target / "prune_plan.json").is_file()
    fresh = slimkit.seg.UNet(num_classes=2, input_size=32, base_channels=4, depth=2)
    with pytest.raises(ValueError, match="already holds a slimkit model directory.*--overwrite"):
        fresh.save(target)  # an existing model is replaced only on request
    assert slimkit.load_model(target).status == "Prune"
    fresh.save(target, overwrite=True)  # Normal over Prune: the stale plan goes with the old dir
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "model.yml"]
    assert slimkit.load_model(target).status == "Normal"
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not part of a slimkit model directory \\(notes.txt\\)"):
        fresh.save(target, overwrite=True)  # never, not even with overwrite
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary siblings left


def test_one_prune_path_logs_params_and_flops(tmp_path):
    from slimkit import slim

    model = slimkit.seg.UNet(num_classes=2, input_size=32, base_channels=12, depth=2)
    lines = []
    with pytest.raises(ValueError, match="either ratios or sensitivities_file"):
        model.prune()
    assert model.prune(0.5, log_fn=lines.append) == 0.5
    assert len(lines) == 1 and "params" in lines[0] and "FLOPs" in lines[0]
    assert model.status == "Prune"
    convs = [m.out_channels for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert 12 not in convs and all(c % 8 == 0 for c in convs[:-1])  # round_to=8 by default
    model.save(tmp_path / "p")
    twice = slim.prune(tmp_path / "p", 0.5, tmp_path / "q")  # slim.prune: the same method
    assert twice.status == "Prune" and twice.prune_plan is not None
    reloaded = slimkit.load_model(tmp_path / "q")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(reloaded.net(x), twice.net.eval()(x))
