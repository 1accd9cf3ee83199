"""The guarded range choice: each guard against the failure it prevents, MSE against Monte Carlo."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.quant import kl_threshold
from slimkit.quant.guarded import (
    MAX_CLIP_SHARE,
    MIN_MSE_GAIN,
    MIN_OCCUPIED_LEVELS,
    choose_range,
    expected_mse,
    guarded_kl_threshold,
)
from slimkit.quant.observers import HistogramObserver, bounded_tensors


def _observe(values: np.ndarray, bins: int = 2048) -> HistogramObserver:
    observer = HistogramObserver(bins)
    observer.update(values.astype(np.float32))
    return observer


@pytest.fixture
def se_gate() -> HistogramObserver:
    """A hard-sigmoid SE gate: no mass near zero, values uniform in [0.07, 0.73]."""
    return _observe(np.random.default_rng(0).uniform(0.07, 0.73, 50000))


def _occupied(values: np.ndarray, threshold: float, levels: int = 128) -> int:
    kept = values[values <= threshold]
    return np.unique(np.floor(kept / threshold * levels)).size


def test_plain_kl_collapses_on_an_se_gate(se_gate):
    plain = kl_threshold(se_gate.hist, se_gate.bin_edges)
    assert plain < 0.08  # the degenerate minimum: one bin kept, 99.9 % of the values clipped


def test_clip_share_guard_alone_prevents_the_collapse(se_gate):
    threshold = guarded_kl_threshold(se_gate.hist, se_gate.bin_edges, min_occupied_levels=1)
    assert threshold >= 0.72  # clips at most MAX_CLIP_SHARE of the values
    values = np.random.default_rng(0).uniform(0.07, 0.73, 50000)
    assert np.mean(values > threshold) <= MAX_CLIP_SHARE


def test_occupied_levels_guard_alone_keeps_mass_in_many_levels(se_gate):
    values = np.random.default_rng(0).uniform(0.07, 0.73, 50000)
    plain = kl_threshold(se_gate.hist, se_gate.bin_edges)
    assert _occupied(values, plain) < 3
    guarded = guarded_kl_threshold(se_gate.hist, se_gate.bin_edges, max_clip_share=1.0)
    assert _occupied(values, guarded) >= MIN_OCCUPIED_LEVELS


def test_guarded_kl_equals_plain_kl_where_plain_is_sound():
    rng = np.random.default_rng(1)
    values = np.maximum(rng.normal(size=200000), 0.0)  # a ReLU output: plain KL is fine here
    observer = _observe(values)
    plain = kl_threshold(observer.hist, observer.bin_edges)
    assert np.mean(values > plain) < MAX_CLIP_SHARE
    guarded = guarded_kl_threshold(observer.hist, observer.bin_edges)
    width = observer.bin_edges[1]
    assert guarded == pytest.approx(min(plain, observer.max), abs=width)  # plain, capped at max


@pytest.mark.parametrize("lo, hi", [(0.0, 3.0), (-0.4, 2.0), (-1.0, 0.5)])
def test_expected_mse_matches_monte_carlo_quantization(lo, hi):
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0.3, 0.8, 100000), np.zeros(20000)])
    observer = _observe(values)
    step = (hi - lo) / 255
    zero_point = np.round(-lo / step)
    q = np.clip(np.round(values / step) + zero_point, 0, 255)
    monte_carlo = np.mean(((q - zero_point) * step - values) ** 2)
    predicted = expected_mse(
        observer.pos_hist, observer.neg_hist, observer.bin_edges, lo, hi, observer.zeros
    )
    assert predicted == pytest.approx(monte_carlo, rel=0.1)


def test_signed_tensor_gets_an_asymmetric_range():
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 2.5, 100000)
    hard_swish = x * np.clip(x + 3, 0, 6) / 6  # seen in [-0.375, ~9.7]
    observer = _observe(hard_swish)
    choice = choose_range(
        observer.pos_hist,
        observer.neg_hist,
        observer.bin_edges,
        observer.min,
        observer.max,
        observer.zeros,
    )
    assert choice.lo == pytest.approx(-0.375, abs=0.01)  # not [-9.7, 9.7]
    assert choice.hi > 0.9 * observer.max


def test_bounded_activation_is_not_searched(se_gate):
    args = (se_gate.pos_hist, se_gate.neg_hist, se_gate.bin_edges, se_gate.min, se_gate.max)
    choice = choose_range(*args, bound=(0.0, 1.0))
    assert (choice.lo, choice.hi, choice.method) == (0.0, se_gate.max, "bound")  # no clipping
    hard_sigmoid_saturated = choose_range(*args[:3], 0.0, 1.0000001, bound=(0.0, 1.0))
    assert hard_sigmoid_saturated.hi == 1.0  # clamped into the bound
    unbounded = choose_range(*args)
    assert unbounded.lo == 0.0 and unbounded.hi >= 0.72  # still not collapsed without the bound


def _graph_with_bounded_ops(opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "abcdefg"]
    six = numpy_helper.from_array(np.array(6.0, np.float32), "six")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    minus = numpy_helper.from_array(np.array(-2.0, np.float32), "minus")
    clip = (
        helper.make_node("Clip", ["x", "zero", "six"], ["c"])
        if opset >= 11
        else helper.make_node("Clip", ["x"], ["c"], min=0.0, max=6.0)
    )
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"]),
        helper.make_node("HardSigmoid", ["x"], ["b"]),
        clip,
        helper.make_node("Div", ["c", "six"], ["d"]),  # hard-swish's clip(x + 3, 0, 6) / 6
        helper.make_node("Mul", ["c", "minus"], ["e"]),  # negative factor: bound unknown
        helper.make_node("Relu", ["x"], ["f"]),  # one-sided: searched, not bounded
        helper.make_node("Tanh", ["x"], ["g"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], outs, [six, zero, minus])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [10, 17])
def test_bounded_tensors_reads_sigmoid_clip_and_scaled_clip(opset):
    bounds = bounded_tensors(_graph_with_bounded_ops(opset))
    assert bounds == {
        "a": (0.0, 1.0),
        "b": (0.0, 1.0),
        "c": (0.0, 6.0),
        "d": (0.0, 1.0),
        "g": (-1.0, 1.0),
    }


def test_clipping_needs_a_clear_gain_over_min_max():
    rng = np.random.default_rng(4)
    values = rng.normal(size=200000)
    observer = _observe(values)
    args = (observer.pos_hist, observer.neg_hist, observer.bin_edges, observer.min, observer.max)
    plain_least_error = choose_range(*args, min_gain=1.0)
    assert plain_least_error.method != "minmax"  # clipping a Gaussian's tail looks a bit better
    guarded = choose_range(*args)
    assert (guarded.lo, guarded.hi, guarded.method) == (observer.min, observer.max, "minmax")
    assert guarded.mse < MIN_MSE_GAIN * plain_least_error.mse


def test_a_far_outlier_is_still_clipped():
    rng = np.random.default_rng(5)
    # one value in 4 M: its squared clipping error is 5x smaller than min-max's rounding noise
    values = np.concatenate([rng.normal(size=4000000), [500.0]])
    observer = _observe(values)
    args = (observer.pos_hist, observer.neg_hist, observer.bin_edges, observer.min, observer.max)
    choice = choose_range(*args)
    assert choice.method != "minmax" and choice.hi < 10.0  # not a 500-wide range for one value
