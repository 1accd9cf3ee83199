"""`OrtModel`: a small onnxruntime CPU wrapper, and batch-to-feed conversion shared by calibration."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimkit._utils import make_ort_session

__all__ = ["OrtModel", "as_numpy", "make_session", "split_feed", "to_feed"]


def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (detached, moved to CPU) or array-like."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_feed(batch: Any, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Turn a calibration/inference batch into an ORT feed dict.

    Args:
        batch: An array/tensor (single-input model), a dict ``{input_name: array}``, or a
            tuple/list whose first element is the input (e.g. ``(images, targets)``).
        input_names: The model's input names.

    Returns:
        ``{input_name: float32 array}`` (float arrays cast to float32, others kept).
    """
    if isinstance(batch, Mapping):
        missing = [n for n in input_names if n not in batch]
        if missing:
            raise ValueError(f"batch dict lacks model inputs {missing}; it has {sorted(batch)}")
        arrays = {n: as_numpy(batch[n]) for n in input_names}
    else:
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError("got an empty tuple/list as a batch")
            batch = batch[0]
        if len(input_names) != 1:
            raise ValueError(
                f"the model has {len(input_names)} inputs {list(input_names)}: pass batches as "
                "dicts {input_name: array}"
            )
        arrays = {input_names[0]: as_numpy(batch)}
    return {
        n: a.astype(np.float32, copy=False) if a.dtype.kind == "f" else a for n, a in arrays.items()
    }


def split_feed(
    feed: dict[str, np.ndarray], batch_sizes: Mapping[str, int | None]
) -> Iterator[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into chunks matching each input's static batch size.

    Args:
        feed: ``{input_name: array}``.
        batch_sizes: The model's static batch size per input (None or non-int: dynamic).

    Yields:
        Feeds the model accepts; the whole feed when batch sizes already match or are dynamic.
    """
    static = {n: b for n, b in batch_sizes.items() if isinstance(b, int) and b > 0}
    sizes = {n: feed[n].shape[0] if feed[n].ndim else 0 for n in static}
    if all(sizes[n] == static[n] for n in static):
        yield feed
        return
    step = next(iter(static.values()))
    total = next(iter(sizes.values()))
    if any(s != total for s in sizes.values()) or total % step:
        raise ValueError(
            f"batch of {sizes} samples cannot be split into the model's static batch sizes {static}"
        )
    for start in range(0, total, step):
        yield {n: (a[start : start + step] if n in static else a) for n, a in feed.items()}


def make_session(
    model: str | Path | bytes, threads: int | None = None, optimize: str = "all"
) -> Any:
    """A CPU ``onnxruntime.InferenceSession``: :func:`slimkit._utils.make_ort_session`."""
    return make_ort_session(model, threads=threads, optimize=optimize)


class OrtModel:
    """Run an ONNX model on onnxruntime's CPU provider.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (None: onnxruntime's default, all cores).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.session = make_session(self.path, threads)
        self.input_names: list[str] = [i.name for i in self.session.get_inputs()]
        self.input_shapes: list[list[int | str | None]] = [
            list(i.shape) for i in self.session.get_inputs()
        ]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    @property
    def input_name(self) -> str:
        """Name of the first input."""
        return self.input_names[0]

    @property
    def input_shape(self) -> list[int | str | None]:
        """Shape of the first input (symbolic dims as strings or None)."""
        return self.input_shapes[0]

    def __call__(self, x: Any) -> list[np.ndarray]:
        """Run the model.

        Args:
            x: A numpy array or torch tensor (single-input models) or ``{input_name: array}``.

        Returns:
            The outputs, in the model's output order.
        """
        outputs: list[np.ndarray] = self.session.run(None, to_feed(x, self.input_names))
        return outputs

    def __repr__(self) -> str:
        return f"OrtModel({str(self.path)!r}, inputs={dict(zip(self.input_names, self.input_shapes, strict=True))})"
