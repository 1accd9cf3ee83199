"""Training under torchrun: 2 processes (gloo, CPU) train with DDP, rank 0 alone writes, and the
metric the ranks reduce equals what one process measures on the saved model; fine-tuning after
pruning rebuilds rank 0's pruned net on every rank. Plus the meters' merges, checked by hand."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import slimkit
from slimkit.data.generate import make_dataset
from slimkit.prune import analyze_sensitivity
from slimkit.tasks import distributed
from slimkit.tasks.factory import open_split
from slimkit.tasks.metrics import ClassificationMeter, SegMeter, VOCMeter

WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys, torch
    import slimkit
    from slimkit.tasks import distributed
    from slimkit.tasks.factory import open_split

    out, cls_data, seg_data, sens = sys.argv[1:5]
    rank = int(os.environ["RANK"])

    def digest(net):
        h = hashlib.sha256()
        for k, v in sorted(net.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # three calls in one job: the process group the first one starts serves the others
    torch.manual_seed(rank)  # different initial weights: DDP must copy rank 0's
    result = {"size": int(os.environ["WORLD_SIZE"])}
    train, val = open_split("cls", cls_data, "train"), open_split("cls", cls_data, "val")
    cls = slimkit.cls.MobileNetV2(train.num_classes, input_size=32, width_mult=0.25)
    try:
        cls.train(1, train, train_batch_size=7, save_dir=out + "/odd", progress=False)
    except ValueError as e:
        result["odd"] = str(e)
    result["cls"] = cls.train(1, train, train_batch_size=8, eval_dataset=val,
                              save_dir=out + "/cls", progress=False)
    result["cls_digest"] = digest(cls.net)
    calls, plain = [], cls.evaluate  # an evaluate of its own: rank 0 runs it, the rest receive
    cls.evaluate = lambda ds, **kw: calls.append(1) or plain(ds, **kw)
    result["own"] = distributed.evaluate(cls, val)
    result["own_calls"] = len(calls)
    train, val = open_split("seg", seg_data, "train"), open_split("seg", seg_data, "val")
    seg = slimkit.seg.UNet(train.num_classes, input_size=32, base_channels=8, depth=2)
    result["seg"] = seg.train(1, train, train_batch_size=4, eval_dataset=val,
                              sensitivities_file=sens, prune_mode="per_group",
                              eval_metric_loss=0.2, prune_round_to=None,
                              save_dir=out + "/seg", progress=False)
    result["seg_status"], result["seg_digest"] = seg.status, digest(seg.net)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    """
)


