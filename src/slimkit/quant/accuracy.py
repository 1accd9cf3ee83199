"""Accuracy-aware quantization: put the most harmful nodes back to FP32 until within budget.

As in NNCF's accuracy-control: rank the quantized nodes once, then revert them one by one in that
order, re-evaluating the user's metric after each, until the drop fits. The ranking score of a node
is the output error (normalised MSE vs FP32 on a few calibration batches) of the model quantized
with every node but that one: the lower it is, the more that node alone costs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runtime import make_session, split_feed

__all__ = ["AccuracySearch", "metric_drop", "output_error", "rank_nodes", "search_fp32_nodes"]

log = logging.getLogger(__name__)

# write(nodes_to_exclude, out_path) -> quantized node names
WriteFn = Callable[[Sequence[str], Path], list[str]]


@dataclass
class AccuracySearch:
    """Outcome of `search_fp32_nodes`.

    Attributes:
        fp32_nodes: Nodes the search put back to FP32, in the order they were reverted.
        metric: The INT8 metric after the search.
        within_budget: Whether the final drop fits the budget.
        ranking: ``(node, output error when only it is FP32)``, most harmful first.
        history: ``(number of reverted nodes, metric)`` after each evaluation.
    """

    fp32_nodes: list[str] = field(default_factory=list)
    metric: float = float("nan")
    within_budget: bool = False
    ranking: list[tuple[str, float]] = field(default_factory=list)
    history: list[tuple[int, float]] = field(default_factory=list)


def metric_drop(baseline: float, metric: float, drop_type: str = "absolute") -> float:
    """``baseline - metric``, divided by ``|baseline|`` when ``drop_type == "relative"``."""
    drop = baseline - metric
    if drop_type == "relative":
        return drop / abs(baseline) if baseline else (0.0 if drop <= 0 else float("inf"))
    return drop


def _run_all(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Outputs of ``path`` over ``feeds``, concatenated along axis 0 per output."""
    session = make_session(path, threads=1)
    dims = {i.name: (i.shape[0] if i.shape else None) for i in session.get_inputs()}
    runs = [session.run(None, c) for feed in feeds for c in split_feed(feed, dims)]
    return [
        np.concatenate([r[k].reshape(1, -1) for r in runs], axis=1) for k in range(len(runs[0]))
    ]


def output_error(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """Sum over outputs of ``mean((y - y_ref)^2) / mean(y_ref^2)``."""
    total = 0.0
    for ref, out in zip(reference, outputs, strict=True):
        power = float(np.mean(np.square(ref.astype(np.float64)))) or 1.0
        total += float(np.mean(np.square(out.astype(np.float64) - ref))) / power
    return total


def rank_nodes(
    write: WriteFn,
    fp32_path: Path,
    candidates: Sequence[str],
    base_exclude: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
) -> list[tuple[str, float]]:
    """Order ``candidates`` by the output error when each alone stays FP32 (lowest first).

    Returns:
        ``[(node, error)]``, most harmful node first; ties keep graph order.
    """
    reference = _run_all(fp32_path, feeds)
    scores = []
    with tempfile.TemporaryDirectory(prefix="slimkit_rank_") as tmp:
        trial = Path(tmp) / "trial.onnx"
        for node in candidates:
            write([*base_exclude, node], trial)
            scores.append((node, output_error(reference, _run_all(trial, feeds))))
    return sorted(scores, key=lambda item: item[1])


def search_fp32_nodes(
    write: WriteFn,
    fp32_path: Path,
    out_path: Path,
    eval_fn: Callable[[str], float],
    baseline: float,
    metric: float,
    candidates: Sequence[str],
    base_exclude: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    max_drop: float,
    drop_type: str = "absolute",
    max_nodes: int | None = None,
) -> AccuracySearch:
    """Revert the most harmful quantized nodes to FP32 until the metric drop is within budget.

    Args:
        write: Writes the QDQ model with the given excluded nodes to a path.
        fp32_path: The FP32 model (reference outputs for the ranking).
        out_path: The INT8 model path (rewritten at each step; final state on return).
        eval_fn: ``eval_fn(onnx_path) -> metric``, higher is better.
        baseline: The FP32 metric.
        metric: The INT8 metric of the model now at ``out_path``.
        candidates: Quantized nodes that may be reverted.
        base_exclude: Nodes the user already excluded.
        feeds: A few calibration feeds for the ranking.
        max_drop: The budget, in the unit of ``drop_type``.
        drop_type: ``"absolute"`` or ``"relative"``.
        max_nodes: Revert at most this many nodes (None: no cap).

    Returns:
        The search outcome; ``out_path`` holds the last model written.
    """
    search = AccuracySearch(metric=metric, history=[(0, metric)])
    if metric_drop(baseline, metric, drop_type) <= max_drop:
        search.within_budget = True
        return search
    search.ranking = rank_nodes(write, fp32_path, candidates, base_exclude, feeds)
    limit = len(search.ranking) if max_nodes is None else min(max_nodes, len(search.ranking))
    for node, _ in search.ranking[:limit]:
        search.fp32_nodes.append(node)
        try:
            write([*base_exclude, *search.fp32_nodes], out_path)
        except ValueError:  # this revert would leave nothing quantized: skip the node
            search.fp32_nodes.pop()
            write([*base_exclude, *search.fp32_nodes], out_path)
            continue
        search.metric = float(eval_fn(str(out_path)))
        search.history.append((len(search.fp32_nodes), search.metric))
        log.info("FP32 node %s: metric %.5g (FP32 %.5g)", node, search.metric, baseline)
        if metric_drop(baseline, search.metric, drop_type) <= max_drop:
            search.within_budget = True
            break
    return search
