"""Sensitivity records and the per-group pruning ratios chosen from them.

A sensitivity file is JSON (written by :func:`slimkit.prune.sensitivity.analyze_sensitivity`)::

    {"format": "slimkit.sensitivity", "version": 1,
     "architecture": "MobileNetV2", "fingerprint": "sha256:…",   # of the analysed weights
     "metric": "acc1", "baseline": 0.93, "ratios": [0.1, …, 0.9], "criterion": "l1",
     "sensitivities": {"blocks.1.conv_pw": {"0.1": 0.002, "0.2": 0.011, …, "0.9": null}}}

with ``relative_loss = (baseline - pruned) / baseline``; ``null`` marks a point that was not
measured because a smaller ratio already lost more than ``loss_cap``. In memory (what
:func:`load_sensitivities` returns) the ratio keys are floats and ``null`` is ``None``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import atomic_write_json

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "get_ratios_by_loss",
    "load_sensitivities",
    "merge_sensitivities",
    "ratio_key",
    "ratios_for_flops",
    "weights_fingerprint",
]

FORMAT = "slimkit.sensitivity"
FORMAT_VERSION = 1

Sensitivities = dict[str, dict[float, float | None]]
RESTART_HINT = "pass restart=True to start over (the file is then overwritten)"


# ---------------------------------------------------------------------------------- file format
def ratio_key(ratio: float) -> str:
    """The string key of a ratio in a sensitivity file, e.g. ``0.1 -> "0.1"``."""
    return f"{round(float(ratio), 6):g}"


def weights_fingerprint(module: nn.Module) -> str:
    """``"sha256:<hex>"`` of the state_dict tensors (names, dtypes, shapes, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "architecture": str,
    "fingerprint": str,
    "metric": str,
    "baseline": (int, float),
    "ratios": list,
    "criterion": str,
    "sensitivities": dict,
}