def _digest(net: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _unet(num_classes: int) -> Any:
    return slimkit.seg.UNet(num_classes, input_size=32, base_channels=8, depth=2)


def _shape_metric(original: dict[str, int]) -> Any:
    """A metric of the net's shape alone: each conv's kept fraction of channels, multiplied."""

    def metric(net: nn.Module) -> float:
        kept = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
        return math.prod((kept[n] / c) ** 0.1 for n, c in original.items())

    return metric


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-process torchrun job (cls training; seg pruning + fine-tuning) and its inputs."""
    root = tmp_path_factory.mktemp("ddp")
    cls_data, seg_data, out = root / "cls", root / "seg", root / "out"
    make_dataset("cls", cls_data, num_train=16, num_val=21, image_size=32, seed=1)
    make_dataset("seg", seg_data, num_train=8, num_val=5, image_size=32, seed=1)
    model = _unet(open_split("seg", seg_data).num_classes)
    convs = {n: m.out_channels for n, m in model.net.named_modules() if isinstance(m, nn.Conv2d)}
    sens = root / "unet.sensi.json"
    analyze_sensitivity(
        model.net,
        eval_fn=_shape_metric(convs),
        example_inputs=model.example_inputs(),
        ratios=(0.25, 0.5),
        save_file=sens,
        progress=False,
        metric_name="miou",
        architecture=model.sensitivity_key,
    )
    out.mkdir()
    script = root / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(out), str(cls_data), str(seg_data)]
    done = subprocess.run(
        [*command, str(sens)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"out": out, "cls": cls_data, "seg": seg_data, "ranks": ranks}


def test_ddp_training_saves_a_model_one_process_evaluates_alike(job: dict[str, Any]) -> None:
    out, (r0, r1) = job["out"], job["ranks"]
    assert r0["size"] == r1["size"] == 2
    assert "multiple of the 2 processes" in r0["odd"] and r0["odd"] == r1["odd"]
    assert not (out / "odd").exists()
    assert sorted(p.name for p in (out / "cls").iterdir()) == ["best_model", "epoch_1"]
    assert r0["cls"] == r1["cls"] and r0["cls_digest"] == r1["cls_digest"]  # one model
    loaded = slimkit.load_model(out / "cls" / "best_model")
    assert _digest(loaded.net) == r0["cls_digest"]  # rank 0's weights and BN statistics
    alone = loaded.evaluate(open_split("cls", job["cls"], "val"))
    assert alone == r0["cls"]  # the 2 ranks' merged meter = one process on the whole set
    info = yaml_metrics(out / "cls" / "best_model")
    assert info == alone
    assert r0["own"] == r1["own"] == alone and (r0["own_calls"], r1["own_calls"]) == (1, 0)


def test_ddp_fine_tuning_after_pruning(job: dict[str, Any]) -> None:
    out, (r0, r1) = job["out"], job["ranks"]
    assert r0["seg_status"] == r1["seg_status"] == "Prune"
    assert r0["seg_digest"] == r1["seg_digest"]  # rank 1 rebuilt rank 0's pruned net
    loaded = slimkit.load_model(out / "seg" / "best_model")
    assert loaded.status == "Prune" and _digest(loaded.net) == r0["seg_digest"]
    convs = [m for m in loaded.net.modules() if isinstance(m, nn.Conv2d)]
    original = _unet(loaded.num_classes).net.modules()
    assert sum(m.out_channels for m in convs) < sum(
        m.out_channels for m in original if isinstance(m, nn.Conv2d)
    )
    alone = loaded.evaluate(open_split("seg", job["seg"], "val"))
    assert alone == r0["seg"] == r1["seg"]


def test_cli_train_under_torchrun_speaks_once(job: dict[str, Any], tmp_path: Path) -> None:
    """``torchrun ... -m slimkit.cli train``: one final line (rank 0's), one model directory."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    command += ["2", "-m", "slimkit.cli", "train", "--model", "mobilenetv2", "--data"]
    command += [str(job["cls"]), "--input-size", "32", "--width-mult", "0.25", "--epochs", "1"]
    command += ["--batch-size", "8", "--save-dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("best model: ")]
    assert len(lines) == 1 and json.loads(lines[0].split(" ", 3)[3]) == yaml_metrics(
        tmp_path / "out" / "best_model"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best_model", "epoch_1"]


def yaml_metrics(model_dir: Path) -> dict[str, float]:
    from slimkit.tasks.modeldir import read_model_yml

    return dict(read_model_yml(model_dir)["metrics"])


# -- the reductions, against hand-computed values ------------------------------------------------
def test_classification_meters_merge_to_counts_over_both_shares() -> None:
    a, b = ClassificationMeter(ks=(1, 2)), ClassificationMeter(ks=(1, 2))
    # a: 3 samples, top-1 right on 2, top-2 right on 3; b: 2 samples, top-1 right on 0, top-2 on 1
    a.update(torch.tensor([[3.0, 1, 0], [0, 2, 1], [1, 0, 2]]), torch.tensor([0, 1, 0]))
    b.update(torch.tensor([[0.0, 1, 2], [2, 1, 0]]), torch.tensor([1, 2]))
    a.merge(b)
    assert a.compute() == {"acc1": 2 / 5, "acc2": 4 / 5}
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ClassificationMeter(ks=(1,)))


def test_seg_meters_merge_confusion_matrices() -> None:
    a, b = SegMeter(2), SegMeter(2)
    # (gt, pred) pairs: a (0, 0) (1, 1) (0, 1), one pixel ignored; b (1, 0) (0, 0)
    a.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 255]]))
    b.update(np.array([[0, 0]]), np.array([[1, 0]]))
    a.merge(b)
    # class 0: TP 2, FP 1, FN 1 -> IoU 2/4; class 1: TP 1, FP 1, FN 1 -> 1/3; pixels right 3 of 5
    got = a.compute()
    assert got["miou"] == pytest.approx((2 / 4 + 1 / 3) / 2) and got["pixel_acc"] == 3 / 5


