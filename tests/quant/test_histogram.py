"""Streaming |x| histograms: exact re-binning, flat memory, calibration tensors and the cache."""

import numpy as np
import onnx
import pytest

from slimkit.quant import export_onnx
from slimkit.quant.observers import (
    HistogramObserver,
    calibration_tensors,
    collect_histograms,
    fingerprint,
    load_histograms,
    save_histograms,
)
from slimkit.quant.qdq import preprocess, quantizable_op_types


def _one_shot(values: np.ndarray, num_bins: int, upper: float) -> np.ndarray:
    return np.histogram(np.abs(values), bins=num_bins, range=(0.0, upper))[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_one_histogram_of_all_data(seed):
    rng = np.random.default_rng(seed)
    # growing scales force several re-binnings, including a jump of many octaves at once
    batches = [rng.normal(scale=s, size=(3, 50)).astype(np.float32) for s in (0.01, 0.3, 1, 40, 2)]
    batches.insert(0, np.zeros((2, 2), np.float32))
    observer = HistogramObserver(num_bins=256)
    uppers = []
    for batch in batches:
        observer.update(batch)
        uppers.append(observer.upper)
    everything = np.concatenate([b.ravel() for b in batches])
    assert len(set(uppers)) >= 4  # the range grew several times
    assert observer.upper > np.abs(everything).max() >= observer.upper / 2
    np.testing.assert_array_equal(observer.hist, _one_shot(everything, 256, observer.upper))
    assert observer.count == everything.size
    assert (observer.min, observer.max) == (everything.min(), everything.max())
    assert observer.signed


def test_streaming_order_does_not_matter():
    rng = np.random.default_rng(3)
    batches = [rng.laplace(scale=s, size=1000) for s in (5.0, 0.1, 1.0)]
    forward, backward = HistogramObserver(512), HistogramObserver(512)
    for batch in batches:
        forward.update(batch)
    for batch in reversed(batches):
        backward.update(batch)
    assert forward.upper == backward.upper
    np.testing.assert_array_equal(forward.hist, backward.hist)


def test_memory_is_flat_in_the_number_of_batches():
    rng = np.random.default_rng(0)
    few, many = HistogramObserver(2048), HistogramObserver(2048)
    for _ in range(2):
        few.update(rng.normal(size=4096))
    for k in range(60):
        many.update(rng.normal(scale=1 + k, size=4096))
    assert few.hist.shape == many.hist.shape == (2048,)
    assert few.hist.nbytes == many.hist.nbytes
    assert many.hist.sum() == 60 * 4096
    assert not any(isinstance(v, np.ndarray) and v.size > 2048 for v in vars(many).values())


def test_unsigned_zero_and_non_finite_handling():
    observer = HistogramObserver(64)
    observer.update(np.zeros(10))
    assert observer.upper == 0.0 and observer.hist[0] == 10 and observer.amax == 0.0
    observer.update(np.array([0.5, np.nan, np.inf, 3.0]))
    assert observer.count == 12 and observer.amax == 3.0 and not observer.signed
    assert observer.upper == 4.0 and observer.hist.sum() == 12
    with pytest.raises(ValueError, match="power of two"):
        HistogramObserver(1000)


def test_state_round_trip():
    observer = HistogramObserver(128)
    observer.update(np.linspace(-3, 2, 777))
    clone = HistogramObserver.from_state(observer.state(), observer.hist)
    assert clone.state() == observer.state()
    np.testing.assert_array_equal(clone.hist, observer.hist)


@pytest.fixture
def prepared_model(tmp_path, tiny_net):
    raw = export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "raw.onnx")
    return preprocess(raw, tmp_path / "prep.onnx")


def test_calibration_tensors_are_the_quantizer_inputs_and_outputs(prepared_model):
    model = onnx.load(str(prepared_model))
    tensors = calibration_tensors(model, quantizable_op_types())
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert "input" in tensors and conv.output[0] in tensors
    initializers = {i.name for i in model.graph.initializer}
    assert not initializers & set(tensors)  # weights are not calibrated


def test_collect_histograms_streams_and_splits_batches(prepared_model, calib_batches):
    model = onnx.load(str(prepared_model))
    tensors = calibration_tensors(model, quantizable_op_types())
    seen = []
    feeds = ({"input": b} for b in calib_batches)  # batches of 2 into a batch-1 model
    observers = collect_histograms(model, feeds, tensors, 256, on_batch=seen.append)
    assert seen == [0, 1, 2, 3]
    assert observers["input"].count == sum(b.size for b in calib_batches)
    everything = np.concatenate([b.ravel() for b in calib_batches])
    upper = observers["input"].upper
    np.testing.assert_array_equal(observers["input"].hist, _one_shot(everything, 256, upper))
    relu_out = [n for n in tensors if not observers[n].signed]
    assert relu_out  # ReLU/ReLU6 outputs are seen as never negative


def test_cache_round_trip_and_fingerprint(tmp_path, prepared_model, calib_batches):
    observer = HistogramObserver(64)
    observer.update(calib_batches[0])
    key = fingerprint(prepared_model, {"num_bins": 64})
    assert key != fingerprint(prepared_model, {"num_bins": 128})
    meta_path = save_histograms(tmp_path / "cache", key, {"input": observer}, {"note": "x"})
    assert meta_path.is_file() and meta_path.with_suffix(".npz").is_file()
    loaded = load_histograms(tmp_path / "cache", key, ["input"])
    np.testing.assert_array_equal(loaded["input"].hist, observer.hist)
    assert loaded["input"].state() == observer.state()
    assert load_histograms(tmp_path / "cache", key, ["input", "other"]) is None
    assert load_histograms(tmp_path / "cache", "0" * 64, ["input"]) is None
