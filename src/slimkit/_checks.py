"""Value checks for numbers that come from users and files: type, finiteness, range, size limits.

Every number slimkit reads from a flag, an API argument, ``model.yml`` or a plan goes through
:func:`check_int` / :func:`check_float` (a ``bool`` is not a number, ``4.7`` is not an int, NaN and
infinities are refused), and sizes that would make slimkit allocate memory are capped by the limits
below, so a corrupt or hostile file ends in a clear ``ValueError`` instead of an allocation that
gets the process killed.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = [
    "MAX_CLASSES",
    "MAX_IMAGE_PIXELS",
    "MAX_INPUT_SIDE",
    "MAX_PARAMS",
    "check_float",
    "check_int",
]

MAX_INPUT_SIDE = 8192
"""Largest network input side (pixels): a zero batch of 8192² is 0.8 GB already."""
MAX_CLASSES = 100_000
"""Most classes a model may have (ImageNet-21k has 21,841)."""
MAX_PARAMS = 1_000_000_000
"""Most parameters a zoo model may have (4 GB of FP32 weights)."""
MAX_IMAGE_PIXELS = 8192 * 8192
"""Most pixels of an image slimkit decodes (below Pillow's own decompression-bomb warning)."""


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    assert high is not None
    return f"{'<' if high_open else '<='} {high:g}"


def _in_range(
    x: float, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> bool:
    if low is not None and (x < low or (low_open and x == low)):
        return False
    return not (high is not None and (x > high or (high_open and x == high)))


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]``; a ``ValueError``/``TypeError`` naming ``name``.

    Only integers are accepted (Python or numpy); ``4.0``, ``4.7``, NaN, ``True`` and strings are
    not (a ``TypeError``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    number = int(value)
    if not _in_range(number, low, high, False, False):
        raise ValueError(f"{name} must be {_range_text(low, high, False, False)}, got {number}")
    return number


def check_float(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds; a ``ValueError``/``TypeError`` naming it.

    Args:
        value: The number (an int or float; not a bool or a string).
        name: How the message names it (``--lr``, ``learning_rate``).
        low: Lower bound (None: none).
        high: Upper bound (None: none).
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not _in_range(number, low, high, low_open, high_open):
        raise ValueError(
            f"{name} must be {_range_text(low, high, low_open, high_open)}, got {number:g}"
        )
    return number
