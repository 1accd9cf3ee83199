"""Write QDQ INT8 models through onnxruntime.quantization, with slimkit's activation ranges.

slimkit computes the ranges; onnxruntime does the graph work. The ranges become an onnxruntime
``TensorsData`` (``TensorData(lowest, highest)`` per tensor) and are handed to ``quantize_static``
as its calibration cache (``calibration_cache_path``, onnxruntime >= 1.26: calibration is then
skipped), or, on older onnxruntime, straight to the ``QDQQuantizer`` that ``quantize_static``
builds. Weights are quantized by onnxruntime: int8, symmetric, per output channel.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit._utils import make_ort_session

from .runtime import make_session, split_feed

if TYPE_CHECKING:
    import onnx

__all__ = [
    "INT8_KERNEL_OPS",
    "MIN_PER_CHANNEL_OPSET",
    "upgrade_opset",
    "int8_kernel_ops",
    "ort_calibrate",
    "preprocess",
    "quantizable_op_types",
    "quantized_nodes",
    "resolve_nodes",
    "write_qdq_model",
]

log = logging.getLogger(__name__)

# Ops of an onnxruntime-optimised graph that compute in int8 on the CPU provider.
INT8_KERNEL_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearConvTranspose",
    }
)
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def quantizable_op_types() -> list[str]:
    """Op types onnxruntime's ``quantize_static`` quantizes by default (its registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


# Per-channel DequantizeLinear (its ``axis`` attribute) exists from opset 13 on.
MIN_PER_CHANNEL_OPSET = 13


def upgrade_opset(src: str | Path, dst: str | Path) -> int:
    """Copy ``src`` to ``dst``, converted to opset 13 when it is older (onnx.version_converter).

    Per-channel weight scales need ``DequantizeLinear(axis=...)``, i.e. opset >= 13. When the
    conversion fails the model is copied unchanged (it is then quantized per tensor).

    Returns:
        The default-domain opset of the model written.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if 0 < opset < MIN_PER_CHANNEL_OPSET:
        try:
            converted = version_converter.convert_version(model, MIN_PER_CHANNEL_OPSET)
            onnx.checker.check_model(converted)
            model, opset = converted, MIN_PER_CHANNEL_OPSET
        except Exception as error:  # the converter raises many types
            log.warning(
                "could not convert opset %d to %d (%s): weights are quantized per tensor",
                opset,
                MIN_PER_CHANNEL_OPSET,
                error,
            )
    onnx.save(model, str(dst))
    return opset


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """Opset upgrade (`upgrade_opset`), then onnxruntime's ``quant_pre_process``.

    ``quant_pre_process`` does basic graph optimisation and ONNX shape inference. Symbolic shape
    inference is skipped (slimkit exports static shapes; it is slow to import). If the
    optimisation fails, the model is only shape-inferred.

    Returns:
        ``dst``.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="slimkit_pre_") as tmp:
        upgraded = Path(tmp) / "upgraded.onnx"
        upgrade_opset(src, upgraded)
        try:
            quant_pre_process(str(upgraded), str(dst), skip_symbolic_shape=True)
        except Exception as error:  # onnxruntime raises many types here
            log.warning("quant_pre_process failed (%s); using ONNX shape inference only", error)
            onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(upgraded))), str(dst))
    return dst


def resolve_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> list[str]:
    """Node names matching exact names or fnmatch patterns (``"/head/*"``), in graph order.

    Raises:
        ValueError: If a pattern matches no node (with close names as a hint).
    """
    names = [node.name for node in model.graph.node]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
            raise ValueError(
                f"exclude entry {pattern!r} matches no ONNX node; close names: {close or names[:5]}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def quantized_nodes(
    model: onnx.ModelProto, op_types: Iterable[str] | None = None, excluded: Iterable[str] = ()
) -> list[str]:
    """Names of the nodes of a QDQ model whose every non-constant input is dequantized.

    Args:
        model: A QDQ model.
        op_types: Only nodes of these op types (default: `quantizable_op_types`); a float op
            such as ReduceMean that merely reads a dequantized tensor is not quantized.
        excluded: Nodes excluded from quantization (they may still read a tensor that a
            neighbour quantized).
    """
    wanted = set(op_types) if op_types is not None else set(quantizable_op_types())
    skip = set(excluded)
    constants = {i.name for i in model.graph.initializer}
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type not in wanted or node.op_type in _QDQ_OPS or node.name in skip:
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in dq_outputs for i in inputs):
            names.append(node.name)
    return names


