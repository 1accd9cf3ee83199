"""Class-balanced segmentation loss: frequencies, weights and the loss, against hand computations."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from slimkit.data.generate import make_dataset
from slimkit.tasks.factory import create_task, open_split
from slimkit.tasks.segmenter import balanced_weights, class_frequencies


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    make_dataset("seg", root, num_train=12, num_val=4, image_size=32, seed=3)
    return root


def test_frequencies_count_every_mask(seg_dir):
    ds = open_split("seg", seg_dir, "train")
    counts = np.zeros(4)
    for line in (seg_dir / "train_list.txt").read_text().split("\n"):
        if line:
            mask = np.asarray(Image.open(seg_dir / line.split()[1]))
            for c in range(4):
                counts[c] += (mask == c).sum()
    np.testing.assert_allclose(class_frequencies(ds, 4), counts / counts.sum())


def test_weights_by_hand():
    w = balanced_weights(np.array([0.8, 0.2, 0.0]))
    raw = np.array([1 / math.sqrt(0.8), 1 / math.sqrt(0.2), 1 / math.sqrt(0.2)])
    np.testing.assert_allclose(w, raw / (0.8 * raw[0] + 0.2 * raw[1]))
    assert 0.8 * w[0] + 0.2 * w[1] == pytest.approx(1.0)


def test_train_sets_the_weights_and_the_loss_uses_them(seg_dir, tmp_path):
    ds = open_split("seg", seg_dir, "train")
    model = create_task("unet", 4, 32, base_channels=4, depth=2)
    model.train(1, ds, train_batch_size=4, save_dir=tmp_path / "a", progress=False)
    expected = balanced_weights(class_frequencies(ds, 4))
    np.testing.assert_allclose(model.class_weights.numpy(), expected, rtol=1e-6)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    target[0, 0, 0] = 255  # ignored
    num = den = 0.0
    for b, i, j in np.ndindex(2, 5, 5):  # the weighted mean, one pixel at a time
        t = int(target[b, i, j])
        if t != 255:
            w = float(expected[t])
            num += -w * float(logits[b, :, i, j].log_softmax(0)[t])
            den += w
    assert float(model.compute_loss(logits, target)) == pytest.approx(num / den, rel=1e-5)
    plain = create_task("unet", 4, 32, base_channels=4, depth=2)
    plain.class_balance = None
    plain.train(0, ds, save_dir=tmp_path / "b", progress=False)
    assert plain.class_weights is None
    plain.class_balance = "inverse"
    with pytest.raises(ValueError, match="class_balance"):
        plain.train(0, ds, save_dir=tmp_path / "c", progress=False)