def test_voc_meters_merged_in_order_equal_one_meter_over_all_images() -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(7):
        gt = np.tile(rng.uniform(0, 40, (3, 2)), 2) + [0, 0, 10, 10]
        det = gt + rng.normal(0, 3, gt.shape)
        scores = rng.choice([0.3, 0.6, 0.9], 3)  # ties across images: order matters
        images.append((det, scores, rng.integers(0, 2, 3), gt, rng.integers(0, 2, 3)))
    whole, parts = VOCMeter(2), [VOCMeter(2) for _ in range(3)]
    for i, image in enumerate(images):
        whole.update(*image)
        parts[distributed_slice_owner(i, len(images), 3)].update(*image)
    for part in parts[1:]:
        parts[0].merge(part)
    assert parts[0].compute() == whole.compute()


def test_voc_merge_by_hand() -> None:
    a, b = VOCMeter(1), VOCMeter(1)
    box = [0.0, 0.0, 10.0, 10.0]
    a.update([box], [0.9], [0], [box], [0])  # TP
    b.update([box], [0.8], [0], [[20.0, 20, 30, 30]], [0])  # FP, its gt missed
    a.merge(b)
    # ranked: TP (p 1, r 1/2), FP (p 1/2, r 1/2): AP = 1/2
    assert a.compute()["bbox_map"] == pytest.approx(0.5)


def distributed_slice_owner(index: int, n: int, size: int) -> int:
    """Which rank's slice (``distributed._slice``) holds ``index``."""
    owners = [r for r in range(size) if index in distributed._slice(n, r, size)]
    assert len(owners) == 1
    return owners[0]


def test_slices_cover_the_set_once_in_order() -> None:
    for n, size in ((5, 2), (21, 2), (1, 3), (0, 2), (10, 4)):
        joined = [i for r in range(size) for i in distributed._slice(n, r, size)]
        assert joined == list(range(n))


def test_sharded_only_where_slimkit_owns_the_loop(tmp_path: Path) -> None:
    model = slimkit.cls.MobileNetV2(num_classes=3, input_size=32, width_mult=0.25)
    meter, plain = model.make_meter(), object()
    assert distributed._shardable(model, meter, plain)

    class Coco:
        ann_file = "instances.json"

    assert not distributed._shardable(model, meter, Coco())
    model.evaluate = lambda ds, **kw: {"acc1": 1.0}  # type: ignore[method-assign]
    assert not distributed._shardable(model, meter, plain)


def test_one_process_is_unchanged(tmp_path: Path) -> None:
    """Outside torchrun the helpers are the plain ones."""
    net = nn.Linear(2, 2)
    assert distributed.wrap(net, torch.device("cpu")) is net and distributed.is_main()
    loss = torch.tensor(2.0, requires_grad=True)
    assert distributed.mean_loss(loss).item() == 2.0
    make_dataset("cls", tmp_path / "d", num_train=4, num_val=2, image_size=32, seed=0)
    model = slimkit.cls.MobileNetV2(num_classes=4, input_size=32, width_mult=0.25)
    loader = distributed.train_loader(model, open_split("cls", tmp_path / "d"), 3, 0)
    assert loader.batch_size == 3 and not isinstance(
        loader.sampler, torch.utils.data.DistributedSampler
    )
