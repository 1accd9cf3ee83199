"""`quantize`: the one entry point of post-training INT8 quantization."""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit._io import atomic_write_json

from .config import QuantConfig
from .runtime import to_feed

__all__ = ["QuantResult", "quantize"]

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    """What `quantize` wrote and measured.

    Attributes:
        model_path: The QDQ INT8 model.
        fp32_path: The pre-processed FP32 model it was made from (same graph, for comparisons).
        report_path: JSON with the config, ranges, FP32 nodes and metrics (``<stem>.quant.json``).
        config: The settings used.
        ranges: ``{tensor: (lo, hi)}`` activation ranges given to onnxruntime.
        quantized_nodes: Nodes running on quantized inputs.
        fp32_nodes: Nodes kept in FP32 (``config.exclude`` plus the accuracy search's picks).
        searched_fp32_nodes: The accuracy search's picks only.
        metric_fp32: ``eval_fn`` on the FP32 model (None without ``eval_fn``).
        metric_int8: ``eval_fn`` on the final INT8 model (None without ``eval_fn``).
        within_budget: Whether the drop fits ``max_metric_drop`` (None when not checked).
        calibration_cached: Whether the histograms came from ``cache_dir`` (no model run).
        calibration_batches: Calibration batches run (0 when cached).
        range_methods: ``{tensor: how its range was chosen}`` (``"bound"``, ``"kl"``, ...).
        bias_corrected: Conv/Gemm layers whose bias the bias correction changed.
        opset: Opset of the FP32 model quantized (after any upgrade).
        per_channel: Whether weights got per-channel scales (False if the opset is too old).
        latency_ms: ``{"fp32": ms, "int8": ms}`` (ORT CPU, 1 thread, median) when measured.
    """

    model_path: Path
    fp32_path: Path
    report_path: Path
    config: QuantConfig
    ranges: dict[str, tuple[float, float]]
    quantized_nodes: list[str]
    fp32_nodes: list[str]
    searched_fp32_nodes: list[str] = field(default_factory=list)
    metric_fp32: float | None = None
    metric_int8: float | None = None
    within_budget: bool | None = None
    calibration_cached: bool = False
    calibration_batches: int = 0
    range_methods: dict[str, str] = field(default_factory=dict)
    bias_corrected: list[str] = field(default_factory=list)
    opset: int = 0
    per_channel: bool = True
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def int8_faster(self) -> bool | None:
        """Whether INT8 ran faster than FP32 (None when not measured)."""
        if not self.latency_ms:
            return None
        return self.latency_ms["int8"] < self.latency_ms["fp32"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings, config as its dict)."""
        data = dict(self.__dict__)
        data.update(
            model_path=str(self.model_path),
            fp32_path=str(self.fp32_path),
            report_path=str(self.report_path),
            config=self.config.to_dict(),
            ranges={k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
        )
        return data


class _Batches:
    """The first ``limit`` items of an iterable, read once, with the first ``keep`` remembered."""

    def __init__(self, iterable: Iterable[Any], limit: int, keep: int) -> None:
        if iterable is None or isinstance(iterable, (str, bytes)):
            raise TypeError(f"calib_batches must be an iterable of batches, got {iterable!r}")
        self._it = iter(iterable)
        self._limit, self._keep = limit, max(1, keep)
        self.seen: list[Any] = []
        self.consumed = 0
        if self._pull() is None:
            raise ValueError("calib_batches is empty: pass at least one calibration batch")

    def _pull(self) -> Any:
        if self.consumed >= self._limit:
            return None
        item = next(self._it, None)
        if item is not None:
            self.consumed += 1
            if len(self.seen) < self._keep:
                self.seen.append(item)
        return item

    @property
    def first(self) -> Any:
        return self.seen[0]

    def head(self, n: int) -> list[Any]:
        while len(self.seen) < min(n, self._keep) and self._pull() is not None:
            pass
        return self.seen[:n]

    def __iter__(self) -> Iterator[Any]:
        yield from list(self.seen)
        while (item := self._pull()) is not None:
            yield item


def _sibling(save_path: Path, suffix: str) -> Path:
    return save_path.with_name(save_path.stem + suffix)


def _prepare_fp32(source: Any, first_batch: Any, fp32_path: Path, config: QuantConfig) -> Path:
    """Export (nn.Module) or copy (ONNX path), then pre-process into ``fp32_path``."""
    from .export import export_onnx
    from .qdq import preprocess

    with tempfile.TemporaryDirectory(prefix="slimkit_quant_") as tmp:
        raw = Path(tmp) / "raw.onnx"
        if isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise FileNotFoundError(f"ONNX model not found: {source}")
            shutil.copyfile(source, raw)
        elif hasattr(source, "forward") and hasattr(source, "parameters"):
            example = to_feed(first_batch, ["input"])["input"]
            size = config.export_batch_size or example.shape[0]
            if example.shape[0] < size:
                raise ValueError(
                    f"the first calibration batch has {example.shape[0]} samples, fewer than "
                    f"export_batch_size={size}"
                )
            export_onnx(source, example[:size], raw, opset=config.opset)
        else:
            raise TypeError(
                f"model_or_onnx_path must be an nn.Module or an .onnx path, got {type(source)}"
            )
        preprocess(raw, fp32_path)
    return fp32_path


def _graph_inputs(model: Any) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _data_fingerprint(feed: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(feed):
        array = np.ascontiguousarray(feed[name])
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _ranges(
    fp32_path: Path,
    model: Any,
    batches: _Batches,
    input_names: list[str],
    op_types: list[str],
    config: QuantConfig,
    cache_dir: str | Path | None,
) -> tuple[dict[str, tuple[float, float]], dict[str, str], bool]:
    """``(ranges, how each was chosen, from cache)`` with ``config.algo``.

    slimkit's algos: histograms (from cache or a calibration run) turned into ranges;
    ``"ort_*"``: onnxruntime's own calibrators.
    """
    from . import observers as obs

    if config.algo.startswith("ort_"):
        ranges = _ort_ranges(fp32_path, batches, input_names, op_types, config.algo)
        return ranges, {}, False
    tensors = obs.calibration_tensors(model, op_types)
    settings = {
        "num_bins": config.num_bins,
        "batch_num": config.batch_num,
        "op_types": sorted(op_types),
        "data": _data_fingerprint(to_feed(batches.first, input_names)),
    }
    key = obs.fingerprint(fp32_path, settings)
    observers = obs.load_histograms(cache_dir, key, tensors) if cache_dir else None
    cached = observers is not None
    if observers is None:
        feeds = (to_feed(b, input_names) for b in batches)
        observers = obs.collect_histograms(model, feeds, tensors, config.num_bins)
        if cache_dir:
            meta = {"model": str(fp32_path), "settings": settings, "batches": batches.consumed}
            obs.save_histograms(cache_dir, key, observers, meta)
    ranges, how = observed_ranges(model, observers, config)
    return ranges, how, cached


def observed_ranges(
    model: Any, observers: dict[str, Any], config: QuantConfig
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """Ranges of the observed tensors by ``config.algo``, and how each was chosen.

    ``"KL"`` is the guarded choice (`slimkit.quant.guarded.choose_range`): known bounds of
    bounded activations, else the best of guarded KL / min-max / percentile per side by expected
    error, asymmetric. ``"KL_plain"`` is the plain TensorRT search on |x|, symmetric for signed
    tensors (the behaviour before the guards). Model outputs use min-max unless ``clip_outputs``.
    """
    from .guarded import choose_range
    from .observers import bounded_tensors
    from .ranges import activation_range

    outputs = set() if config.clip_outputs else {o.name for o in model.graph.output}
    bounds = bounded_tensors(model) if config.algo == "KL" else {}
    ranges: dict[str, tuple[float, float]] = {}
    how: dict[str, str] = {}
    for name, o in observers.items():
        algo = "minmax" if name in outputs else config.algo
        if algo == "KL" and o.amax > 0.0:
            choice = choose_range(
                o.pos_hist,
                o.neg_hist,
                o.bin_edges,
                o.min,
                o.max,
                o.zeros,
                bounds.get(name),
                config.num_levels,
                config.percentile,
            )
            ranges[name], how[name] = (choice.lo, choice.hi), choice.method
            continue
        plain = "KL" if algo == "KL_plain" else algo
        lo, hi = activation_range(
            o.hist, o.bin_edges, o.amax, o.signed, plain, config.num_levels, config.percentile
        )
        if lo < 0.0 and algo != "KL_plain" and not config.symmetric_activations:
            lo, hi = max(lo, o.min), min(hi, max(o.max, 0.0))  # each side its own bound
        ranges[name], how[name] = (lo, hi), algo
    return ranges, how


def _check_quantizable(model: Any, op_types: list[str], excluded: list[str]) -> None:
    wanted = set(op_types)
    if not any(n.op_type in wanted and n.name not in excluded for n in model.graph.node):
        ops = sorted({n.op_type for n in model.graph.node})
        raise ValueError(
            f"nothing to quantize: the model's ops {ops} include none of {sorted(wanted)} "
            "outside the excluded nodes"
        )


def quantize(
    model_or_onnx_path: Any,
    calib_batches: Iterable[Any],
    save_path: str | Path,
    config: QuantConfig | dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    eval_fn: Callable[[str], float] | None = None,
    *,
    fp32_path: str | Path | None = None,
) -> QuantResult:
    """Post-training INT8 quantization to a QDQ ONNX model that onnxruntime runs in int8.

    Pipeline: export (``nn.Module``) -> onnxruntime pre-processing -> streaming |x| histograms of
    every activation onnxruntime will quantize -> ranges by ``config.algo`` -> QDQ model written
    by onnxruntime.quantization with those ranges -> optional accuracy-aware FP32 fallback.

    Args:
        model_or_onnx_path: An ``nn.Module`` (exported with a static shape taken from the first
            batch and ``config.export_batch_size``) or the path of an FP32 ``.onnx`` model.
        calib_batches: Iterable of input batches: arrays/tensors, ``(inputs, targets)`` tuples,
            or ``{input_name: array}`` dicts. The first ``config.batch_num`` are used, read once.
        save_path: The INT8 ``.onnx`` file to write (atomically). ``<stem>.fp32.onnx`` (the
            pre-processed FP32 model, see ``fp32_path``) and ``<stem>.quant.json`` (report) are
            written next to it.
        config: A `QuantConfig` or its dict (default: KL, 10 batches, per-channel weights).
        cache_dir: Folder for calibration histograms; a re-run on the same model, data and
            settings (e.g. with another ``algo``) skips the calibration run.
        eval_fn: ``eval_fn(onnx_path) -> metric`` (higher is better); needed by
            ``config.max_metric_drop``, otherwise only used to report both metrics.
        fp32_path: Where to write the pre-processed FP32 model (default ``<stem>.fp32.onnx``
            next to ``save_path``); may be the input ``.onnx`` itself, which is then replaced by
            its pre-processed (equivalent) version.

    Returns:
        A `QuantResult`.

    Raises:
        ValueError: Empty ``calib_batches``, bad config values, unknown excluded nodes, nothing
            quantizable, or ``max_metric_drop`` without ``eval_fn``.
    """
    import onnx

    from .qdq import quantizable_op_types, resolve_nodes

    config = _as_config(config)
    if config.max_metric_drop is not None and eval_fn is None:
        raise ValueError("config.max_metric_drop needs eval_fn(onnx_path) -> metric")
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    keep = max(config.ranking_batches, config.correction_batches if config.bias_correction else 0)
    batches = _Batches(calib_batches, config.batch_num, keep)
    fp32_path = Path(fp32_path) if fp32_path else _sibling(save_path, ".fp32.onnx")
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = _prepare_fp32(model_or_onnx_path, batches.first, fp32_path, config)
    model = onnx.load(str(fp32_path))
    op_types = list(config.op_types) or quantizable_op_types()
    excluded = resolve_nodes(model, config.exclude)
    _check_quantizable(model, op_types, excluded)
    input_names = _graph_inputs(model)
    ranges, how, cached = _ranges(
        fp32_path, model, batches, input_names, op_types, config, cache_dir
    )
    opset = _default_opset(model)
    with tempfile.TemporaryDirectory(prefix="slimkit_quant_", dir=save_path.parent) as tmp:
        source = Path(tmp) / "source.onnx"
        shutil.copyfile(fp32_path, source)
        write = functools.partial(_write, source, ranges, config, op_types, opset >= 13)
        quantized = write(excluded, save_path)
        corrected = []
        if config.bias_correction:
            feeds = [to_feed(b, input_names) for b in batches.head(config.correction_batches)]
            corrected = _correct_biases(write, excluded, save_path, source, feeds)
        result = QuantResult(
            model_path=save_path,
            fp32_path=fp32_path,
            report_path=_sibling(save_path, ".quant.json"),
            config=config,
            ranges=ranges,
            quantized_nodes=quantized,
            fp32_nodes=list(excluded),
            calibration_cached=cached,
            calibration_batches=0 if cached else batches.consumed,
            range_methods=how,
            bias_corrected=corrected,
            opset=opset,
            per_channel=config.per_channel and opset >= 13,
        )
        if eval_fn is not None:
            _evaluate(result, eval_fn, write, batches, input_names, excluded)
    if config.latency_check:
        _check_latency(result, batches.first, input_names)
    atomic_write_json(result.report_path, result.to_dict())
    return result


def _check_latency(result: QuantResult, batch: Any, input_names: list[str]) -> None:
    """Fill ``result.latency_ms``; warn when INT8 is not faster than FP32."""
    result.latency_ms = _latencies(result.fp32_path, result.model_path, batch, input_names)
    if not result.int8_faster:
        log.warning(
            "INT8 is not faster than FP32 on this CPU (%.3g ms vs %.3g ms, 1 thread)",
            result.latency_ms["int8"],
            result.latency_ms["fp32"],
        )


def _default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _correct_biases(
    write: Callable[[Any, Path], list[str]],
    excluded: list[str],
    save_path: Path,
    source: Path,
    feeds: list[dict[str, np.ndarray]],
) -> list[str]:
    """Bias correction: measure on ``feeds``, correct ``source`` in place, rewrite the INT8 model."""
    from .correction import apply_bias_corrections, bias_corrections

    corrections = bias_corrections(save_path, source, feeds)
    changed = [name for name, delta in corrections.items() if np.any(delta)]
    if changed:
        apply_bias_corrections(source, corrections, source)
        write(excluded, save_path)
    return changed


def _ort_ranges(
    fp32_path: Path, batches: _Batches, input_names: list[str], op_types: list[str], algo: str
) -> dict[str, tuple[float, float]]:
    """Ranges from onnxruntime's own calibrators (``algo="ort_entropy[2048]"`` / ``"ort_minmax"``)."""
    from .qdq import ort_calibrate

    feeds = (to_feed(b, input_names) for b in batches)
    if algo == "ort_entropy2048":
        return ort_calibrate(fp32_path, feeds, op_types, "entropy", num_bins=2048)
    return ort_calibrate(fp32_path, feeds, op_types, algo.removeprefix("ort_"))


