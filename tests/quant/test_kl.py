"""kl_threshold against a slow, literal reference loop; percentile/minmax; activation ranges."""

import numpy as np
import pytest

from slimkit.quant import kl_threshold, minmax_threshold, percentile_threshold
from slimkit.quant.ranges import KL_TIE_TOL, activation_range, kl_divergences


def reference_divergences(hist: np.ndarray, num_levels: int) -> np.ndarray:
    """One candidate at a time, exactly as the TensorRT calibration is described."""
    hist = np.array(hist, dtype=np.float64)
    hist[0] = hist[1]  # the ReLU zero spike is replaced by its neighbour
    out = []
    for i in range(num_levels, hist.size + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        sliced = hist[:i]
        level = np.arange(i) * num_levels // i  # bin k joins level k * L // i
        level_sum = np.bincount(level, weights=sliced, minlength=num_levels)
        level_nonempty = np.bincount(level, weights=sliced > 0, minlength=num_levels)
        q = np.where(sliced > 0, level_sum[level] / np.maximum(level_nonempty[level], 1), 0.0)
        if q.sum() == 0:
            out.append(np.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        support = p > 0  # 0 * log(0 / q) = 0; p > 0 where q == 0 is an infinite divergence
        if np.any(q[support] == 0):
            out.append(np.inf)
        else:
            out.append(float(np.sum(p[support] * np.log(p[support] / q[support]))))
    return np.array(out)


def reference_threshold(hist: np.ndarray, edges: np.ndarray, num_levels: int) -> float:
    kl = reference_divergences(hist, num_levels)
    best = kl.min()
    last_min = max(k for k, v in enumerate(kl) if v <= best + KL_TIE_TOL * max(1.0, best))
    return float(edges[num_levels + last_min])


def _hist(samples: np.ndarray, bins: int, upper: float | None = None):
    a = np.abs(samples)
    return np.histogram(a, bins=bins, range=(0.0, upper or float(a.max())))


def _cases(seed: int):
    rng = np.random.default_rng(seed)
    gauss = _hist(rng.normal(size=20000), 512)
    laplace = _hist(rng.laplace(size=20000), 512)
    outliers = _hist(np.concatenate([rng.normal(size=20000), [40.0, -55.0, 60.0]]), 512)
    zero_tail = _hist(rng.normal(size=5000), 512, upper=20.0)
    spike = (np.where(np.arange(300) == 200, 1000.0, 0.0), np.linspace(0.0, 3.0, 301))
    sparse = _hist(rng.exponential(size=300) ** 2, 400)
    return {
        "gauss": gauss,
        "laplace": laplace,
        "outliers": outliers,
        "zero_tail": zero_tail,
        "spike": spike,
        "sparse": sparse,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["gauss", "laplace", "outliers", "zero_tail", "spike", "sparse"])
def test_kl_threshold_matches_reference_loop(seed, name):
    hist, edges = _cases(seed)[name]
    levels = 64
    fast = kl_divergences(hist, levels)
    slow = reference_divergences(hist, levels)
    assert np.array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-7, atol=1e-10)
    assert kl_threshold(hist, edges, levels) == reference_threshold(hist, edges, levels)


def test_kl_default_levels_on_2048_bins_matches_reference():
    rng = np.random.default_rng(5)
    hist, edges = _hist(rng.standard_t(df=3, size=50000), 2048)
    assert kl_threshold(hist, edges) == reference_threshold(hist, edges, 128)


def test_kl_threshold_well_below_max_for_heavy_tails():
    rng = np.random.default_rng(0)
    data = np.maximum(rng.standard_t(df=2, size=200000), 0.0)
    hist, edges = _hist(data, 2048)
    threshold = kl_threshold(hist, edges)
    assert threshold < 0.25 * edges[-1]
    assert threshold > np.quantile(data[data > 0], 0.9)


def test_kl_spike_keeps_largest_of_equal_minima():
    hist = np.zeros(256)
    hist[150] = 10.0
    edges = np.linspace(0.0, 1.0, 257)
    assert kl_threshold(hist, edges) == 1.0  # every candidate past the spike has KL == 0


def test_kl_short_histogram_returns_top_edge():
    assert kl_threshold(np.ones(64), np.linspace(0, 2, 65), num_levels=128) == 2.0


@pytest.mark.parametrize(
    "hist, edges, match",
    [
        (np.zeros(300), np.linspace(0, 1, 301), "empty"),
        (np.ones(300), np.linspace(0, 1, 300), "len"),
        (-np.ones(300), np.linspace(0, 1, 301), "non-negative"),
        (np.ones((2, 300)), np.linspace(0, 1, 301), "1-D"),
    ],
)
def test_kl_rejects_bad_histograms(hist, edges, match):
    with pytest.raises(ValueError, match=match):
        kl_threshold(hist, edges)


def test_minmax_and_percentile_thresholds():
    hist = np.zeros(100)
    hist[:10] = 1000.0
    hist[80] = 1.0
    edges = np.linspace(0.0, 10.0, 101)
    assert minmax_threshold(hist, edges) == pytest.approx(8.1)
    assert percentile_threshold(hist, edges, 99.9) == pytest.approx(1.0)
    assert percentile_threshold(hist, edges, 100.0) == pytest.approx(8.1)
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(hist, edges, 0.0)


def test_activation_range_signed_unsigned_and_clamped_to_amax():
    hist = np.zeros(256)
    hist[150] = 10.0
    edges = np.linspace(0.0, 1.0, 257)
    lo, hi = activation_range(hist, edges, amax=0.59, signed=False, algo="KL")
    assert (lo, hi) == (0.0, 0.59)
    assert activation_range(hist, edges, amax=0.59, signed=True, algo="minmax") == (-0.59, 0.59)
    assert activation_range(hist, edges, amax=0.0, signed=True) == (0.0, 0.0)
    with pytest.raises(ValueError, match="unknown range algo"):
        activation_range(hist, edges, amax=1.0, signed=True, algo="mse")
