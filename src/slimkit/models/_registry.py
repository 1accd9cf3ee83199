"""Model registry: one :class:`ModelSpec` per model name (timm ``default_cfg``-like).

Everything slimkit knows about a zoo model lives in its ``@register_model(...)`` call: the factory, the
task (``cls``/``det``/``seg``), the display name of report tables, the default input size, the
normalisation and the key that names its built-in (DEFAULT) sensitivity files. ``create_model``,
``slimkit.load_model``, the task factory, the benchmark table, the CLI's ``--model`` choices and the
DEFAULT-sensitivity lookup all read it from here.
"""

from __future__ import annotations

import difflib
import inspect
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

__all__ = ["ModelSpec", "create_model", "list_models", "model_spec", "register_model"]

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TASKS = ("cls", "det", "seg")


@dataclass(frozen=True)
class ModelSpec:
    """What slimkit knows about one registered model.

    Attributes:
        name: The registry name (the factory's function name), e.g. ``"mobilenetv2"``.
        factory: Builds the ``nn.Module``; keyword arguments are the model's options.
        task: ``"cls"``, ``"det"`` or ``"seg"``; None for a plain module without a task API.
        display_name: The name in report tables, e.g. ``"MobileNetV2"``.
        input_size: Default ``(height, width)`` of the task API.
        mean: Per-channel normalisation mean (RGB, images in [0, 1]).
        std: Per-channel normalisation std.
        sensitivity_key: Format string over the model's keyword arguments naming its built-in
            sensitivity file, e.g. ``"mobilenetv2_w{width_mult:g}"``; missing arguments take the
            factory's defaults.
    """

    name: str
    factory: Callable[..., nn.Module]
    task: str | None = None
    display_name: str = ""
    input_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    sensitivity_key: str | None = None

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} or None, got {self.task!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        if self.sensitivity_key is not None:
            missing = [f for f in self.key_fields if f not in self.defaults]
            if missing:
                raise ValueError(
                    f"sensitivity_key {self.sensitivity_key!r} of {self.name!r} uses {missing}, "
                    "which the factory does not declare with defaults"
                )

    @property
    def key_fields(self) -> list[str]:
        """The keyword arguments that ``sensitivity_key`` formats."""
        fields = string.Formatter().parse(self.sensitivity_key or "")
        return [f for _, f, _, _ in fields if f]

    @property
    def defaults(self) -> dict[str, Any]:
        """The factory's keyword arguments that have defaults."""
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def sensitivity_name(self, model_kwargs: Mapping[str, Any]) -> str:
        """The key of this model built with ``model_kwargs`` (e.g. ``"mobilenetv2_w0.5"``).

        Raises:
            ValueError: The model has no ``sensitivity_key``.
        """
        if self.sensitivity_key is None:
            raise ValueError(f"model {self.name!r} declares no sensitivity_key")
        values = {**self.defaults, **model_kwargs}
        return self.sensitivity_key.format(**{f: values[f] for f in self.key_fields})


_MODEL_SPECS: dict[str, ModelSpec] = {}


@overload
def register_model(fn: FactoryT) -> FactoryT: ...


@overload
def register_model(
    fn: None = None,
    *,
    task: str | None = None,
    display_name: str = "",
    input_size: int | tuple[int, int] | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    sensitivity_key: str | None = None,
) -> Callable[[FactoryT], FactoryT]: ...


def register_model(
    fn: FactoryT | None = None,
    *,
    task: str | None = None,
    display_name: str = "",
    input_size: int | tuple[int, int] | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    sensitivity_key: str | None = None,
) -> FactoryT | Callable[[FactoryT], FactoryT]:
    """Register a model factory under its function name, with its spec.

    ``@register_model`` alone registers a plain ``nn.Module`` factory (``create_model`` works, the
    task API does not); ``@register_model(task=..., ...)`` adds the spec the task API reads.
    Re-registering the same function (e.g. on module reload) replaces the entry; registering a
    different function under a taken name is an error.

    Args:
        fn: Factory returning an ``nn.Module``; its ``__name__`` becomes the model name.
        task: ``"cls"``, ``"det"`` or ``"seg"``.
        display_name: Name in report tables (default: the model name).
        input_size: Default input size of the task API: an int or ``(height, width)``.
        mean: Normalisation mean.
        std: Normalisation std.
        sensitivity_key: Names the built-in sensitivity files (see :class:`ModelSpec`).

    Returns:
        ``fn`` unchanged (or, called with keywords only, a decorator).

    Raises:
        ValueError: Another factory is already registered under the same name, or a spec field
            is invalid.
    """

    def register(factory: FactoryT) -> FactoryT:
        size = (input_size, input_size) if isinstance(input_size, int) else input_size
        spec = ModelSpec(
            name=factory.__name__,
            factory=factory,
            task=task,
            display_name=display_name or factory.__name__,
            input_size=None if size is None else (int(size[0]), int(size[1])),
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            sensitivity_key=sensitivity_key,
        )
        previous = _MODEL_SPECS.get(spec.name)
        if previous is not None and _qualified(previous.factory) != _qualified(factory):
            raise ValueError(
                f"model name {spec.name!r} is already registered by "
                f"{_qualified(previous.factory)}; rename the factory function"
            )
        _MODEL_SPECS[spec.name] = spec
        return factory

    return register if fn is None else register(fn)


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered models, sorted; with ``task``, only the models of that task."""
    return sorted(n for n, s in _MODEL_SPECS.items() if task is None or s.task == task)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: ``name`` is unknown; the message lists close matches and all known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    spec = _MODEL_SPECS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name.lower(), list(_MODEL_SPECS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}."
        )
    return spec


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
    return model_spec(name).factory(**kwargs)
