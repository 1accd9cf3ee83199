"""Checks of the task API's inputs, run before any long work: training arguments, the directories a
training run writes, the size of the network a configuration would build.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimkit._checks import MAX_INPUT_SIDE, MAX_PARAMS, check_float, check_int
from slimkit._utils import as_hw
from slimkit.models import create_model
from slimkit.models.pretrained import BUILTIN
from slimkit.tasks import modeldir
from slimkit.tasks.optim import OPTIMIZERS

MAX_EPOCHS = 1_000_000


def input_hw(size: Any) -> tuple[int, int]:
    """``(height, width)`` of an input size (an int or a pair), each side in [1, MAX_INPUT_SIDE]."""
    hw = as_hw(size, "input_size")
    for side in hw:
        check_int(side, "input_size", 1, MAX_INPUT_SIDE)
    return hw


def _as_list(values: Any) -> list[Any] | None:
    """``values`` as a list when it is a non-string iterable (list, tuple, numpy array)."""
    if isinstance(values, (str, bytes)):
        return None
    try:
        return list(values)
    except TypeError:
        return None


def channel_values(values: Any, name: str, positive: bool = False) -> tuple[float, ...]:
    """``mean``/``std``: three finite numbers (R, G, B); std > 0."""
    items = _as_list(values)
    if items is None or len(items) != 3:
        raise ValueError(f"{name} must be three numbers (R, G, B), got {values!r}")
    return tuple(
        check_float(v, name, 0.0 if positive else None, None, low_open=positive) for v in items
    )


def label_names(labels: Any, num_classes: int) -> list[str]:
    """Class names: one per class (default ``"0"``, ``"1"``, ...)."""
    if labels is None:
        return [str(i) for i in range(num_classes)]
    names = _as_list(labels)
    if names is None:
        raise TypeError(f"labels must be a list of class names, got {labels!r}")
    if len(names) != num_classes:
        raise ValueError(
            f"labels has {len(names)} class names but num_classes is {num_classes}; "
            "give one name per class"
        )
    return [str(x) for x in names]


_TRAIN_NUMBERS = (
    "num_epochs",
    "train_batch_size",
    "save_interval_epochs",
    "log_interval_steps",
    "learning_rate",
    "warmup_steps",
    "lr_decay_epochs",
    "weight_decay",
    "prune_round_to",
    "num_workers",
)


def check_train_call(source_dir: Path | None, args: Mapping[str, Any]) -> Path:
    """What of a ``BaseTask.train`` call (its arguments by name) can be checked before any work:
    the numbers, the datasets, and every directory the run will write (never an input; an
    existing model directory only with ``overwrite``).

    Args:
        source_dir: The directory the model was loaded from (an input), if any.
        args: The call's arguments by name.

    Returns:
        ``save_dir`` as a path.
    """
    check_train_args(*(args[k] for k in _TRAIN_NUMBERS))
    if args["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {args['optimizer']!r}")
    check_dataset(args["train_dataset"], "train_dataset")
    if args["eval_dataset"] is not None:
        check_dataset(args["eval_dataset"], "eval_dataset")
    pretrain = args["pretrain_weights"]
    sources = [source_dir, None if str(pretrain) == BUILTIN else pretrain]
    sources += dataset_dirs(args["train_dataset"], args["eval_dataset"])
    if args["sensitivities_file"] is not None and str(args["sensitivities_file"]) != "DEFAULT":
        sources.append(args["sensitivities_file"])
    return check_train_targets(
        args["save_dir"],
        args["num_epochs"],
        args["save_interval_epochs"],
        args["overwrite"],
        sources,
    )


def check_train_args(
    num_epochs: Any,
    train_batch_size: Any,
    save_interval_epochs: Any,
    log_interval_steps: Any,
    learning_rate: Any,
    warmup_steps: Any,
    lr_decay_epochs: Any,
    weight_decay: Any,
    prune_round_to: Any,
    num_workers: Any,
) -> None:
    """Every number of ``BaseTask.train`` (types, finiteness, ranges), before anything runs.

    Raises:
        ValueError: a value out of range (``learning_rate=nan``, ``save_interval_epochs=0``, ...).
        TypeError: a value of the wrong type (a string, a float where an int is due, a bool).
    """
    check_int(num_epochs, "num_epochs", 0, MAX_EPOCHS)
    check_int(train_batch_size, "train_batch_size", 1)
    check_int(save_interval_epochs, "save_interval_epochs", 1)
    check_int(log_interval_steps, "log_interval_steps", 1)
    if learning_rate is not None:  # None: the optimizer's default (tasks.optim.DEFAULT_LR)
        check_float(learning_rate, "learning_rate", 0.0, low_open=True)
    check_int(warmup_steps, "warmup_steps", 0)
    check_float(weight_decay, "weight_decay", 0.0)
    check_int(num_workers, "num_workers", 0)
    if prune_round_to is not None:
        check_int(prune_round_to, "prune_round_to", 1)
    if lr_decay_epochs is not None:
        if isinstance(lr_decay_epochs, (str, bytes)) or not isinstance(lr_decay_epochs, Sequence):
            raise TypeError(f"lr_decay_epochs must be a list of epochs, got {lr_decay_epochs!r}")
        for epoch in lr_decay_epochs:
            check_int(epoch, "lr_decay_epochs[i]", 1)


def train_targets(save_dir: Path, num_epochs: int, save_interval: int) -> list[Path]:
    """The model directories a training run writes: ``best_model`` and the saved ``epoch_N``.

    Mirrors ``BaseTask._fit``: an epoch is saved when it is a multiple of ``save_interval`` or the
    last one.
    """
    epochs = [e for e in range(1, num_epochs + 1) if e % save_interval == 0 or e == num_epochs]
    return [save_dir / "best_model"] + [save_dir / f"epoch_{e}" for e in epochs]


def check_train_targets(
    save_dir: str | os.PathLike[str],
    num_epochs: int,
    save_interval: int,
    overwrite: bool,
    sources: Iterable[str | os.PathLike[str] | None],
) -> Path:
    """Check every directory a training run will write, before it starts (see
    :mod:`slimkit._outputs`): new, empty, or (with ``overwrite``) a model directory; never an
    input. Afterwards the run replaces them freely: they are its own.

    Returns:
        ``save_dir`` as a path.
    """
    save_dir = Path(save_dir)
    if os.path.lexists(save_dir) and not save_dir.is_dir():
        raise ValueError(f"save_dir {str(save_dir)!r} is a file; give a directory")
    if (save_dir / modeldir.MODEL_YML).is_file():
        raise ValueError(
            f"save_dir {str(save_dir)!r} is a model directory; training writes best_model/ and "
            "epoch_N/ into save_dir: choose another directory"
        )
    inputs = list(sources)
    for target in train_targets(save_dir, num_epochs, save_interval):
        modeldir.check_model_target(target, overwrite, inputs)
    return save_dir


def check_dataset(dataset: Any, name: str = "dataset", batch_size: Any = 1) -> None:
    """A ``TypeError`` unless ``dataset`` is a map-style dataset (a slimkit dataset or alike), and
    ``batch_size`` a positive int.

    A path is refused with a hint: the task API takes dataset objects, the CLI takes directories.
    """
    check_int(batch_size, "batch_size", 1)
    if isinstance(dataset, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} must be a dataset object, got the path {dataset!r}; open it with e.g. "
            "slimkit.datasets.ImageNet(data_dir, file_list, label_list) or "
            "slimkit.tasks.factory.open_split(task, data_dir, split)"
        )
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"{name} must be a dataset (e.g. slimkit.datasets.ImageNet(...)), got "
            f"{type(dataset).__name__}"
        )


def dataset_dirs(*datasets: Any) -> list[str]:
    """The root directories of slimkit datasets (inputs a run must not write over)."""
    roots = [getattr(d, "data_dir", None) or getattr(d, "root", None) for d in datasets]
    return [os.fspath(r) for r in roots if isinstance(r, (str, os.PathLike))]


def check_net_size(architecture: str, net_kwargs: dict[str, Any]) -> None:
    """Refuse a configuration whose network would exceed ``MAX_PARAMS`` parameters.

    The network is built on the ``meta`` device (no memory is allocated), so ``num_classes=1e9``
    or ``width_mult=1e4`` ends in a ``ValueError`` instead of an allocation that kills the process.
    """
    with torch.device("meta"):
        net = create_model(architecture, **net_kwargs)
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_PARAMS:
        raise ValueError(
            f"{architecture} with {net_kwargs} would have {count:,} parameters, more than "
            f"slimkit builds ({MAX_PARAMS:,}); check num_classes and the width arguments"
        )
