"""Readers on generated data: lengths, shapes, label ranges, VOC/COCO agreement, batching."""

import contextlib
import io
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import slimkit.datasets
from slimkit.data import (
    CocoDetection,
    ImageFolder,
    ImageNet,
    SegDataset,
    VOCDetection,
    collate_fn,
    default_transforms,
    make_dataset,
)


@pytest.fixture(scope="module")
def cls_paths(tmp_path_factory):
    return make_dataset(
        "cls", tmp_path_factory.mktemp("cls"), num_train=12, num_val=8, image_size=32
    )


@pytest.fixture(scope="module")
def det_paths(tmp_path_factory):
    return make_dataset(
        "det", tmp_path_factory.mktemp("det"), num_train=16, num_val=4, image_size=64
    )


@pytest.fixture(scope="module")
def seg_paths(tmp_path_factory):
    return make_dataset(
        "seg", tmp_path_factory.mktemp("seg"), num_train=12, num_val=4, image_size=32
    )


def test_imagenet_reads_generated_list(cls_paths):
    ds = ImageNet(cls_paths["data_dir"], cls_paths["train_list"], cls_paths["label_list"])
    assert (len(ds), ds.task, ds.num_classes) == (12, "cls", 4)
    assert ds.labels == ["circle", "square", "triangle", "cross"]
    assert sorted(ds.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    sample = ds[5]
    assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == np.uint8
    assert sample["label"] == 1 and sample["image_id"] == 5 and sample["orig_size"] == (32, 32)
    assert os.path.basename(os.path.dirname(sample["path"])) == "square"


def test_imagenet_with_transforms_returns_tensor_and_int(cls_paths):
    ds = ImageNet(cls_paths["data_dir"], cls_paths["val_list"], cls_paths["label_list"])
    tds = ds.with_transforms(default_transforms("cls", train=True, input_size=24))
    image, label = tds[-1]
    assert ds.transforms is None and tds.transforms is not None
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert isinstance(label, int) and label == ds.targets[-1]
    with pytest.raises(IndexError):
        tds[len(ds)]


def test_imagenet_accepts_class_names_as_labels(tmp_path, cls_paths):
    lines = open(cls_paths["train_list"]).read().splitlines()
    named = [
        f"{path} {['circle', 'square', 'triangle', 'cross'][int(k)]}"
        for path, k in (line.split() for line in lines)
    ]
    (tmp_path / "named.txt").write_text("\n".join(named) + "\n")
    ds = ImageNet(cls_paths["data_dir"], tmp_path / "named.txt", cls_paths["label_list"])
    reference = ImageNet(cls_paths["data_dir"], cls_paths["train_list"], cls_paths["label_list"])
    assert ds.targets == reference.targets


def test_image_folder_uses_sorted_class_folders(cls_paths):
    ds = ImageFolder(cls_paths["data_dir"])
    assert ds.labels == ["circle", "cross", "square", "triangle"]
    assert len(ds) == 20
    for path, label, _ in ds.samples:
        assert os.path.basename(os.path.dirname(path)) == ds.labels[label]
    image, label = ds.with_transforms(default_transforms("cls", False, 32))[0]
    assert image.shape == (3, 32, 32) and label == 0


def test_voc_reads_generated_data(det_paths):
    ds = VOCDetection(det_paths["data_dir"], det_paths["train_list"], det_paths["label_list"])
    assert (len(ds), ds.task, ds.labels) == (16, "det", ["circle", "square", "triangle"])
    for i in range(len(ds)):
        s = ds[i]
        n = len(s["labels"])
        assert 1 <= n <= 4 and s["boxes"].shape == (n, 4) and s["boxes"].dtype == np.float32
        assert s["labels"].dtype == np.int64 and s["difficult"].dtype == np.bool_
        assert ((s["labels"] >= 0) & (s["labels"] < 3)).all()
        assert (s["boxes"][:, 2:] > s["boxes"][:, :2]).all()
        assert s["boxes"].min() >= 0 and s["boxes"].max() <= 64


def test_voc_target_format(det_paths):
    ds = VOCDetection(det_paths["data_dir"], det_paths["val_list"], det_paths["label_list"])
    image, target = ds.with_transforms(default_transforms("det", False, (48, 40)))[1]
    assert image.shape == (3, 48, 40)
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
    assert target["image_id"] == 1 and target["orig_size"] == (64, 64)
    raw = ds.get_annotation(1)["boxes"]
    scale = torch.tensor([40 / 64, 48 / 64, 40 / 64, 48 / 64])
    torch.testing.assert_close(target["boxes"], torch.from_numpy(raw) * scale)


def test_voc_and_coco_agree_on_the_same_images(det_paths):
    voc = VOCDetection(det_paths["data_dir"], det_paths["train_list"], det_paths["label_list"])
    coco = CocoDetection(det_paths["coco_image_dir"], det_paths["train_ann"])
    assert coco.labels == voc.labels and coco.cat_ids == [1, 2, 3]
    assert coco.coco_image_ids == list(range(1, 17))
    for i in range(len(voc)):
        a, b = voc.get_annotation(i), coco.get_annotation(i)
        assert os.path.basename(a["path"]) == os.path.basename(b["path"])
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["difficult"], b["difficult"])
        assert a["size"] == b["size"] == (64, 64)
        assert (a["image_id"], b["image_id"]) == (i, i + 1)
    _, target = coco.with_transforms(default_transforms("det", False, 32))[3]
    assert target["image_id"] == coco.coco_image_ids[3] == 4