def _tensors_data(ranges: dict[str, tuple[float, float]]) -> Any:
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for name, (lo, hi) in ranges.items()
    }
    return TensorsData(CalibrationMethod.MinMax, data)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


def write_qdq_model(
    fp32_path: str | Path,
    out_path: str | Path,
    ranges: dict[str, tuple[float, float]],
    nodes_to_exclude: Sequence[str] = (),
    per_channel: bool = True,
    activation_type: str = "uint8",
    reduce_range: bool = False,
    op_types: Sequence[str] = (),
    extra_options: dict[str, Any] | None = None,
    use_cache_api: bool | None = None,
    align_channels: bool = True,
) -> list[str]:
    """Quantize ``fp32_path`` to a QDQ model at ``out_path`` with precomputed activation ranges.

    Args:
        fp32_path: The (pre-processed) FP32 model.
        out_path: Where to write the QDQ model.
        ranges: ``{tensor: (lo, hi)}`` for every tensor of `observers.calibration_tensors`.
        nodes_to_exclude: Node names kept in FP32.
        per_channel: Per-output-channel weight scales.
        activation_type: ``"uint8"`` or ``"int8"``.
        reduce_range: 7-bit weights.
        op_types: Op types to quantize (empty: all of `quantizable_op_types`).
        extra_options: Extra onnxruntime quantizer options.
        use_cache_api: Inject ranges through ``calibration_cache_path`` (True) or the
            ``QDQQuantizer`` (False); None picks the former when onnxruntime has it.
        align_channels: Pad convs' input channels to a multiple of 4 where that moves them to
            onnxruntime's fast int8 kernels (`align.align_conv_channels`; same outputs).

    Returns:
        The names of the nodes that were quantized.

    Raises:
        ValueError: If no node could be quantized.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs = dict(
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types) or quantizable_op_types(),
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=_quant_type(activation_type),
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(nodes_to_exclude),
        extra_options=dict(extra_options or {}),
    )
    if use_cache_api is None:
        use_cache_api = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    out_path = Path(out_path)
    # staged next to out_path, then renamed: a failed write never leaves a broken model behind
    with tempfile.TemporaryDirectory(prefix=".slimkit_qdq_", dir=out_path.parent) as tmp:
        staged = Path(tmp) / out_path.name
        if use_cache_api:
            from onnxruntime.quantization.calibrate import save_tensors_data

            cache = Path(tmp) / "ranges.json"
            save_tensors_data(_tensors_data(ranges), cache)
            quantize_static(
                str(fp32_path),
                str(staged),
                None,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
                **kwargs,
            )
        else:
            _quantize_with_qdq_quantizer(fp32_path, staged, _tensors_data(ranges), **kwargs)
        if nodes_to_exclude:
            _keep_excluded_float(staged, nodes_to_exclude)
        names = _check_quantized(
            staged, fp32_path, kwargs["op_types_to_quantize"], kwargs["nodes_to_exclude"]
        )
        if align_channels:
            _align(staged)
        _check_loads(staged, fp32_path)
        os.replace(staged, out_path)
    return names


def _quantize_with_qdq_quantizer(
    fp32_path: str | Path, out_path: str | Path, tensors_range: Any, **kwargs: Any
) -> None:
    """What ``quantize_static`` does after calibration, for onnxruntime without a cache API."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    quantizer = QDQQuantizer(
        load_model_with_shape_infer(Path(fp32_path)),
        kwargs["per_channel"],
        kwargs["reduce_range"],
        kwargs["weight_type"],
        kwargs["activation_type"],
        tensors_range,
        [],
        kwargs["nodes_to_exclude"],
        kwargs["op_types_to_quantize"],
        kwargs["extra_options"],
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(out_path), False)


