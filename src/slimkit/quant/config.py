"""`QuantConfig`: every setting of a post-training INT8 quantization run, validated and serialisable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALGOS", "QuantConfig"]

ALGOS = (
    "KL",
    "KL_plain",
    "minmax",
    "percentile",
    "ort_entropy",
    "ort_entropy2048",
    "ort_minmax",
)
_ALGO_BY_KEY = {name.lower(): name for name in ALGOS}
_ACTIVATION_TYPES = ("uint8", "int8")
_DROP_TYPES = ("absolute", "relative")


@dataclass
class QuantConfig:
    """Settings of `slimkit.quant.quantize`.

    Attributes:
        algo: Activation range search: ``"KL"`` (the guarded choice of
            `slimkit.quant.guarded.choose_range`: known bounds of bounded activations, else the
            best of guarded TensorRT-entropy / min-max / percentile by expected error, per side),
            ``"KL_plain"`` (the plain TensorRT search, symmetric), ``"minmax"``, ``"percentile"``,
            or onnxruntime's own calibrators ``"ort_entropy"`` / ``"ort_minmax"`` (comparison;
            ``"ort_entropy"`` at onnxruntime's defaults, 128 histogram bins for 128 quantized
            bins, leaves a single candidate threshold and so gives min-max ranges;
            ``"ort_entropy2048"`` is its entropy search over 2048 bins, TensorRT's setting).
        batch_num: Number of calibration batches used (the first ones of the iterable).
        num_bins: Bins of each streaming |x| histogram; a power of two (exact re-binning).
        num_levels: Quantization levels of the non-negative half for KL (128 for int8).
        percentile: Share of |x| kept inside the range for ``"percentile"``.
        clip_outputs: Apply the range search to the model's outputs too. By default they keep
            their full min-max range: clipping an output (logits, YOLO box maps) changes it directly.
        symmetric_activations: Signed tensors get ``[-T, T]`` (zero point 128 in uint8) with
            ``"minmax"``/``"percentile"`` instead of their own ``[lo, hi]``.
        bias_correction: Correct the output-mean shift of every quantized Conv/Gemm
            (`slimkit.quant.correction`), measured on up to ``correction_batches`` batches.
        correction_batches: Calibration batches kept in memory for the bias correction.
        latency_check: Time the FP32 and INT8 models (ORT CPU, 1 thread) and warn when INT8 is
            not faster (`QuantResult.latency_ms`); `slim.export_quant_model` then ships FP32.
        per_channel: Symmetric per-output-channel weight scales (else per-tensor). Models below
            opset 13 are upgraded to 13 first; if that fails, weights are per-tensor.
        activation_type: ``"uint8"`` (zero-point 0 on non-negative tensors, 128 on signed
            ones; fastest on x86 CPUs) or ``"int8"``. Weights are always int8, symmetric.
        reduce_range: 7-bit weights, for x86 CPUs without VNNI that can saturate in u8s8 dot products.
        align_channels: Pad the input channels of convs such as an RGB stem (3 channels) to a
            multiple of 4 in the INT8 graph (`slimkit.quant.align_conv_channels`), so that
            onnxruntime runs them on its symmetric int8 kernels instead of its generic path;
            exact (same outputs).
        exclude: ONNX node names (or fnmatch patterns such as ``"/head/*"``) kept in FP32.
        op_types: ONNX op types to quantize; empty means every type onnxruntime supports.
        max_metric_drop: Accuracy budget: keep the most harmful nodes in FP32 until
            ``eval_fn(fp32) - eval_fn(int8)`` is at most this. ``None`` disables the search.
        drop_type: ``"absolute"`` (metric units) or ``"relative"`` (fraction of the FP32 metric).
        max_fp32_nodes: At most this many nodes are put back to FP32 by the search (None: no cap).
        ranking_batches: Calibration batches kept in memory to rank nodes by output error.
        opset: ONNX opset when exporting an ``nn.Module``.
        export_batch_size: Static batch size of the exported model (None: the calibration batch size).
    """

    algo: str = "KL"
    batch_num: int = 10
    num_bins: int = 2048
    num_levels: int = 128
    percentile: float = 99.99
    clip_outputs: bool = False
    symmetric_activations: bool = False
    bias_correction: bool = True
    correction_batches: int = 10
    latency_check: bool = True
    per_channel: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = False
    align_channels: bool = True
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    max_metric_drop: float | None = None
    drop_type: str = "absolute"
    max_fp32_nodes: int | None = None
    ranking_batches: int = 2
    opset: int = 17
    export_batch_size: int | None = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        algo = _ALGO_BY_KEY.get(str(self.algo).lower())
        if algo is None:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {ALGOS}")
        self.algo = algo
        _check_positive_int("batch_num", self.batch_num)
        _check_positive_int("num_levels", self.num_levels)
        _check_positive_int("ranking_batches", self.ranking_batches)
        _check_positive_int("correction_batches", self.correction_batches)
        _check_positive_int("opset", self.opset)
        nb = self.num_bins
        if not isinstance(nb, int) or nb < self.num_levels or nb & (nb - 1):
            raise ValueError(
                f"num_bins must be a power of two >= num_levels ({self.num_levels}), got {nb!r}"
            )
        if not 0.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        _check_choice("activation_type", self.activation_type, _ACTIVATION_TYPES)
        _check_choice("drop_type", self.drop_type, _DROP_TYPES)
        self.exclude = _as_str_tuple("exclude", self.exclude)
        self.op_types = _as_str_tuple("op_types", self.op_types)
        if self.max_metric_drop is not None and float(self.max_metric_drop) < 0:
            raise ValueError(f"max_metric_drop must be >= 0 or None, got {self.max_metric_drop}")
        if self.max_fp32_nodes is not None:
            _check_positive_int("max_fp32_nodes", self.max_fp32_nodes, allow_zero=True)
        if self.export_batch_size is not None:
            _check_positive_int("export_batch_size", self.export_batch_size)
        if not isinstance(self.extra, dict):
            raise TypeError(
                f"extra must be a dict of onnxruntime extra_options, got {self.extra!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (tuples become lists); `from_dict` restores an equal config."""
        data = dataclasses.asdict(self)
        data["exclude"] = list(self.exclude)
        data["op_types"] = list(self.op_types)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Build a config from `to_dict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _as_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    items = tuple(value)
    if not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{name} must be a sequence of non-empty strings, got {value!r}")
    return items