def test_coco_export_scores_perfect_predictions(det_paths):
    from pycocotools.cocoeval import COCOeval

    ds = VOCDetection(det_paths["data_dir"], det_paths["val_list"], det_paths["label_list"])
    gt = ds.coco_gt()
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in ds.to_coco_dict()["annotations"]
        if not a["iscrowd"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


def test_seg_reads_generated_data(seg_paths):
    ds = SegDataset(seg_paths["data_dir"], seg_paths["train_list"], seg_paths["label_list"])
    assert (len(ds), ds.task, ds.num_classes) == (12, "seg", 4)
    assert ds.labels[0] == "background"
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (32, 32, 3) and s["mask"].shape == (32, 32)
        seen.update(np.unique(s["mask"]).tolist())
    assert seen == {0, 1, 2, 3}
    image, mask = ds.with_transforms(default_transforms("seg", True, 24))[0]
    assert image.shape == (3, 24, 24) and mask.shape == (24, 24) and mask.dtype == torch.int64


def test_seg_without_label_list_infers_classes(seg_paths):
    ds = SegDataset(seg_paths["data_dir"], seg_paths["train_list"])
    assert ds.labels == ["class_0", "class_1", "class_2", "class_3"]


@pytest.mark.parametrize("task", ["cls", "det", "seg"])
def test_collate_shapes(task, cls_paths, det_paths, seg_paths):
    if task == "cls":
        p = cls_paths
        ds = ImageNet(p["data_dir"], p["train_list"], p["label_list"])
    elif task == "det":
        p = det_paths
        ds = VOCDetection(p["data_dir"], p["train_list"], p["label_list"])
    else:
        p = seg_paths
        ds = SegDataset(p["data_dir"], p["train_list"], p["label_list"])
    ds = pickle.loads(pickle.dumps(ds.with_transforms(default_transforms(task, True, 32))))
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_fn(task))))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    if task == "cls":
        assert targets.shape == (4,) and targets.dtype == torch.int64
    elif task == "seg":
        assert targets.shape == (4, 32, 32) and targets.dtype == torch.int64
    else:
        assert isinstance(targets, list) and len(targets) == 4
        assert all(t["boxes"].shape[1] == 4 for t in targets)


def test_collate_rejects_raw_samples_and_mixed_sizes(cls_paths):
    ds = ImageNet(cls_paths["data_dir"], cls_paths["train_list"], cls_paths["label_list"])
    with pytest.raises(TypeError, match="no transforms"):
        collate_fn("cls")([ds[0], ds[1]])
    mixed = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 8, 9), 1)]
    with pytest.raises(ValueError, match="Resize"):
        collate_fn("cls")(mixed)
    with pytest.raises(ValueError, match="task"):
        collate_fn("keypoints")


def test_datasets_module_reexports():
    assert slimkit.datasets.ImageNet is ImageNet
    assert slimkit.datasets.VOCDetection is VOCDetection
    assert slimkit.datasets.CocoDetection is CocoDetection
    assert slimkit.datasets.SegDataset is SegDataset
    assert slimkit.datasets.ImageFolder is ImageFolder
