"""The sensitivity file format: records, validation, atomic writes, resume and merge.

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

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RESTART_HINT",
    "Sensitivities",
    "as_sensitivities",
    "check_baseline",
    "is_capped",
    "is_pending",
    "load_sensitivities",
    "merge_sensitivities",
    "new_record",
    "ratio_key",
    "resume_record",
    "weights_fingerprint",
    "write_sensitivities",
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


def write_sensitivities(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` (as :func:`load_sensitivities` returns it) to ``path`` atomically: JSON to a
    temp file next to it, then ``os.replace``."""
    out = dict(record)
    out["ratios"] = sorted(record["ratios"])
    out["sensitivities"] = {
        g: {ratio_key(r): loss for r, loss in sorted(losses.items())}
        for g, losses in sorted(record["sensitivities"].items())
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        write_sensitivities(Path(save_file), merged)
    return merged


# --------------------------------------------------------------------------- analysis records
def new_record(
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


def resume_record(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
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


def check_baseline(record: dict[str, Any], baseline: float, path: Path | None) -> None:
    """Store the measured ``baseline`` in ``record``; a ``ValueError`` if it is not positive or
    differs from the one a resumed file holds (other data or metric)."""
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


def is_capped(losses: dict[float, float | None], ratio: float, loss_cap: float) -> bool:
    """Whether a smaller ratio of the group already lost more than ``loss_cap`` (< 1)."""
    return loss_cap < 1 and any(
        v is not None and v > loss_cap for r, v in losses.items() if r < ratio
    )


def is_pending(losses: dict[float, float | None], ratio: float, loss_cap: float) -> bool:
    """Whether a point still has to be measured (missing, or skipped under a lower cap)."""
    return ratio not in losses or (losses[ratio] is None and not is_capped(losses, ratio, loss_cap))


def as_sensitivities(sensitivities: Any) -> Sensitivities:
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