def _latencies(
    fp32_path: Path, int8_path: Path, batch: Any, input_names: list[str]
) -> dict[str, float]:
    """ORT CPU latency (ms, 1 thread) of both models: the fastest of five interleaved rounds'
    medians, after three warm-up runs each.

    Each round runs a model at most five times and stops after 0.2 s of it, so a large model
    costs about three seconds in all. The best round, not the pooled median, is compared: other
    work on the machine only ever adds time, and a busy spell that hits one model's runs (this
    check once found the pruned detector's INT8 graph "slower", 1.09 vs 0.93 ms, that a
    benchmark a minute later timed at 0.66 vs 0.77 ms) must not decide what is shipped.
    """
    import time

    from .runtime import make_session, split_feed

    sessions = {"fp32": make_session(fp32_path, threads=1), "int8": make_session(int8_path, 1)}
    dims = {i.name: (i.shape[0] if i.shape else None) for i in sessions["fp32"].get_inputs()}
    feed = next(split_feed(to_feed(batch, input_names), dims))
    for session in sessions.values():
        for _ in range(3):  # first runs allocate and pre-pack
            session.run(None, feed)
    best = dict.fromkeys(sessions, float("inf"))
    for round_ in range(5):
        keys = list(sessions) if round_ % 2 == 0 else list(reversed(sessions))
        for key in keys:
            times, spent = [], 0.0
            for _ in range(5):
                start = time.perf_counter()
                sessions[key].run(None, feed)
                took = time.perf_counter() - start
                times.append(1e3 * took)
                spent += took
                if spent > 0.2:
                    break
            best[key] = min(best[key], float(np.median(times)))
    return best