def _keep_excluded_float(path: str | Path, nodes: Sequence[str]) -> None:
    """Stop onnxruntime from re-fusing excluded nodes into int8 kernels (see `islands`)."""
    import onnx

    from .islands import float_output_edges

    model = onnx.load(str(path))
    if float_output_edges(model, nodes):
        onnx.save(model, str(path))


def _align(path: Path) -> None:
    import onnx

    from .align import align_conv_channels

    model = onnx.load(str(path))
    changed = align_conv_channels(model)
    if changed:
        log.info("input channels padded to a multiple of 4 (fast int8 kernels): %s", changed)
        onnx.save(model, str(path))


def _check_quantized(
    out_path: str | Path, fp32_path: str | Path, op_types: Sequence[str], excluded: Sequence[str]
) -> list[str]:
    import onnx

    names = quantized_nodes(onnx.load(str(out_path), load_external_data=False), op_types, excluded)
    if not names:
        ops = sorted({n.op_type for n in onnx.load(str(fp32_path)).graph.node})
        raise ValueError(
            f"nothing could be quantized in {fp32_path}: its ops are {ops}; onnxruntime quantizes "
            f"{quantizable_op_types()} (minus excluded nodes)"
        )
    return names


def _check_loads(path: Path, fp32_path: str | Path) -> None:
    """Fail with a clear error (and no file written) when onnxruntime cannot load the INT8 model."""
    try:
        make_session(path, threads=1)
    except Exception as error:  # onnxruntime raises its own exception types
        raise RuntimeError(
            f"the INT8 model written from {fp32_path} does not load in onnxruntime ({error}); "
            "nothing was saved. Exclude the node named in the message (QuantConfig.exclude) or "
            "quantize fewer op types (QuantConfig.op_types)"
        ) from error


def ort_calibrate(
    fp32_path: str | Path,
    feeds: Iterable[dict[str, np.ndarray]],
    op_types: Sequence[str] = (),
    method: str = "entropy",
    num_bins: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Ranges from onnxruntime's own calibrator (for comparison with slimkit's searches).

    Args:
        fp32_path: The (pre-processed) FP32 model.
        feeds: ORT feed dicts.
        op_types: Op types to calibrate (empty: all of `quantizable_op_types`).
        method: ``"entropy"``, ``"minmax"`` or ``"percentile"`` (onnxruntime's defaults).
        num_bins: Histogram bins of ``"entropy"`` (None: onnxruntime's default, 128, which equals
            its 128 quantized bins and so leaves one candidate: the min-max range). The search
            keeps onnxruntime's 128 quantized bins.

    Returns:
        ``{tensor: (lo, hi)}``.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    methods = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    session = make_session(fp32_path, optimize="none")
    batch_dims = {i.name: (i.shape[0] if i.shape else None) for i in session.get_inputs()}
    chunks = (chunk for feed in feeds for chunk in split_feed(feed, batch_dims))

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(chunks, None)

    with tempfile.TemporaryDirectory(prefix="slimkit_ortcal_") as tmp:
        calibrator = create_calibrator(
            Path(fp32_path),
            list(op_types) or quantizable_op_types(),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods[method],
            extra_options={"num_bins": num_bins} if num_bins else {},
        )
        calibrator.collect_data(_Reader())
        data = calibrator.compute_data()
    return {
        name: (float(np.min(td.range_value[0])), float(np.max(td.range_value[1])))
        for name, td in data.items()
    }


def int8_kernel_ops(path: str | Path, optimize: str = "extended") -> Counter[str]:
    """Op types of the graph onnxruntime actually runs (after its QDQ fusions) on the CPU.

    Count `INT8_KERNEL_OPS` in the result to see which convs/matmuls/adds run in int8.

    Args:
        path: A (QDQ) ONNX model.
        optimize: Optimisation level to inspect (``"extended"`` holds the QDQ fusions and can be
            saved; ``"all"`` adds layout transforms).

    Returns:
        ``Counter`` of op types in the optimised graph.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="slimkit_opt_") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        make_ort_session(path, optimize=optimize, optimized_model_path=optimized)
        return Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
