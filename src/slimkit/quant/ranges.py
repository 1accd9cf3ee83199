"""Range searches on |x| histograms: pure numpy functions, no ONNX or ORT.

Every function takes a histogram of absolute values (``hist[k]`` counts values in
``[bin_edges[k], bin_edges[k + 1])``) and returns a clipping threshold ``T``; the quantization
range of the tensor is then ``[0, T]`` (never negative) or ``[-T, T]`` (see `activation_range`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "RANGE_ALGOS",
    "activation_range",
    "kl_candidates",
    "kl_divergences",
    "kl_threshold",
    "minmax_threshold",
    "percentile_threshold",
]

RANGE_ALGOS = ("KL", "minmax", "percentile")

# Divergences closer than this (nats) count as equal minima; the largest candidate among them wins.
KL_TIE_TOL = 1e-9


def _check_hist(hist: np.ndarray, bin_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a histogram and its edges; return them as float64 arrays."""
    counts = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(bin_edges, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"hist must be a non-empty 1-D array, got shape {counts.shape}")
    if edges.shape != (counts.size + 1,):
        raise ValueError(
            f"bin_edges must have len(hist) + 1 = {counts.size + 1} entries, got shape {edges.shape}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("hist must hold finite, non-negative counts")
    if np.any(np.diff(edges) <= 0):
        raise ValueError("bin_edges must be strictly increasing")
    if counts.sum() <= 0:
        raise ValueError("hist is empty (all counts are zero): no data to compute a range from")
    return counts, edges


def _xlogx(x: np.ndarray) -> np.ndarray:
    """Elementwise ``x * log(x)`` with ``0 * log(0) = 0``."""
    positive = x > 0
    return np.where(positive, x * np.log(np.where(positive, x, 1.0)), 0.0)


def _zero_bin_neutralised(hist: np.ndarray) -> np.ndarray:
    """Counts as float64 with bin 0 set to bin 1's count.

    After ReLU half of the values can be exactly 0; that spike would dominate P and push every
    threshold down. NVIDIA's TensorRT calibrators (pytorch-quantization, ModelOpt) replace it the
    same way before the entropy search.
    """
    counts = np.array(hist, dtype=np.float64)
    if counts.size > 1:
        counts[0] = counts[1]
    return counts


def kl_divergences(hist: np.ndarray, num_levels: int = 128) -> np.ndarray:
    """KL(P||Q) of every candidate threshold of a TensorRT-style entropy calibration.

    Bin 0 first takes bin 1's count (see `_zero_bin_neutralised`). Candidate ``i``
    (``num_levels <= i <= len(hist)``) keeps the first ``i`` bins. P is those bins with the outlier
    mass (bins ``>= i``) added to bin ``i - 1``. Q is the same ``i`` bins without the outliers,
    merged into ``num_levels`` levels (bin ``k`` joins level ``k * num_levels // i``) and spread
    evenly back over each level's non-empty bins; empty bins stay empty. P and Q are normalised;
    ``0 * log(0 / q) = 0``; P mass where Q has none (outliers folded into an empty bin) is ``inf``.

    All candidates are evaluated at once from cumulative sums: with ``S_g``/``N_g`` the count and
    the number of non-empty bins of level ``g``, ``C`` the kept count, ``O`` the outliers and ``T``
    the total, ``KL = (sum p log p - sum_g S_g log(S_g / N_g) - O log q_last) / T + log(C / T)``.

    Args:
        hist: Counts of |x| per bin.
        num_levels: Number of quantization levels of the non-negative half (128 for int8).

    Returns:
        Array of ``len(hist) - num_levels + 1`` divergences, entry ``k`` for candidate
        ``num_levels + k``; empty when the histogram has fewer than ``num_levels`` bins.
    """
    return kl_candidates(hist, num_levels)[0]


def kl_candidates(hist: np.ndarray, num_levels: int = 128) -> tuple[np.ndarray, ...]:
    """`kl_divergences` plus what the guards of `guarded_kl_threshold` look at, per candidate.

    Returns:
        ``(kl, clipped_share, occupied_levels)``: the divergences; the share of the (zero-bin
        neutralised) mass above the candidate; the number of the ``num_levels`` levels that hold
        kept mass. Empty arrays when the histogram has fewer than ``num_levels`` bins.
    """
    counts = _zero_bin_neutralised(hist)
    n, levels = counts.size, int(num_levels)
    if n < levels:
        return np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
    cand = np.arange(levels, n + 1)
    csum = np.concatenate([[0.0], np.cumsum(counts)])
    nzsum = np.concatenate([[0], np.cumsum(counts > 0)])
    plogp_prefix = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])
    total = csum[-1]

    # level g holds bins [ceil(g * i / L), ceil((g + 1) * i / L)): exact integer arithmetic
    bounds = (np.arange(levels + 1)[None, :] * cand[:, None] + levels - 1) // levels
    group_sum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    group_nz = nzsum[bounds[:, 1:]] - nzsum[bounds[:, :-1]]
    del bounds
    occupied = np.count_nonzero(group_sum > 0, axis=1)
    safe_sum = np.where(group_sum > 0, group_sum, 1.0)
    sum_plogq = np.where(group_sum > 0, group_sum * np.log(safe_sum / np.maximum(group_nz, 1)), 0.0)
    sum_plogq = sum_plogq.sum(axis=1)

    kept = csum[cand]
    outliers = total - kept
    last = counts[cand - 1]
    sum_plogp = plogp_prefix[cand - 1] + _xlogx(last + outliers)
    q_last = np.where(last > 0, group_sum[:, -1] / np.maximum(group_nz[:, -1], 1), 0.0)
    has_out = outliers > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out_term = np.where(has_out, outliers * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        kl = (sum_plogp - sum_plogq - out_term) / total + np.log(
            np.where(kept > 0, kept, 1.0) / total
        )
    invalid = (kept <= 0) | (has_out & (q_last <= 0))
    kl = np.where(invalid, np.inf, np.maximum(kl, 0.0))
    return kl, outliers / total if total > 0 else outliers, occupied


def kl_threshold(hist: np.ndarray, bin_edges: np.ndarray, num_levels: int = 128) -> float:
    """TensorRT-style entropy calibration threshold of a |x| histogram.

    Minimises KL(P||Q) over the candidates of `kl_divergences`; among equal minima (within
    ``KL_TIE_TOL``) the largest candidate wins. The threshold is that candidate's upper bin edge.

    Args:
        hist: Counts of |x| per bin (e.g. 2048 bins).
        bin_edges: ``len(hist) + 1`` increasing edges, usually starting at 0.
        num_levels: Number of quantization levels of the non-negative half (128 for int8).

    Returns:
        The clipping threshold T (the range is ``[-T, T]`` or ``[0, T]``).

    Raises:
        ValueError: If the histogram is malformed or empty, or ``num_levels < 1``.
    """
    counts, edges = _check_hist(hist, bin_edges)
    if int(num_levels) < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if counts.size <= num_levels:
        return float(edges[-1])
    if _zero_bin_neutralised(counts).sum() == 0:  # every value in bin 0
        return float(edges[num_levels])
    kl = kl_divergences(counts, num_levels)
    best = float(np.min(kl))
    index = int(np.nonzero(kl <= best + KL_TIE_TOL * max(1.0, best))[0][-1])
    return float(edges[num_levels + index])


def minmax_threshold(hist: np.ndarray, bin_edges: np.ndarray) -> float:
    """Upper edge of the last non-empty bin: the histogram's view of max |x|.

    Args:
        hist: Counts of |x| per bin.
        bin_edges: ``len(hist) + 1`` increasing edges.

    Returns:
        The threshold T.
    """
    counts, edges = _check_hist(hist, bin_edges)
    return float(edges[int(np.nonzero(counts)[0][-1]) + 1])


def percentile_threshold(
    hist: np.ndarray, bin_edges: np.ndarray, percentile: float = 99.99
) -> float:
    """Upper edge of the first bin where the cumulative share of |x| reaches ``percentile``.

    Args:
        hist: Counts of |x| per bin.
        bin_edges: ``len(hist) + 1`` increasing edges.
        percentile: Share of values to keep inside the range, in ``(0, 100]``.

    Returns:
        The threshold T.
    """
    counts, edges = _check_hist(hist, bin_edges)
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    cumulative = np.cumsum(counts)
    index = int(np.searchsorted(cumulative, percentile / 100.0 * cumulative[-1], side="left"))
    return float(edges[min(index, counts.size - 1) + 1])


def activation_range(
    hist: np.ndarray,
    bin_edges: np.ndarray,
    amax: float,
    signed: bool,
    algo: str = "KL",
    num_levels: int = 128,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """Quantization range ``(lo, hi)`` of an activation from its |x| histogram.

    The threshold never exceeds the observed ``amax`` (a histogram edge may lie above it, e.g.
    when KL keeps the largest of equal minima); ``"minmax"`` uses ``amax`` itself.

    Args:
        hist: Counts of |x| per bin.
        bin_edges: ``len(hist) + 1`` increasing edges.
        amax: Observed max |x|.
        signed: Whether the tensor was ever negative: ``[-T, T]`` if so, else ``[0, T]``.
        algo: One of `RANGE_ALGOS`.
        num_levels: Levels of the non-negative half for ``"KL"``.
        percentile: Share kept for ``"percentile"``.

    Returns:
        ``(lo, hi)`` with ``lo = -hi`` (signed) or ``lo = 0``.
    """
    if algo not in RANGE_ALGOS:
        raise ValueError(f"unknown range algo {algo!r}; choose one of {RANGE_ALGOS}")
    if amax <= 0.0:
        return 0.0, 0.0
    if algo == "minmax":
        threshold = amax
    elif algo == "KL":
        threshold = kl_threshold(hist, bin_edges, num_levels)
    else:
        threshold = percentile_threshold(hist, bin_edges, percentile)
    threshold = float(min(threshold, amax))
    return (-threshold if signed else 0.0), threshold