def _parse_record(raw: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate a decoded sensitivity file and convert ratio keys to floats."""
    where = f"sensitivity file {str(path)!r}"
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{where} is not a slimkit sensitivity file (no 'format': {FORMAT!r})")
    for key, kind in _FIELDS.items():
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"{where} is corrupt: field {key!r} is missing or has the wrong type")
    if raw["version"] != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {raw['version']}; this slimkit reads {FORMAT_VERSION}"
        )
    sens: Sensitivities = {}
    try:
        ratios = [float(r) for r in raw["ratios"]]
        for group, losses in raw["sensitivities"].items():
            sens[group] = {float(k): None if v is None else float(v) for k, v in losses.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{where} is corrupt: a ratio or loss is not a number") from None
    return {**raw, "baseline": float(raw["baseline"]), "ratios": ratios, "sensitivities": sens}


def load_sensitivities(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a sensitivity file.

    Args:
        path: A JSON file written by :func:`analyze_sensitivity` or :func:`merge_sensitivities`.

    Returns:
        The record: ``format``, ``version``, ``architecture``, ``fingerprint``, ``metric``,
        ``baseline``, ``ratios``, ``criterion`` and ``sensitivities`` as ``{group: {ratio: loss}}``
        with float ratios; a loss is ``None`` where the point was skipped (see ``loss_cap``).

    Raises:
        ValueError: The file is missing, not JSON, or not in this format.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"sensitivity file {str(path)!r} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"sensitivity file {str(path)!r} is corrupt (not JSON: {e})") from None
    return _parse_record(raw, path)


def _write_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to a temp file next to ``path``, then ``os.replace`` it."""
    out = dict(record)
    out["ratios"] = sorted(record["ratios"])
    out["sensitivities"] = {
        g: {ratio_key(r): loss for r, loss in sorted(losses.items())}
        for g, losses in sorted(record["sensitivities"].items())
    }
    # atomic_file: a temp name tagged with the writer's pid, deleted by the next writer of the
    # file once that process is gone (a kill -9 runs no cleanup)
    atomic_write_json(path, out)


_IDENTITY = ("architecture", "fingerprint", "metric", "criterion")


def _differences(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> list[str]:
    """What identifies an analysis (model, weights, metric, criterion) and differs, in words."""
    return [f"{k} {a[k]!r} {names[0]} vs {b[k]!r} {names[1]}" for k in _IDENTITY if a[k] != b[k]]


def _same_baseline(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def merge_sensitivities(
    files: Iterable[str | os.PathLike[str]], save_file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Combine the files of several workers (``groups=`` / ``shard=``) into one record.

    Args:
        files: Sensitivity files of the same model, metric, criterion and baseline.
        save_file: Where to write the merged file (atomically); ``None`` writes nothing.

    Returns:
        The merged record, as :func:`load_sensitivities` returns it.

    Raises:
        ValueError: No files, a file is invalid, the files disagree on the model / metric /
            criterion / baseline, or two files give different losses for the same point.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("merge_sensitivities needs at least one file")
    merged = load_sensitivities(paths[0])
    merged["sensitivities"] = {g: dict(v) for g, v in merged["sensitivities"].items()}
    for path in paths[1:]:
        rec = load_sensitivities(path)
        diff = _differences(merged, rec, ("before", "in this file"))
        if not _same_baseline(merged["baseline"], rec["baseline"]):
            diff.append(
                f"baseline {merged['baseline']!r} before vs {rec['baseline']!r} in this file"
            )
        if diff:
            raise ValueError(
                f"cannot merge {str(path)!r} with {str(paths[0])!r}: {'; '.join(diff)}"
            )
        merged["ratios"] = sorted(set(merged["ratios"]) | set(rec["ratios"]))
        for group, losses in rec["sensitivities"].items():
            target = merged["sensitivities"].setdefault(group, {})
            for ratio, loss in losses.items():
                old = target.get(ratio)
                if old is not None and loss is not None and abs(old - loss) > 1e-9:
                    raise ValueError(
                        f"{str(path)!r} and an earlier file disagree on group {group!r} at ratio "
                        f"{ratio_key(ratio)} ({loss!r} vs {old!r}); "
                        "were they computed on the same data?"
                    )
                target[ratio] = loss if old is None else old
    if save_file is not None:
        _write_atomic(Path(save_file), merged)
    return merged


# --------------------------------------------------------------------------- analysis records
def _new_record(
    architecture: str, fingerprint: str, metric: str, criterion: str, ratios: list[float]
) -> dict[str, Any]:
    """An empty record (``baseline`` still ``None``) of the analysis these identify."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": architecture,
        "fingerprint": fingerprint,
        "metric": metric,
        "baseline": None,
        "ratios": ratios,
        "criterion": criterion,
        "sensitivities": {},
    }


def _resume_record(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The record stored in ``path`` if it belongs to the same analysis, else a ``ValueError``."""
    try:
        old = load_sensitivities(path)
    except ValueError as e:
        raise ValueError(f"{e}; {RESTART_HINT}") from None
    diff = _differences(old, fresh, ("in the file", "in this run"))
    if diff:
        raise ValueError(
            f"sensitivity file {str(path)!r} belongs to another analysis ({'; '.join(diff)}); "
            f"use another save_file or {RESTART_HINT}"
        )
    old["ratios"] = sorted(set(old["ratios"]) | set(fresh["ratios"]))
    return old


def _check_baseline(record: dict[str, Any], baseline: float, path: Path | None) -> None:
    if not math.isfinite(baseline) or baseline <= 0:
        raise ValueError(
            f"the unpruned model's {record['metric']} is {baseline}: relative losses need a "
            "positive baseline (higher is better). Train the model first, or use a metric that is "
            "positive for a working model (accuracy, mAP, mIoU, or a constant minus an error)"
        )
    stored = record["baseline"]
    if stored is not None and not _same_baseline(stored, baseline):
        raise ValueError(
            f"sensitivity file {str(path)!r} has baseline {stored!r} but this run measured "
            f"{baseline!r}: the evaluation data or metric differ; {RESTART_HINT}"
        )
    record["baseline"] = baseline


def _check_ratios(ratios: Iterable[float]) -> list[float]:
    values = sorted({float(ratio_key(r)) for r in ratios})
    if not values or any(not 0 < r < 1 for r in values):
        raise ValueError(
            f"ratios must be fractions in (0, 1) such as (0.1, ..., 0.9), got {list(ratios)!r}"
        )
    return values


def _select_groups(
    found: Sequence[str], groups: Iterable[str] | None, shard: tuple[int, int] | None
) -> list[str]:
    """The groups this run measures: ``groups`` (validated) or all, then its ``shard``."""
    names = sorted(found)
    if groups is not None:
        wanted = sorted(set([groups] if isinstance(groups, str) else groups))
        unknown = [g for g in wanted if g not in found]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; the prunable groups are {names}")
        names = wanted
    if shard is not None:
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, e.g. (0, 4); got {shard!r}")
        names = names[index::count]
    return names


def _is_capped(losses: dict[float, float | None], ratio: float, loss_cap: float) -> bool:
    """Whether a smaller ratio of the group already lost more than ``loss_cap`` (< 1)."""
    return loss_cap < 1 and any(
        v is not None and v > loss_cap for r, v in losses.items() if r < ratio
    )


def _is_pending(losses: dict[float, float | None], ratio: float, loss_cap: float) -> bool:
    """Whether a point still has to be measured (missing, or skipped under a lower cap)."""
    return ratio not in losses or (
        losses[ratio] is None and not _is_capped(losses, ratio, loss_cap)
    )


# ------------------------------------------------------------------------------ choosing ratios
def _as_sensitivities(sensitivities: Any) -> Sensitivities:
    """``{group: {ratio: loss}}`` from a raw dict, a record (loaded or raw JSON) or a file path."""
    if isinstance(sensitivities, (str, os.PathLike)):
        sensitivities = load_sensitivities(sensitivities)
    if not isinstance(sensitivities, dict):
        raise TypeError(
            "sensitivities must be {group: {ratio: loss}}, a loaded sensitivity record or a file "
            f"path; got {type(sensitivities).__name__}"
        )
    if sensitivities.get("format") == FORMAT:
        sensitivities = sensitivities["sensitivities"]
    out: Sensitivities = {}
    for group, losses in sensitivities.items():
        if not isinstance(losses, dict):
            raise ValueError(f"group {group!r}: expected {{ratio: loss}}, got {losses!r}")
        out[group] = {float(r): None if v is None else float(v) for r, v in losses.items()}
    return out


def _largest_ratio(losses: dict[float, float | None], budget: float) -> float | None:
    """PaddleSlim's rule for one group (see :func:`get_ratios_by_loss`)."""
    points = sorted((r, math.inf if v is None else v) for r, v in losses.items())
    for i in range(len(points) - 1, -1, -1):
        r0, l0 = points[i]
        if l0 <= budget:  # False for NaN
            if i == len(points) - 1 or not math.isfinite(points[i + 1][1]):
                return r0
            r1, l1 = points[i + 1]
            return r0 + (budget - l0) * (r1 - r0) / (l1 - l0)
    return None


def get_ratios_by_loss(sensitivities: Any, eval_metric_loss: float) -> dict[str, float]:
    """Per group, the largest pruning ratio whose relative loss stays within the budget.

    As PaddleSlim: the largest measured ratio with ``loss <= eval_metric_loss`` is found; if a
    larger ratio was measured, the result is interpolated linearly between that point and the next
    one (which is over budget). Points that were not measured (``None``, skipped by ``loss_cap``)
    count as over any budget and are never interpolated towards: the last measured ratio within
    budget is taken. A group already over budget at its smallest ratio is not pruned (omitted).
    Each group's loss is measured alone, so the combined loss of all chosen ratios is usually larger
    than the budget; fine-tuning recovers it.

    Args:
        sensitivities: ``{group: {ratio: loss}}``, a record from :func:`load_sensitivities` or
            :func:`merge_sensitivities`, or the path of a sensitivity file.
        eval_metric_loss: The relative loss budget, e.g. ``0.05``.

    Returns:
        ``{group: ratio}`` for the groups that can be pruned within the budget.
    """
    if isinstance(eval_metric_loss, bool) or not isinstance(eval_metric_loss, (int, float)):
        raise TypeError(f"eval_metric_loss must be a number such as 0.05, got {eval_metric_loss!r}")
    if not math.isfinite(eval_metric_loss) or eval_metric_loss < 0:
        raise ValueError(
            f"eval_metric_loss must be a finite value >= 0 such as 0.05, got {eval_metric_loss}"
        )
    ratios = {}
    for group, losses in _as_sensitivities(sensitivities).items():
        ratio = _largest_ratio(losses, float(eval_metric_loss))
        if ratio is not None:
            ratios[group] = ratio
    return ratios


def ratios_for_flops(
    sensitivities: Any,
    model: nn.Module,
    example_inputs: Any,
    pruned_flops: float = 0.5,
    *,
    ignore: Iterable[str | nn.Module] = (),
    criterion: str | None = None,
    tolerance: float = 0.01,
    max_iters: int = 25,
) -> dict[str, float]:
    """The ratios of the loss budget that removes ``pruned_flops`` of the model's FLOPs.

    Binary-searches ``eval_metric_loss`` for :func:`get_ratios_by_loss`, measuring each candidate
    with ``prune_model`` + ``count_macs``, until the FLOPs reduction is within ``tolerance`` of the
    target; otherwise returns the smallest budget found that reaches at least the target.

    Args:
        sensitivities: As for :func:`get_ratios_by_loss`.
        model: The unpruned model the sensitivities were measured on.
        example_inputs: Inputs to trace the model and count MACs.
        pruned_flops: Fraction of FLOPs to remove, in (0, 1).
        ignore: As for ``prune_model``.
        criterion: As for ``prune_model``; default: the record's criterion, else ``"l1"``.
        tolerance: Accepted absolute difference between achieved and asked reduction.
        max_iters: Most bisection steps.

    Returns:
        ``{group: ratio}`` (groups not pruned omitted).

    Raises:
        ValueError: ``pruned_flops`` is not in (0, 1), or the measured ratios cannot reach it.
    """
    from slimkit.prune.counting import count_macs
    from slimkit.prune.pruner import prune_model

    if not 0 < pruned_flops < 1:
        raise ValueError(
            f"pruned_flops must be a fraction in (0, 1) such as 0.5, got {pruned_flops}"
        )
    if criterion is None:
        criterion = (
            sensitivities.get("criterion", "l1") if isinstance(sensitivities, dict) else "l1"
        )
    losses = _as_sensitivities(sensitivities)
    base = count_macs(model, example_inputs)
    reductions: dict[tuple[tuple[str, float], ...], float] = {}

    def attempt(budget: float) -> tuple[dict[str, float], float]:
        ratios = {g: r for g, r in get_ratios_by_loss(losses, max(budget, 0.0)).items() if r > 0}
        key = tuple(sorted(ratios.items()))
        if key not in reductions:
            pruned = prune_model(model, ratios, example_inputs, ignore=ignore, criterion=criterion)
            reductions[key] = 1 - count_macs(pruned, example_inputs) / base if ratios else 0.0
        return ratios, reductions[key]

    finite = [v for g in losses.values() for v in g.values() if v is not None and math.isfinite(v)]
    lo, hi = 0.0, max(finite, default=0.0)
    best = attempt(hi)
    if best[1] < pruned_flops - tolerance:
        raise ValueError(
            f"pruning every group at its largest measured ratio removes {best[1]:.1%} of the "
            f"FLOPs, less than the {pruned_flops:.1%} asked; lower pruned_flops or analyse "
            "larger ratios"
        )
    for _ in range(max_iters):
        mid = (lo + hi) / 2
        ratios, reduction = attempt(mid)
        if abs(reduction - pruned_flops) <= tolerance:
            return ratios
        if reduction < pruned_flops:
            lo = mid
        else:
            hi, best = mid, (ratios, reduction)
    return best[0]
