"""Built-in pretrained weights: save/load round trip, checksum and shape checks, the shipped files."""

import json

import pytest
import torch

from slimkit.models import create_model
from slimkit.models.pretrained import builtin_entry, list_builtin, load_builtin, save_builtin

KW = {"width_mult": 0.25}


def _saved(tmp_path, num_classes=7):
    torch.manual_seed(1)
    net = create_model("mobilenetv2", num_classes=num_classes, **KW)
    for m in net.modules():  # non-default running statistics, so that buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    entry = save_builtin(
        net, "mobilenetv2", KW, tmp_path, trained_on="test set", metrics={"acc1": 1}
    )
    return net, entry


def test_round_trip_loads_everything_but_the_head(tmp_path):
    source, entry = _saved(tmp_path)
    assert entry["file"] == "mobilenetv2_w0.25.safetensors" and entry["trained_on"] == "test set"
    assert (tmp_path / entry["file"]).stat().st_mode & 0o044 == 0o044  # readable package data
    torch.manual_seed(2)
    net = create_model("mobilenetv2", num_classes=4, **KW)
    head = net.classifier.weight.detach().clone()
    assert load_builtin(net, "mobilenetv2", KW, tmp_path)["sha256"] == entry["sha256"]
    src, dst = source.state_dict(), net.state_dict()
    for name, value in dst.items():
        if name.startswith("classifier") or name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, src[name].half().float(), rtol=0, atol=0)
    assert torch.equal(net.classifier.weight, head)  # 4 classes: the head keeps its init
    assert [e["key"] for e in list_builtin(tmp_path)] == ["mobilenetv2_w0.25"]


def test_entry_lookup_and_clear_errors(tmp_path):
    _saved(tmp_path)
    assert builtin_entry("mobilenetv2", {"width_mult": 0.25, "drop_rate": 0.2}, tmp_path)
    with pytest.raises(ValueError, match=r"no built-in.*mobilenetv2 \{'width_mult': 0.25\}"):
        builtin_entry("mobilenetv2", {"width_mult": 0.5}, tmp_path)
    with pytest.raises(ValueError, match="no built-in"):
        builtin_entry("unet", {}, tmp_path)


def test_checksum_and_shape_are_verified(tmp_path):
    _, entry = _saved(tmp_path)
    path = tmp_path / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    net = create_model("mobilenetv2", num_classes=4, **KW)
    with pytest.raises(ValueError, match="SHA-256"):
        load_builtin(net, "mobilenetv2", KW, tmp_path)
    # a file for another layout (its manifest pretending otherwise) is refused by shape
    other = create_model("mobilenetv2", num_classes=4, width_mult=0.5)
    save_builtin(other, "mobilenetv2", {"width_mult": 0.5}, tmp_path, trained_on="x")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["mobilenetv2_w0.25"] = {**manifest["mobilenetv2_w0.5"], "model_kwargs": KW}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not fit"):
        load_builtin(net, "mobilenetv2", KW, tmp_path)
    path.unlink()
    manifest["mobilenetv2_w0.25"] = {**manifest["mobilenetv2_w0.25"], "file": path.name}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="missing"):
        load_builtin(net, "mobilenetv2", KW, tmp_path)


@pytest.mark.parametrize("entry", list_builtin(), ids=lambda e: e["key"])
def test_every_shipped_file_loads_into_its_model(entry):
    num_classes = 3
    kwargs = dict(entry["model_kwargs"])
    if entry["architecture"].startswith("yolov3"):
        kwargs["input_size"] = 128
    net = create_model(entry["architecture"], num_classes=num_classes, **kwargs)
    assert load_builtin(net, entry["architecture"], entry["model_kwargs"]) == entry
    assert entry["metrics"] and all(v > 0.5 for v in entry["metrics"].values())


def test_train_from_builtin_and_clear_errors(tmp_path, capsys):
    from safetensors.torch import load_file

    from slimkit.cli import main
    from slimkit.data.generate import make_dataset
    from slimkit.models.pretrained import _package_dir
    from slimkit.tasks.factory import create_task, open_split

    make_dataset("cls", tmp_path / "data", num_train=4, num_val=4, image_size=32, seed=1)
    ds = open_split("cls", tmp_path / "data", "train")
    model = create_task("mobilenetv2", ds.num_classes, 32, width_mult=1.0)
    model.train(0, ds, save_dir=tmp_path / "out", pretrain_weights="BUILTIN", progress=False)
    shipped = load_file(str(_package_dir() / "mobilenetv2_w1.safetensors"))
    state = model.net.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in shipped.items())
    assert model.net.classifier.out_features == 4  # the head is the task's own
    # no weights for this width: one clear line, exit 2, nothing written
    code = main(
        ["train", "--model", "mobilenetv2", "--width-mult", "0.5", "--data", str(tmp_path / "data"),
         "--input-size", "32", "--epochs", "1", "--pretrain", "BUILTIN",
         "--save-dir", str(tmp_path / "cli")]
    )  # fmt: skip
    assert code == 2 and "no built-in (BUILTIN) pretrained weights" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "best_model").exists()
