"""The sensitivity file format: records, validation, atomic and locked writes, resume and merge.

A sensitivity file is JSON (written by :func:`slimkit.prune.sensitivity.analyze_sensitivity`)::

    {"format": "slimkit.sensitivity", "version": 1,
     "architecture": "MobileNetV2", "fingerprint": "sha256:…",   # of the analysed weights
     "metric": "acc1", "baseline": 0.93, "ratios": [0.1, …, 0.9], "criterion": "l1",
     "sensitivities": {"blocks.1.conv_pw": {"0.1": 0.002, "0.2": 0.011, …, "0.9": null}},
     "unprunable": {"head.reshape_conv": "at ratio 0.1: RuntimeError: shape '[-1, 200]' …"}}

with ``relative_loss = (baseline - pruned) / baseline``; ``null`` marks a point that was not
measured because a smaller ratio already lost more than ``loss_cap``; ``unprunable`` (optional)
names the groups whose pruned model failed, with the reason. In memory (what
:func:`load_sensitivities` returns) the ratio keys are floats and ``null`` is ``None``.

What a file may hold (checked on every read: load, resume, merge, ``get_ratios_by_loss``):

* ``baseline``: finite and > 0 (relative losses divide by it);
* ratios, in ``ratios`` and as keys: in (0, 1);
* a loss: ``null`` or a finite number. It is negative when pruning improved the metric, and may
  exceed 1 for a metric that can turn negative. For the fraction metrics (``acc1``, ``acc5``,
  ``bbox_map``, ``map``, ``miou``) the pruned value ``baseline * (1 - loss)`` must lie in [0, 1]
  (so the loss in ``[1 - 1/baseline, 1]``) and the baseline in (0, 1].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._io import atomic_write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: concurrent writers are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FRACTION_METRICS",
    "RESTART_HINT",
    "Sensitivities",
    "add_points",
    "as_sensitivities",
    "check_baseline",
    "check_criterion",
    "check_replaceable",
    "is_capped",
    "is_pending",
    "load_sensitivities",
    "locked",
    "merge_sensitivities",
    "new_record",
    "ratio_key",
    "resume_record",
    "save_shared",
    "weights_fingerprint",
    "write_sensitivities",
]

FORMAT = "slimkit.sensitivity"
FORMAT_VERSION = 1
FRACTION_METRICS = frozenset({"acc1", "acc5", "accuracy", "bbox_map", "map", "miou"})

Sensitivities = dict[str, dict[float, float | None]]
RESTART_HINT = "pass restart=True to start over (the file is then overwritten)"
_SLACK = 1e-6  # rounding allowed around the bounds of a fraction metric


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


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} is {value!r}, not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} is {value!r}; it must be a finite number")
    return number


def _ratio(value: Any, what: str) -> float:
    ratio = _number(value, what)
    if not 0 < ratio < 1:
        raise ValueError(f"{what} is {value!r}; ratios are fractions in (0, 1)")
    return ratio


def _parse_losses(raw: Any, metric: str | None = None, baseline: float = 1.0) -> Sensitivities:
    """``{group: {ratio: loss}}`` checked as the module docstring says (``metric``: the file's)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"sensitivities must be {{group: {{ratio: loss}}}}, got {raw!r}")
    bounded = metric in FRACTION_METRICS
    out: Sensitivities = {}
    for group, losses in raw.items():
        if not isinstance(group, str) or not isinstance(losses, Mapping):
            raise ValueError(
                f"group {group!r}: expected a name and {{ratio: loss}}, got {losses!r}"
            )
        out[group] = {}
        for key, value in losses.items():
            ratio = _ratio(key, f"group {group!r}: ratio key")
            where = f"group {group!r} at ratio {ratio_key(ratio)}: the loss"
            loss = None if value is None else _number(value, where)
            if bounded and loss is not None and not -_SLACK <= baseline * (1 - loss) <= 1 + _SLACK:
                raise ValueError(
                    f"{where} is {value!r}: the pruned {metric} would be "
                    f"{baseline * (1 - loss):.6g}, outside [0, 1]"
                )
            out[group][ratio] = loss
    return out


def _parse_record(raw: Any, where: str) -> dict[str, Any]:
    """Validate a decoded sensitivity record and convert ratio keys to floats."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{where} is not a slimkit sensitivity file (no 'format': {FORMAT!r})")
    for key, kind in _FIELDS.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise ValueError(f"{where} is corrupt: field {key!r} is missing or has the wrong type")
    if raw["version"] != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {raw['version']}; this slimkit reads {FORMAT_VERSION}"
        )
    unprunable = raw.get("unprunable", {})
    try:
        baseline = _number(raw["baseline"], "the baseline")
        if baseline <= 0 or (raw["metric"] in FRACTION_METRICS and baseline > 1 + _SLACK):
            raise ValueError(f"the baseline {baseline!r} is impossible for {raw['metric']!r}")
        ratios = [_ratio(r, "a ratio in 'ratios'") for r in raw["ratios"]]
        sens = _parse_losses(raw["sensitivities"], raw["metric"], baseline)
        if not isinstance(unprunable, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in unprunable.items()
        ):
            raise ValueError("'unprunable' must map group names to reasons")
    except ValueError as e:
        raise ValueError(f"{where} is corrupt: {e}") from None
    both = sorted(set(sens) & set(unprunable))
    if both:
        raise ValueError(f"{where} is corrupt: groups {both} have losses and are unprunable")
    return {
        **raw,
        "baseline": baseline,
        "ratios": ratios,
        "sensitivities": sens,
        "unprunable": dict(unprunable),
    }


def load_sensitivities(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a sensitivity file.

    Args:
        path: A JSON file written by :func:`analyze_sensitivity` or :func:`merge_sensitivities`.

    Returns:
        The record: ``format``, ``version``, ``architecture``, ``fingerprint``, ``metric``,
        ``baseline``, ``ratios``, ``criterion``, ``sensitivities`` as ``{group: {ratio: loss}}``
        with float ratios (a loss is ``None`` where the point was skipped, see ``loss_cap``) and
        ``unprunable`` as ``{group: reason}``.

    Raises:
        TypeError: ``path`` is not a path.
        ValueError: The file is missing, not JSON, not in this format, or holds a value it
            cannot hold (see the module docstring).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a sensitivity file path is a str or Path, got {type(path).__name__}")
    where = f"sensitivity file {str(path)!r}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise ValueError(f"{where} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a directory; pass the JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where} is corrupt (not JSON: {e})") from None
    except ValueError as e:
        raise ValueError(f"{where} is corrupt: {e}") from None
    return _parse_record(raw, where)


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}; values must be finite numbers")


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """A ``ValueError`` unless ``path`` is free or holds a slimkit sensitivity file (of any
    analysis, even a damaged one): slimkit never replaces a file it did not write."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; pass a file name for the sensitivities")
    if not path.exists():
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raw = None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} exists and is not a slimkit sensitivity file; slimkit does not "
            "overwrite it: choose another file name, or move that file away"
        )