def _write(
    fp32_path: Path,
    ranges: dict[str, tuple[float, float]],
    config: QuantConfig,
    op_types: list[str],
    per_channel_ok: bool,
    nodes_to_exclude: Any,
    path: Path,
) -> list[str]:
    """Write the QDQ model with ``config``'s settings; return the quantized node names."""
    from .qdq import write_qdq_model

    return write_qdq_model(
        fp32_path,
        path,
        ranges,
        nodes_to_exclude=list(nodes_to_exclude),
        per_channel=config.per_channel and per_channel_ok,
        activation_type=config.activation_type,
        reduce_range=config.reduce_range,
        op_types=op_types,
        extra_options=config.extra,
        align_channels=config.align_channels,
    )


def _as_config(config: QuantConfig | dict[str, Any] | None) -> QuantConfig:
    if config is None:
        return QuantConfig()
    if isinstance(config, dict):
        return QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig or a dict, got {type(config).__name__}")
    return config


def _evaluate(
    result: QuantResult,
    eval_fn: Callable[[str], float],
    write: Callable[[Any, Path], list[str]],
    batches: _Batches,
    input_names: list[str],
    excluded: list[str],
) -> None:
    """Fill the metrics and, with ``max_metric_drop``, run the accuracy-aware search."""
    from .accuracy import search_fp32_nodes

    config = result.config
    result.metric_fp32 = float(eval_fn(str(result.fp32_path)))
    result.metric_int8 = float(eval_fn(str(result.model_path)))
    if config.max_metric_drop is None:
        return
    feeds = [to_feed(b, input_names) for b in batches.head(config.ranking_batches)]
    search = search_fp32_nodes(
        write,
        result.fp32_path,
        result.model_path,
        eval_fn,
        baseline=result.metric_fp32,
        metric=result.metric_int8,
        candidates=[n for n in result.quantized_nodes if n not in excluded],
        base_exclude=excluded,
        feeds=feeds,
        max_drop=float(config.max_metric_drop),
        drop_type=config.drop_type,
        max_nodes=config.max_fp32_nodes,
    )
    result.metric_int8 = search.metric
    result.within_budget = search.within_budget
    result.searched_fp32_nodes = list(search.fp32_nodes)
    result.fp32_nodes = [*excluded, *search.fp32_nodes]
    if search.fp32_nodes:
        import onnx

        from .qdq import quantized_nodes

        model = onnx.load(str(result.model_path))
        ops = config.op_types or None
        result.quantized_nodes = quantized_nodes(model, ops, result.fp32_nodes)
    if not search.within_budget:
        log.warning(
            "accuracy budget not met: FP32 %.5g, INT8 %.5g with %d FP32 nodes",
            result.metric_fp32,
            search.metric,
            len(result.fp32_nodes),
        )
