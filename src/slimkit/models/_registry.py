"""Model registry: ``@register_model`` factories, ``create_model`` and ``list_models`` (timm-style)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: FactoryT) -> FactoryT:
    """Register a model factory under its function name.

    Re-registering the same function (e.g. on module reload) replaces the entry; registering a
    different function under a taken name is an error.

    Args:
        fn: Factory returning an ``nn.Module``; its ``__name__`` becomes the model name.

    Returns:
        ``fn`` unchanged, so this works as a decorator.

    Raises:
        ValueError: If another factory is already registered under the same name.
    """
    name = fn.__name__
    previous = _MODEL_FACTORIES.get(name)
    if previous is not None and _qualified(previous) != _qualified(fn):
        raise ValueError(
            f"model name {name!r} is already registered by {_qualified(previous)}; "
            "rename the factory function"
        )
    _MODEL_FACTORIES[name] = fn
    return fn


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def list_models() -> list[str]:
    """Return the names of all registered models, sorted."""
    return sorted(_MODEL_FACTORIES)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registered model name, e.g. ``"mobilenetv2"``.
        **kwargs: Passed to the model's factory (``num_classes``, ``width_mult``, ...).

    Returns:
        The freshly initialised model.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If ``name`` is unknown; the message lists close matches and all known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    factory = _MODEL_FACTORIES.get(name)
    if factory is None:
        close = difflib.get_close_matches(name.lower(), list(_MODEL_FACTORIES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}."
        )
    return factory(**kwargs)