def write_sensitivities(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Write ``record`` (as :func:`load_sensitivities` returns it) to ``path`` atomically: JSON to a
    temp file next to it, then ``os.replace``."""
    path = Path(path)
    out = dict(record)
    out["ratios"] = sorted(record["ratios"])
    out["sensitivities"] = {
        g: {ratio_key(r): loss for r, loss in sorted(losses.items())}
        for g, losses in sorted(record["sensitivities"].items())
    }
    out["unprunable"] = dict(sorted(record.get("unprunable", {}).items()))
    # a temp name tagged with the writer's pid: the next writer deletes it once that process is
    # gone (a kill -9 runs no cleanup)
    atomic_write_json(path, out, allow_nan=False)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for a ``with`` block (POSIX ``flock`` on a hidden
    ``.<name>.lock`` next to it, removed by the last holder).

    Writers of one sensitivity file take it around read-merge-write, so that concurrent
    workers (shards, ranks) on one file keep every point.
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break  # still the lock file: ours
        os.close(fd)  # the previous holder removed it while we waited: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


# ------------------------------------------------------------------------------ combining records
_IDENTITY = ("architecture", "fingerprint", "metric", "criterion")


def _differences(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> list[str]:
    """What identifies an analysis (model, weights, metric, criterion) and differs, in words."""
    diff = [f"{k} {a[k]!r} {names[0]} vs {b[k]!r} {names[1]}" for k in _IDENTITY if a[k] != b[k]]
    if None not in (a["baseline"], b["baseline"]) and not _same_baseline(
        a["baseline"], b["baseline"]
    ):
        diff.append(f"baseline {a['baseline']!r} {names[0]} vs {b['baseline']!r} {names[1]}")
    return diff


def _same_baseline(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _absorb(into: dict[str, Any], other: dict[str, Any], where: str | None) -> None:
    """Add ``other``'s points and unprunable groups to ``into`` (same analysis).

    A measured point wins over a skipped (``None``) one. With ``where`` (merging files), two
    different losses for one point, or a group with losses in one record and unprunable in the
    other, are a ``ValueError``; without it (concurrent writers) ``into`` keeps its own.
    """
    into["ratios"] = sorted(set(into["ratios"]) | set(other["ratios"]))
    sens, failed = into["sensitivities"], into.setdefault("unprunable", {})
    for group, reason in other.get("unprunable", {}).items():
        if group in sens and where is not None:
            raise ValueError(
                f"{where} says group {group!r} is unprunable ({reason}); an earlier "
                "file has losses for it"
            )
        failed.setdefault(group, reason)
        sens.pop(group, None)
    for group, losses in other["sensitivities"].items():
        if group in failed:
            if where is not None:
                raise ValueError(
                    f"{where} has losses for group {group!r}, which an earlier file "
                    f"says is unprunable ({failed[group]})"
                )
            continue
        target = sens.setdefault(group, {})
        for ratio, loss in losses.items():
            old = target.get(ratio)
            if old is not None and loss is not None and abs(old - loss) > 1e-9 and where:
                raise ValueError(
                    f"{where} and an earlier file disagree on group {group!r} at ratio "
                    f"{ratio_key(ratio)} ({loss!r} vs {old!r}); were they computed on the same data?"
                )
            target[ratio] = loss if old is None else old


def add_points(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add the points (and unprunable groups) of ``other``, a record of the same analysis, that
    ``into`` lacks; where both have a point, ``into`` keeps its own."""
    _absorb(into, other, None)


def merge_sensitivities(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    save_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Combine the files of several workers (``groups=`` / ``shard=`` / ranks) into one record.

    Args:
        files: Sensitivity files of the same model, metric, criterion and baseline (a single
            path is one file).
        save_file: Where to write the merged file (atomically); ``None`` writes nothing. An
            existing file there must be a sensitivity file (see :func:`check_replaceable`).

    Returns:
        The merged record, as :func:`load_sensitivities` returns it.

    Raises:
        ValueError: No files, a file is invalid, the files disagree on the model / metric /
            criterion / baseline, two files give different losses for the same point, or
            ``save_file`` is another kind of file.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = list(files)
    if not paths:
        raise ValueError("merge_sensitivities needs at least one file")
    if save_file is not None:
        check_replaceable(save_file)
    merged = load_sensitivities(paths[0])
    for path in paths[1:]:
        rec = load_sensitivities(path)
        diff = _differences(merged, rec, ("before", "in this file"))
        if diff:
            raise ValueError(
                f"cannot merge {str(path)!r} with {str(paths[0])!r}: {'; '.join(diff)}"
            )
        _absorb(merged, rec, repr(str(path)))
    if save_file is not None:
        write_sensitivities(save_file, merged)
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
        "unprunable": {},
    }


def _same_analysis(old: dict[str, Any], fresh: dict[str, Any], path: Path) -> None:
    diff = _differences(old, fresh, ("in the file", "in this run"))
    if diff:
        raise ValueError(
            f"sensitivity file {str(path)!r} belongs to another analysis ({'; '.join(diff)}); "
            f"use another save_file or {RESTART_HINT}"
        )


def resume_record(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The record stored in ``path`` if it belongs to the same analysis, else a ``ValueError``."""
    try:
        old = load_sensitivities(path)
    except ValueError as e:
        raise ValueError(f"{e}; {RESTART_HINT}") from None
    _same_analysis(old, fresh, path)
    old["ratios"] = sorted(set(old["ratios"]) | set(fresh["ratios"]))
    return old


def save_shared(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` under :func:`locked`, first taking in what other workers
    wrote there meanwhile (``record`` grows by their points; the file keeps every point)."""
    with locked(path):
        check_replaceable(path)
        if path.exists():
            on_disk = load_sensitivities(path)
            _same_analysis(on_disk, record, path)
            _absorb(record, on_disk, None)
        write_sensitivities(path, record)


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


def check_criterion(
    record: Mapping[str, Any], criterion: Any, where: str = "the sensitivities"
) -> None:
    """A ``ValueError`` if ``record`` (a sensitivity record) was analysed with another criterion
    than ``criterion`` (a name or a callable, as ``prune_model`` takes it): its losses describe
    pruning other channels than this criterion would."""
    analysed = record.get("criterion")
    used = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    if isinstance(analysed, str) and analysed != used:
        raise ValueError(
            f"{where} were analysed with criterion {analysed!r} but are used with {used!r}: the "
            f"losses describe removing the channels {analysed!r} ranks lowest. Prune with "
            f"criterion={analysed!r}, or analyse again with {used!r}"
        )


def as_sensitivities(sensitivities: Any) -> Sensitivities:
    """``{group: {ratio: loss}}`` from a raw dict, a record (loaded or raw JSON) or a file path;
    every value checked (see the module docstring)."""
    if isinstance(sensitivities, (str, os.PathLike)):
        sensitivities = load_sensitivities(sensitivities)
    if not isinstance(sensitivities, dict):
        raise TypeError(
            "sensitivities must be {group: {ratio: loss}}, a loaded sensitivity record or a file "
            f"path; got {type(sensitivities).__name__}"
        )
    if sensitivities.get("format") == FORMAT:
        parsed: Sensitivities = _parse_record(sensitivities, "the sensitivity record")[
            "sensitivities"
        ]
        return parsed
    return _parse_losses(sensitivities)
