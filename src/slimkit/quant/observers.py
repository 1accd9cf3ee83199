"""Streaming calibration: per-tensor |x| histograms collected batch by batch in onnxruntime.

`HistogramObserver` keeps ``num_bins`` counts over ``[0, upper)`` where ``upper`` is a power of
two strictly above every |x| seen. When a batch exceeds it, ``upper`` is doubled (as often as
needed) and neighbouring bins are merged, so memory stays ``num_bins`` integers per tensor whatever
the number of batches. Bin indices are ``floor(|x| * num_bins / upper)`` with a power-of-two
factor, computed exactly in floating point: the streamed histogram equals the one-shot histogram
of all data over the final range, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit._io import atomic_file, atomic_write_text

from .runtime import make_session, split_feed

if TYPE_CHECKING:
    import onnx

__all__ = [
    "HistogramObserver",
    "calibration_tensors",
    "collect_histograms",
    "load_histograms",
    "save_histograms",
]

CACHE_VERSION = 2
# Values binned per step: bounds the temporaries of `HistogramObserver.update` (|x|, bin indices)
# to a few MB whatever the tensor size (a 736x736 text detector has 50 MB feature maps).
_CHUNK = 1 << 20


def _next_pow2_above(value: float) -> float:
    """Smallest power of two strictly greater than ``value`` (> 0)."""
    _, exponent = math.frexp(value)
    return math.ldexp(1.0, exponent)


class HistogramObserver:
    """Streaming histogram of |x| plus min, max and element count of one tensor.

    ``neg_hist`` counts the negative values alone (same bins), so the positive and the negative
    side can get their own threshold (asymmetric ranges); ``zeros`` counts exact zeros (the ReLU
    spike, which any range with a zero point represents exactly).

    Args:
        num_bins: Number of bins; a power of two.
    """

    def __init__(self, num_bins: int = 2048) -> None:
        if num_bins < 2 or num_bins & (num_bins - 1):
            raise ValueError(f"num_bins must be a power of two >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.hist = np.zeros(num_bins, dtype=np.int64)
        self.neg_hist = np.zeros(num_bins, dtype=np.int64)
        self.zeros = 0
        self.upper = 0.0  # 0 until a non-zero value is seen; zeros always fall in bin 0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @property
    def bin_edges(self) -> np.ndarray:
        """``num_bins + 1`` edges over ``[0, upper]``."""
        return np.linspace(0.0, self.upper or 1.0, self.num_bins + 1)

    @property
    def amax(self) -> float:
        """Largest |x| seen (0 before any data)."""
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def signed(self) -> bool:
        """Whether any value seen was negative."""
        return self.count > 0 and self.min < 0.0

    def update(self, x: np.ndarray) -> None:
        """Add a batch of values (non-finite values are ignored)."""
        values = np.asarray(x).ravel()
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float32)
        if values.size and not np.isfinite(values.max() + values.min()):
            values = values[np.isfinite(values)]
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += int(values.size)
        batch_amax = max(abs(low), abs(high))
        if batch_amax >= self.upper and batch_amax > 0.0:
            self._grow(_next_pow2_above(batch_amax))
        if self.upper == 0.0:
            self.hist[0] += values.size
            self.zeros += int(values.size)
            return
        for start in range(0, values.size, _CHUNK):
            self._add(values[start : start + _CHUNK])

    def _add(self, values: np.ndarray) -> None:
        """Bin one chunk of finite values into `hist`, `neg_hist` and `zeros`."""
        scale = self.num_bins / self.upper  # a power of two: |x| * scale is exact
        if not 2.0**-60 < scale < 2.0**60:
            values = values.astype(np.float64)
        magnitude = np.abs(values)
        magnitude *= values.dtype.type(scale)
        index = magnitude.astype(np.int64)
        del magnitude
        np.minimum(index, self.num_bins - 1, out=index)
        self.hist += np.bincount(index, minlength=self.num_bins)
        negative = values < 0
        if negative.any():
            self.neg_hist += np.bincount(index[negative], minlength=self.num_bins)
        self.zeros += int(values.size - np.count_nonzero(values))

    def _grow(self, new_upper: float) -> None:
        """Re-bin to ``[0, new_upper)``, ``new_upper / upper`` being a power of two."""
        if self.upper > 0.0:
            factor = min(int(round(new_upper / self.upper)), self.num_bins)
            for name in ("hist", "neg_hist"):
                merged = getattr(self, name).reshape(-1, factor).sum(axis=1)
                grown = np.zeros(self.num_bins, dtype=np.int64)
                grown[: merged.size] = merged
                setattr(self, name, grown)
        self.upper = new_upper

    @property
    def pos_hist(self) -> np.ndarray:
        """Counts of the non-negative values (zeros included, in bin 0)."""
        return self.hist - self.neg_hist

    def state(self) -> dict[str, Any]:
        """Scalars of the observer (JSON-friendly); the histogram is `hist`."""
        return {
            "upper": self.upper,
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "zeros": self.zeros,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], hist: np.ndarray, neg_hist: np.ndarray | None = None
    ) -> HistogramObserver:
        """Rebuild an observer from `state` and its histograms."""
        observer = cls(int(hist.size))
        observer.hist = np.asarray(hist, dtype=np.int64).copy()
        if neg_hist is not None:
            observer.neg_hist = np.asarray(neg_hist, dtype=np.int64).copy()
        observer.zeros = int(state.get("zeros", 0))
        observer.upper = float(state["upper"])
        observer.min, observer.max = float(state["min"]), float(state["max"])
        observer.count = int(state["count"])
        return observer


def calibration_tensors(model: onnx.ModelProto, op_types: Iterable[str]) -> list[str]:
    """Float activations that onnxruntime's QDQ quantizer asks ranges for.

    Like onnxruntime's calibrators: every float input and output (not an initializer) of a node
    whose op type is in ``op_types``. The model needs value_info (run shape inference first).

    Args:
        model: The FP32 model, shape-inferred.
        op_types: Op types that may be quantized.

    Returns:
        Sorted tensor names.
    """
    import onnx

    graph = model.graph
    infos = {vi.name: vi for vi in [*graph.value_info, *graph.output, *graph.input]}
    initializers = {init.name for init in graph.initializer}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    wanted = set(op_types)
    names = set()
    for node in graph.node:
        if node.op_type not in wanted:
            continue
        for name in [*node.input, *node.output]:
            info = infos.get(name)
            if name and name not in initializers and info is not None:
                if info.type.tensor_type.elem_type in float_types:
                    names.add(name)
    return sorted(names)


def _augmented_model_bytes(model: onnx.ModelProto, tensors: Sequence[str]) -> bytes:
    """Serialise a copy of ``model`` whose graph outputs also include ``tensors``."""
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(onnx.ValueInfoProto(name=name))
    data: bytes = augmented.SerializeToString()
    return data


def collect_histograms(
    model: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    tensors: Sequence[str],
    num_bins: int = 2048,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, HistogramObserver]:
    """Run the FP32 model over calibration feeds and stream every tensor into its observer.

    Args:
        model: The FP32 model.
        feeds: ORT feed dicts (any batch size; split to the model's static batch if needed).
        tensors: Tensor names to observe (see `calibration_tensors`).
        num_bins: Bins per histogram.
        on_batch: Called with the batch index after each batch (progress, tests).

    Returns:
        ``{tensor_name: observer}``.
    """
    session = make_session(_augmented_model_bytes(model, tensors), optimize="none")
    batch_dims = {i.name: (i.shape[0] if i.shape else None) for i in session.get_inputs()}
    observers = {name: HistogramObserver(num_bins) for name in tensors}
    batches = 0
    for index, feed in enumerate(feeds):
        for chunk in split_feed(feed, batch_dims):
            values = session.run(list(tensors), chunk)
            for name, value in zip(tensors, values, strict=True):
                observers[name].update(value)
        batches += 1
        if on_batch is not None:
            on_batch(index)
    if batches == 0:
        raise ValueError("no calibration batches: calib_batches is empty")
    return observers


def fingerprint(model_path: str | Path, settings: dict[str, Any]) -> str:
    """SHA-256 of the model file bytes and the JSON of the calibration settings."""
    digest = hashlib.sha256(Path(model_path).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _cache_paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    base = Path(cache_dir) / f"calib_{key[:16]}"
    return base.with_suffix(".npz"), base.with_suffix(".json")


def save_histograms(
    cache_dir: str | Path, key: str, observers: dict[str, HistogramObserver], meta: dict[str, Any]
) -> Path:
    """Write ``calib_<key>.npz`` (histograms) and ``calib_<key>.json`` (metadata) atomically.

    Returns:
        The JSON metadata path.
    """
    npz_path, json_path = _cache_paths(cache_dir, key)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    names = list(observers)
    empty = np.zeros((0, 0), np.int64)
    stacked = np.stack([observers[n].hist for n in names]) if names else empty
    negative = np.stack([observers[n].neg_hist for n in names]) if names else empty
    payload = {
        "version": CACHE_VERSION,
        "fingerprint": key,
        **meta,
        "tensors": {n: observers[n].state() for n in names},
    }
    # temp names tagged with the pid: a killed writer's leftovers go with the next write
    with atomic_file(npz_path) as tmp_npz:
        np.savez_compressed(tmp_npz, hist=stacked, neg_hist=negative)
    atomic_write_text(json_path, json.dumps(payload, indent=1))
    return json_path


def load_histograms(
    cache_dir: str | Path, key: str, tensors: Sequence[str]
) -> dict[str, HistogramObserver] | None:
    """Load cached observers for ``key``; None when absent, stale or missing a tensor."""
    npz_path, json_path = _cache_paths(cache_dir, key)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = json.loads(json_path.read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != key:
            return None
        with np.load(npz_path) as data:
            stacked, negative = data["hist"], data["neg_hist"]
    except (OSError, ValueError, KeyError):
        return None
    return _cached_observers(meta, stacked, negative, tensors)


def _cached_observers(
    meta: Any, stacked: np.ndarray, negative: np.ndarray, tensors: Sequence[str]
) -> dict[str, HistogramObserver] | None:
    """The observers of a cache file pair; None (recalibrate) when any value is implausible:
    counts negative or not adding up, a range that is not finite, a field of the wrong type."""
    states = meta.get("tensors") if isinstance(meta, dict) else None
    if (
        not isinstance(states, dict)
        or not set(tensors) <= set(states)
        or stacked.ndim != 2
        or stacked.shape[0] != len(states)
        or negative.shape != stacked.shape
        or not (
            np.issubdtype(stacked.dtype, np.integer) and np.issubdtype(negative.dtype, np.integer)
        )
        or (negative < 0).any()
        or (negative > stacked).any()
    ):
        return None
    rows = dict(zip(states, zip(stacked, negative, strict=True), strict=True))
    out = {}
    for name in tensors:
        state = states[name]
        try:
            observer = HistogramObserver.from_state(state, *rows[name])
        except (KeyError, TypeError, ValueError):
            return None
        seen = observer.count > 0
        if not (
            math.isfinite(observer.upper)
            and observer.upper >= 0.0
            and 0 <= observer.zeros <= observer.count == int(observer.hist.sum())
            and (not seen or observer.min <= observer.max)
            and (not seen or math.isfinite(observer.min) and math.isfinite(observer.max))
        ):
            return None
        out[name] = observer
    return out


_FIXED_BOUNDS = {
    "Sigmoid": (0.0, 1.0),
    "HardSigmoid": (0.0, 1.0),
    "Softmax": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs as arrays."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name == "value_float":
                    values[node.output[0]] = np.array(attr.f, dtype=np.float32)
    return values


def _clip_bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float, float]:
    """``(min, max)`` of a Clip node (attributes before opset 11, inputs after); inf if absent."""
    bounds = [-math.inf, math.inf]
    for attr in node.attribute:
        if attr.name in ("min", "max"):
            bounds[attr.name == "max"] = float(attr.f)
    for slot, name in enumerate(node.input[1:3]):
        if name and name in constants and constants[name].size == 1:
            bounds[slot] = float(constants[name].reshape(()))
        elif name:
            bounds[slot] = -math.inf if slot == 0 else math.inf
    return bounds[0], bounds[1]


def _scaled(
    bounds: tuple[float, float], node: onnx.NodeProto, constants: dict[str, np.ndarray]
) -> tuple[float, float] | None:
    """Bounds after ``Mul``/``Div`` by a positive scalar constant, else None."""
    other = next((constants.get(i) for i in node.input[1:] if i in constants), None)
    if other is None or other.size != 1 or float(other.reshape(())) <= 0.0:
        return None
    factor = float(other.reshape(()))
    if node.op_type == "Div":
        factor = 1.0 / factor
    return bounds[0] * factor, bounds[1] * factor


def bounded_tensors(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Tensors whose range the producing op guarantees, with that range (both ends finite).

    Sigmoid, HardSigmoid and Softmax give ``[0, 1]``, Tanh ``[-1, 1]``, Clip (ReLU6) its constant
    ``[min, max]``; a ``Mul``/``Div`` of such a tensor (first input) by a positive scalar constant
    scales it (the ``clip(x + 3, 0, 6) / 6`` of a hard-swish).

    Args:
        model: An ONNX model (topologically sorted, as onnx requires).

    Returns:
        ``{tensor: (lo, hi)}``.
    """
    constants = _constants(model)
    bounds: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        found = None
        if node.op_type in _FIXED_BOUNDS:
            found = _FIXED_BOUNDS[node.op_type]
        elif node.op_type == "Clip":
            found = _clip_bounds(node, constants)
        elif node.op_type in ("Mul", "Div") and node.input and node.input[0] in bounds:
            found = _scaled(bounds[node.input[0]], node, constants)
        if found is not None and all(math.isfinite(b) for b in found) and found[0] < found[1]:
            bounds[node.output[0]] = (float(found[0]), float(found[1]))
    return bounds
