"""Benchmark plots: latency vs metric with the Pareto front, and size vs metric.

Rows are those of ``slimkit.bench.report.benchmark_model`` / ``run_bench``. matplotlib is imported
only when a plot is drawn, on a figure with its own Agg canvas: it works headless and leaves the
user's pyplot backend alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimkit._utils import agg_figure

_ENGINE_LABELS = {"cpu_torch": "torch", "cpu_ort_fp32": "ORT FP32", "cpu_ort_int8": "ORT INT8"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates, sorted by increasing cost.

    A point dominates another when its cost is lower or equal and its value higher or equal, one of
    them strictly.

    Args:
        points: ``(cost, value)`` pairs, e.g. ``(latency_ms, metric)``.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _metric_label(rows: Sequence[dict[str, Any]]) -> str:
    names = sorted({r.get("metric_name", "metric") for r in rows})
    return f"{' / '.join(names)} (%)"


def _points(
    rows: Sequence[dict[str, Any]],
    x_of: Callable[[dict[str, Any]], float | None],
    label_of: Callable[[dict[str, Any]], str] = lambda r: str(r.get("name", "?")),
) -> list[tuple[float, float, str]]:
    """``(x, metric %, label)`` for the rows that have both values."""
    pts = []
    for row in rows:
        x, metric = x_of(row), row.get("metric")
        if x is not None and metric is not None:
            pts.append((float(x), 100.0 * float(metric), label_of(row)))
    return pts


def _engine_label(row: dict[str, Any]) -> str:
    engine = row["best_cpu"]["engine"]
    return f"{row.get('name', '?')} [{_ENGINE_LABELS.get(engine, engine)}]"


def _best_cpu_ms(row: dict[str, Any]) -> float | None:
    best = row.get("best_cpu")
    return best["median_ms"] if best else None


def _save(fig: Any, ax: Any, path: str | os.PathLike, empty: bool) -> Path:
    if empty:
        ax.text(
            0.5,
            0.5,
            "no rows with both a metric and this measurement",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _annotate(ax: Any, pts: Sequence[tuple[float, float, str]]) -> None:
    """Label each point; neighbours along x alternate above / below so close labels do not merge."""
    for k, (x, y, label) in enumerate(sorted(pts)):
        dy = 6 if k % 2 == 0 else -12
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, dy), fontsize=8)


def _scatter_front(ax: Any, pts: Sequence[tuple[float, float, str]], color: str) -> None:
    """All points, the Pareto front as red rings joined by a staircase, labels and a legend."""
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, zorder=3, label="models")
    front = [pts[i] for i in pareto_front([(x, y) for x, y, _ in pts])]
    fx, fy = [p[0] for p in front], [p[1] for p in front]
    ax.plot(fx, fy, "-", color="tab:red", drawstyle="steps-post", alpha=0.6, zorder=2)
    ax.scatter(
        fx,
        fy,
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=1.5,
        zorder=4,
        label="Pareto front",
    )
    _annotate(ax, pts)
    ax.legend(loc="best")


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Scatter of CPU latency (each row's fastest CPU engine, ms) vs metric; Pareto front in red.

    Args:
        rows: Benchmark rows (``best_cpu``, ``metric``, ``name``). Rows lacking either are skipped.
        path: The PNG to write (parent folders are created).

    Returns:
        ``path``.
    """
    fig = agg_figure(7, 5)
    ax = fig.subplots()
    pts = _points(rows, _best_cpu_ms, _engine_label)
    if pts:
        _scatter_front(ax, pts, "tab:blue")
    ax.set_xlabel("CPU latency, batch 1, fastest engine (ms, median)")
    ax.set_ylabel(_metric_label(rows))
    ax.set_title("Latency vs metric")
    return _save(fig, ax, path, empty=not pts)


def plot_size_metric(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Scatter of the deployable file size (MiB) vs metric, one labelled point per row.

    Args:
        rows: Benchmark rows (``size_bytes``, ``metric``, ``name``).
        path: The PNG to write (parent folders are created).

    Returns:
        ``path``.
    """
    fig = agg_figure(7, 5)
    ax = fig.subplots()
    pts = _points(rows, lambda r: r["size_bytes"] / 2**20 if r.get("size_bytes") else None)
    if pts:
        _scatter_front(ax, pts, "tab:green")
    ax.set_xlabel("model size on disk (MiB)")
    ax.set_ylabel(_metric_label(rows))
    ax.set_title("Size vs metric")
    return _save(fig, ax, path, empty=not pts)
