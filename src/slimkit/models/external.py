"""Models defined outside slimkit: ``pkg.module:factory`` or ``path/to/file.py:factory``.

:func:`register_model_def` imports the factory and registers it in the model registry under that
very string, with the task spec the task API needs; from then on ``create_task``, ``load_model``
and every ``slimkit`` command treat it like a zoo model. A model directory saved from it names the
definition in ``model.yml``, so loading it imports the factory again (user code, never a pickle).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._registry import IMAGENET_MEAN, IMAGENET_STD, list_models, register_model

__all__ = ["import_factory", "is_model_def", "load_weights", "register_model_def"]


def is_model_def(name: str) -> bool:
    """Whether an architecture name is a model definition (``module:factory``)."""
    return ":" in name


def import_factory(model_def: str) -> Callable[..., nn.Module]:
    """The callable named by ``pkg.module:factory`` or ``path/to/file.py:factory``.

    Raises:
        ValueError: The string is malformed, the module cannot be imported, or the name is not a
            callable in it (the message says which).
    """
    where, _, attr = model_def.rpartition(":")
    if not where or not attr:
        raise ValueError(
            f"a model definition looks like pkg.module:factory or path/to/file.py:factory, "
            f"got {model_def!r}"
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(
                f"cannot import {where!r} ({err}); put its directory on PYTHONPATH or give the "
                "path of the .py file"
            ) from err
    try:
        factory = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ValueError(f"{where!r} has no {attr!r}") from None
    if not callable(factory):
        raise ValueError(f"{model_def!r} is not callable (a function or class returning a module)")
    return factory  # type: ignore[no-any-return]


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"model definition file {str(path)!r} not found")
    name = f"slimkit_model_def_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def register_model_def(
    model_def: str,
    task: str,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> str:
    """Register the factory of ``model_def`` for the task API; returns its registry name.

    The factory is called with ``num_classes=`` when it accepts that argument, else with none.

    Raises:
        ValueError: See :func:`import_factory`; or an invalid task, mean or std.
    """
    if model_def in list_models():
        return model_def
    factory = import_factory(model_def)
    params = _parameters(factory)

    def build(num_classes: int | None = None, **kwargs: Any) -> nn.Module:
        if num_classes is not None and ("num_classes" in params or "**" in params):
            kwargs["num_classes"] = num_classes
        net = factory(**kwargs)
        if not isinstance(net, nn.Module):
            raise ValueError(f"{model_def!r} returned a {type(net).__name__}, not an nn.Module")
        return net

    build.__name__ = build.__qualname__ = model_def
    size = None if input_size is None else tuple(int(s) for s in _pair(input_size))
    register_model(
        task=task,
        display_name=model_def.rpartition(":")[2],
        input_size=size,  # type: ignore[arg-type]
        mean=tuple(mean or IMAGENET_MEAN),  # type: ignore[arg-type]
        std=tuple(std or IMAGENET_STD),  # type: ignore[arg-type]
    )(build)
    return model_def


def _parameters(factory: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {"**" if p.kind is p.VAR_KEYWORD else p.name for p in params}


def _pair(size: int | Sequence[int]) -> Sequence[int]:
    return (size, size) if isinstance(size, int) else size


def load_weights(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict into ``net``: a ``.safetensors`` file or one saved with
    ``torch.save(model.state_dict(), path)`` (read with ``weights_only=True``: nothing is
    unpickled). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        ValueError: The file is missing or unreadable, or its keys or shapes do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read weights from {str(path)!r} ({type(err).__name__}: {err}); give a "
            ".safetensors file or a state dict saved with torch.save(model.state_dict(), path)"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    own = net.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{str(path)!r} does not fit the model (file vs model shapes): {', '.join(wrong[:4])}"
        )
    missing, unexpected = net.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{str(path)!r} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}"
        )
