"""Every bad input raises DatasetError naming the file and, where relevant, the line."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from slimkit.data import (
    CocoDetection,
    DatasetError,
    ImageFolder,
    ImageNet,
    SegDataset,
    VOCDetection,
)


def _jpeg_bytes(size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _raises(call, *fragments):
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- ImageNet / ImageFolder ---------------------------------------------------------------------


@pytest.fixture
def cls_root(tmp_path):
    _write(tmp_path / "labels.txt", "cat\ndog\n")
    _write(tmp_path / "cat" / "a.jpg", _jpeg_bytes())
    _write(tmp_path / "dog" / "b.jpg", _jpeg_bytes())
    _write(tmp_path / "dog" / "bad.jpg", b"this is not a jpeg")
    return tmp_path


def _imagenet(root, lines):
    _write(root / "list.txt", "\n".join(lines) + "\n")
    return lambda: ImageNet(root, root / "list.txt", root / "labels.txt")


def test_cls_good_input_is_accepted(cls_root):
    ds = _imagenet(cls_root, ["cat/a.jpg 0", "", "dog/b.jpg dog"])()
    assert ds.targets == [0, 1]


def test_cls_missing_list_and_label_files(cls_root):
    _raises(lambda: ImageNet(cls_root, cls_root / "nope.txt", cls_root / "labels.txt"), "nope.txt")
    _write(cls_root / "list.txt", "cat/a.jpg 0\n")
    _raises(lambda: ImageNet(cls_root, cls_root / "list.txt", cls_root / "x.txt"), "x.txt")


def test_cls_missing_image(cls_root):
    _raises(
        _imagenet(cls_root, ["cat/a.jpg 0", "cat/missing.jpg 0"]), "list.txt, line 2", "missing.jpg"
    )


def test_cls_malformed_line(cls_root):
    _raises(_imagenet(cls_root, ["cat/a.jpg 0", "", "cat/a.jpg"]), "list.txt, line 3", "malformed")


def test_cls_label_out_of_range(cls_root):
    _raises(_imagenet(cls_root, ["cat/a.jpg 2"]), "list.txt, line 1", "out of range [0, 2)")
    _raises(_imagenet(cls_root, ["cat/a.jpg -1"]), "list.txt, line 1", "out of range")


def test_cls_unknown_class_name(cls_root):
    _raises(_imagenet(cls_root, ["cat/a.jpg 0", "cat/a.jpg bird"]), "line 2", "'bird'")


def test_cls_empty_list(cls_root):
    _raises(_imagenet(cls_root, ["", "  "]), "list.txt", "empty")


def test_cls_empty_or_duplicate_labels(cls_root):
    _write(cls_root / "labels.txt", "\n")
    _raises(_imagenet(cls_root, ["cat/a.jpg 0"]), "labels.txt", "empty")
    _write(cls_root / "labels.txt", "cat\ndog\ncat\n")
    _raises(_imagenet(cls_root, ["cat/a.jpg 0"]), "labels.txt, line 3", "'cat'")


def test_cls_corrupt_image_fails_when_read(cls_root):
    ds = _imagenet(cls_root, ["cat/a.jpg 0", "dog/bad.jpg 1"])()
    assert ds[0]["image"].shape == (12, 16, 3)
    _raises(lambda: ds[1], "list.txt, line 2", "bad.jpg", "cannot decode")


def test_cls_truncated_image_fails_when_read(cls_root):
    data = _jpeg_bytes((64, 64))
    _write(cls_root / "cat" / "cut.jpg", data[: len(data) // 2])
    ds = _imagenet(cls_root, ["cat/cut.jpg 0"])()
    _raises(lambda: ds[0], "list.txt, line 1", "cut.jpg")


def test_image_folder_errors(tmp_path, cls_root):
    _raises(lambda: ImageFolder(tmp_path / "nowhere"), "nowhere")
    _write(tmp_path / "flat" / "a.jpg", _jpeg_bytes())
    _raises(lambda: ImageFolder(tmp_path / "flat"), "flat", "no class sub-folders")
    _write(tmp_path / "noimg" / "cat" / "notes.txt", "hi")
    _raises(lambda: ImageFolder(tmp_path / "noimg"), "noimg", "no images")
    ds = ImageFolder(cls_root)
    bad = [i for i, (path, _, _) in enumerate(ds.samples) if path.endswith("bad.jpg")][0]
    _raises(lambda: ds[bad], "bad.jpg", "cannot decode")


# --- VOC -----------------------------------------------------------------------------------------

_OBJECT = "<object><name>{name}</name><difficult>0</difficult><bndbox>{box}</bndbox></object>"
_BOX = "<xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>"


def _voc_xml(*objects) -> str:
    body = "".join(_OBJECT.format(name=n, box=_BOX.format(*b)) for n, b in objects)
    return f"<annotation><size><width>16</width><height>12</height></size>{body}</annotation>"


@pytest.fixture
def voc_root(tmp_path):
    _write(tmp_path / "labels.txt", "cat\ndog\n")
    _write(tmp_path / "JPEGImages" / "a.jpg", _jpeg_bytes())
    _write(tmp_path / "Annotations" / "a.xml", _voc_xml(("cat", (1, 1, 8, 6))))
    return tmp_path


def _voc(root, lines):
    _write(root / "list.txt", "\n".join(lines) + "\n")
    return lambda: VOCDetection(root, root / "list.txt", root / "labels.txt")


_GOOD_VOC = "JPEGImages/a.jpg Annotations/a.xml"


def test_voc_good_input_converts_one_based_boxes(voc_root):
    ds = _voc(voc_root, [_GOOD_VOC])()
    np.testing.assert_array_equal(ds[0]["boxes"], [[0, 0, 8, 6]])


def test_voc_missing_files_and_malformed_line(voc_root):
    _raises(_voc(voc_root, [_GOOD_VOC, "JPEGImages/zz.jpg Annotations/a.xml"]), "line 2", "zz.jpg")
    _raises(_voc(voc_root, ["JPEGImages/a.jpg Annotations/zz.xml"]), "line 1", "zz.xml")
    _raises(_voc(voc_root, [_GOOD_VOC, _GOOD_VOC + " extra"]), "list.txt, line 2", "malformed")
    _raises(_voc(voc_root, [""]), "list.txt", "empty")


def test_voc_malformed_xml(voc_root):
    _write(voc_root / "Annotations" / "b.xml", "<annotation><object>")
    message = _raises(
        _voc(voc_root, ["JPEGImages/a.jpg Annotations/b.xml"]), "b.xml", "malformed XML"
    )
    assert "list.txt, line 1" in message


def test_voc_unknown_class(voc_root):
    _write(
        voc_root / "Annotations" / "b.xml", _voc_xml(("cat", (1, 1, 4, 4)), ("bird", (2, 2, 5, 5)))
    )
    lines = [_GOOD_VOC, "JPEGImages/a.jpg Annotations/b.xml"]
    _raises(_voc(voc_root, lines), "b.xml", "list.txt, line 2", "object 2", "'bird'")


@pytest.mark.parametrize(
    "box, fragment",
    [((5, 1, 3, 6), "xmin <= xmax"), ((1, "a", 3, 6), "numeric"), ((40, 40, 50, 50), "outside")],
)
def test_voc_malformed_box(voc_root, box, fragment):
    _write(voc_root / "Annotations" / "b.xml", _voc_xml(("dog", box)))
    _raises(_voc(voc_root, ["JPEGImages/a.jpg Annotations/b.xml"]), "b.xml", "object 1", fragment)


def test_voc_missing_bndbox(voc_root):
    _write(
        voc_root / "Annotations" / "b.xml",
        "<annotation><object><name>cat</name></object></annotation>",
    )
    _raises(_voc(voc_root, ["JPEGImages/a.jpg Annotations/b.xml"]), "b.xml", "no <bndbox>")


def test_voc_corrupt_image_fails_when_read(voc_root):
    _write(voc_root / "JPEGImages" / "bad.jpg", b"\x00" * 20)
    ds = _voc(voc_root, [_GOOD_VOC, "JPEGImages/bad.jpg Annotations/a.xml"])()
    _raises(lambda: ds[1], "list.txt, line 2", "bad.jpg", "cannot decode")


# --- COCO ----------------------------------------------------------------------------------------


def _coco_dict():
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 16, "height": 12}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 5, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [6, 1, 4, 4], "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


@pytest.fixture
def coco_root(tmp_path):
    _write(tmp_path / "images" / "a.jpg", _jpeg_bytes())
    return tmp_path


def _coco(root, data):
    path = root / "ann.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return lambda: CocoDetection(root / "images", path)


def test_coco_good_input_maps_ids(coco_root):
    ds = _coco(coco_root, _coco_dict())()
    assert ds.labels == ["cat", "dog"] and ds.cat_ids == [3, 5] and ds.coco_image_ids == [7]
    sample = ds[0]
    np.testing.assert_array_equal(sample["boxes"], [[1, 2, 6, 6], [6, 1, 10, 5]])
    np.testing.assert_array_equal(sample["labels"], [0, 1])
    np.testing.assert_array_equal(sample["difficult"], [False, True])


def test_coco_missing_or_invalid_file(coco_root):
    _raises(lambda: CocoDetection(coco_root, coco_root / "none.json"), "none.json", "not found")
    _raises(_coco(coco_root, '{"images": [\n  oops'), "ann.json", "invalid JSON at line 2")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_coco_missing_top_level_key(coco_root, key):
    data = _coco_dict()
    del data[key]
    _raises(_coco(coco_root, data), "ann.json", repr(key))


@pytest.mark.parametrize(
    "section, key", [("images", "file_name"), ("annotations", "bbox"), ("categories", "name")]
)
def test_coco_missing_entry_key(coco_root, section, key):
    data = _coco_dict()
    del data[section][0][key]
    _raises(_coco(coco_root, data), "ann.json", f"{section}[0]", repr(key))


def test_coco_unknown_references_and_bad_boxes(coco_root):
    data = _coco_dict()
    data["annotations"][1]["category_id"] = 9
    _raises(_coco(coco_root, data), "annotations[1]", "category_id 9")
    data = _coco_dict()
    data["annotations"][0]["image_id"] = 8
    _raises(_coco(coco_root, data), "annotations[0]", "image_id 8")
    data = _coco_dict()
    data["annotations"][1]["bbox"] = [1, 2, 3]
    _raises(_coco(coco_root, data), "annotations[1]", "malformed bbox")
    data["annotations"][1]["bbox"] = [1, 2, -3, 4]
    _raises(_coco(coco_root, data), "annotations[1]", "malformed bbox")


def test_coco_missing_image_and_zero_size_box(coco_root):
    data = _coco_dict()
    data["images"][0]["file_name"] = "b.jpg"
    _raises(_coco(coco_root, data), "images[0]", "b.jpg")
    data = _coco_dict()
    data["annotations"][0]["bbox"] = [1, 2, 0, 4]
    with pytest.warns(UserWarning, match="zero width"):
        ds = _coco(coco_root, data)()
    assert len(ds.get_annotation(0)["labels"]) == 1


# --- segmentation --------------------------------------------------------------------------------


@pytest.fixture
def seg_root(tmp_path):
    _write(tmp_path / "labels.txt", "background\nthing\n")
    _write(tmp_path / "images" / "a.jpg", _jpeg_bytes())
    mask = np.zeros((12, 16), np.uint8)
    mask[2:5, 3:9] = 1
    mask[0, :] = 255
    (tmp_path / "labels").mkdir()
    Image.fromarray(mask).save(tmp_path / "labels" / "ok.png")
    mask[6, 6] = 2
    Image.fromarray(mask).save(tmp_path / "labels" / "bad.png")
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(tmp_path / "labels" / "small.png")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "labels" / "rgb.png")
    return tmp_path


def _seg(root, lines):
    _write(root / "list.txt", "\n".join(lines) + "\n")
    return lambda: SegDataset(root, root / "list.txt", root / "labels.txt")


def test_seg_good_input_keeps_ignore_value(seg_root):
    mask = _seg(seg_root, ["images/a.jpg labels/ok.png"])()[0]["mask"]
    assert set(np.unique(mask).tolist()) == {0, 1, 255}


def test_seg_label_value_out_of_range_fails_when_read(seg_root):
    ds = _seg(seg_root, ["images/a.jpg labels/ok.png", "images/a.jpg labels/bad.png"])()
    _raises(lambda: ds[1], "list.txt, line 2", "bad.png", "[2]", ">= num_classes")


def test_seg_size_mismatch_and_rgb_label(seg_root):
    ds = _seg(seg_root, ["images/a.jpg labels/small.png", "images/a.jpg labels/rgb.png"])()
    _raises(lambda: ds[0], "list.txt, line 1", "small.png", "16x10")
    _raises(lambda: ds[1], "list.txt, line 2", "rgb.png", "mode RGB")


def test_seg_missing_files_malformed_and_empty(seg_root):
    _raises(_seg(seg_root, ["images/a.jpg labels/none.png"]), "list.txt, line 1", "none.png")
    _raises(_seg(seg_root, ["images/none.jpg labels/ok.png"]), "line 1", "none.jpg")
    _raises(_seg(seg_root, ["images/a.jpg labels/ok.png", "images/a.jpg"]), "line 2", "malformed")
    _raises(_seg(seg_root, ["\n"]), "list.txt", "empty")


def test_voc_box_outside_an_image_of_unstated_size_is_dropped_when_read(voc_root):
    xml = "<annotation><object><name>cat</name><bndbox>{}</bndbox></object></annotation>"
    _write(voc_root / "Annotations" / "b.xml", xml.format(_BOX.format(40, 40, 50, 50)))
    ds = _voc(voc_root, ["JPEGImages/a.jpg Annotations/b.xml"])()
    assert ds.get_annotation(0)["boxes"].shape == (1, 4)
    assert ds[0]["boxes"].shape == (0, 4) and ds[0]["labels"].shape == (0,)
