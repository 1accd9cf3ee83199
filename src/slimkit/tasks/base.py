"""The PaddleX-like task API shared by Classifier, Detector and Segmenter.

A task object owns an ``nn.Module`` (``.net``) built from the model registry plus everything needed to
train, evaluate, predict and save it: input size, normalisation, class names, status
(``Normal`` | ``Prune`` | ``Quant``) and, when pruned, the pruning plan. Subclasses supply the loss, the
metric meter and the prediction post-processing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from slimkit._checks import MAX_CLASSES, MAX_INPUT_SIDE, check_float, check_int
from slimkit._io import recover_all
from slimkit._utils import as_hw
from slimkit.data import collate_fn
from slimkit.data._base import read_image
from slimkit.data.transforms import default_transforms
from slimkit.models import ModelSpec, create_model, model_spec
from slimkit.tasks import modeldir
from slimkit.tasks.checks import (
    check_dataset,
    check_net_size,
    check_train_args,
    check_train_targets,
    dataset_dirs,
)
from slimkit.tasks.logging import log
from slimkit.tasks.pruning import prune_net, ratios_within_loss, resolve_sensitivities
from slimkit.tasks.runtime import OrtRunner


class BaseTask:
    """Common machinery of the three tasks. Use a subclass (e.g. ``slimkit.cls.MobileNetV2``)."""

    task: str = ""
    metric_name: str = ""

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        input_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        **model_kwargs: Any,
    ) -> None:
        check_int(num_classes, "num_classes", 1, MAX_CLASSES)
        spec = _checked_spec(architecture, self.task)
        if input_size is None:
            input_size = spec.input_size
        if input_size is None:
            raise ValueError(f"model {architecture!r} has no default input_size; pass input_size=")
        self.architecture = architecture
        self.num_classes = int(num_classes)
        self.input_size = as_hw(input_size, "input_size")
        for side in self.input_size:
            check_int(side, "input_size", 1, MAX_INPUT_SIDE)
        self.mean = _channel_values(spec.mean if mean is None else mean, "mean")
        self.std = _channel_values(spec.std if std is None else std, "std", positive=True)
        self.labels = _label_names(labels, self.num_classes)
        self.model_kwargs = dict(model_kwargs)
        check_net_size(architecture, self._net_kwargs())
        self.source_dir: Path | None = None  # the model directory load_model read it from
        self.status = "Normal"
        self.prune_plan: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net: nn.Module | None = self._build_net()
        self.runtime: OrtRunner | None = None  # runs the ONNX model (Quant models, using_onnx)

    # -- network -----------------------------------------------------------------------------
    def _build_net(self) -> nn.Module:
        return create_model(self.architecture, **self._net_kwargs())

    def _net_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **self.model_kwargs}

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """A zero batch of the model's input shape (for tracing, pruning and export)."""
        return torch.zeros(batch_size, 3, *self.input_size)

    @property
    def spec(self) -> ModelSpec:
        """The registry's spec of this model's architecture."""
        return model_spec(self.architecture)

    @property
    def sensitivity_key(self) -> str:
        """Names this model's sensitivity files (architecture + width, e.g. ``mobilenetv2_w0.5``)."""
        if self.spec.sensitivity_key is None:
            return self.architecture
        return self.spec.sensitivity_name(self.model_kwargs)

    @contextmanager
    def using_onnx(
        self, path: str | os.PathLike[str], threads: int | None = None
    ) -> Iterator[None]:
        """Run ``evaluate``/``predict`` through an ONNX file with ONNX Runtime inside the block."""
        previous, self.runtime = self.runtime, OrtRunner(path, threads=threads)
        try:
            yield
        finally:
            self.runtime = previous

    def _forward(self, images: torch.Tensor) -> Any:
        """Run the network (or the ONNX Runtime session of a Quant model) on a batch."""
        if self.runtime is not None:
            return self.runtime.run_torch(images)
        assert self.net is not None
        return self.net(images.to(self.device))

    # -- subclass hooks ----------------------------------------------------------------------
    def compute_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def make_meter(self) -> Any:
        """A fresh streaming metric meter with ``update(outputs, targets)`` and ``compute()``."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, infos: list[dict[str, Any]]) -> list[Any]:
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------------
    def _transformed(self, dataset: Any, train: bool) -> Any:
        if getattr(dataset, "task", self.task) != self.task:
            raise ValueError(
                f"a {dataset.task!r} dataset was given to a {self.task!r} model; "
                f"use a {self.task!r} dataset (see slimkit.datasets)"
            )
        if getattr(dataset, "transforms", None) is None and hasattr(dataset, "with_transforms"):
            t = default_transforms(self.task, train, self.input_size, self.mean, self.std)
            return dataset.with_transforms(t)
        return dataset

    def make_loader(
        self, dataset: Any, batch_size: int, train: bool = False, num_workers: int = 0
    ) -> DataLoader:
        """A DataLoader of ``(images, targets)`` batches with the task's default transforms."""
        check_dataset(dataset)
        check_int(batch_size, "batch_size", 1)
        if len(dataset) == 0:
            raise ValueError("the dataset is empty; check its file list")
        ds = self._transformed(dataset, train)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(ds) > batch_size,
            collate_fn=collate_fn(self.task),
            num_workers=num_workers,
        )

    def eval_batches(self, dataset: Any, batch_size: int = 8) -> list[tuple[torch.Tensor, Any]]:
        """The evaluation set as an in-memory list of ``(images, targets)`` batches.

        This is the re-iterable ``data`` that ``slimkit.prune.analyze_sensitivity`` takes.
        """
        return list(self.make_loader(dataset, batch_size))

    def metric_fn(self, outputs: list[Any], targets: list[Any]) -> float:
        """The task metric (``metric_name``) over a whole set of per-batch outputs and targets."""
        meter = self.make_meter()
        for out, tgt in zip(outputs, targets, strict=True):
            meter.update(out, tgt)
        return float(meter.compute()[self.metric_name])

    # -- evaluation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, eval_dataset: Any, batch_size: int = 8, progress: bool = False) -> dict:
        """Evaluate on a dataset; returns the task's metric dict (``acc1`` / ``bbox_map`` / ``miou``)."""
        if self.net is not None:
            self.net.to(self.device).eval()
        meter = self.make_meter()
        loader = self.make_loader(eval_dataset, batch_size)
        for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
            meter.update(self._forward(images), targets)
        return {k: v for k, v in meter.compute().items() if not isinstance(v, (list, dict))}

    # -- prediction ----------------------------------------------------------------------------
    def _load_image(self, image: str | os.PathLike | np.ndarray) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an HxWx3 RGB uint8 array, got shape {image.shape}")
            return image.astype(np.uint8)
        if not isinstance(image, (str, os.PathLike)):
            raise TypeError(
                f"predict takes image paths or HxWx3 uint8 arrays, got {type(image).__name__}"
            )
        if not Path(image).is_file():
            raise ValueError(f"image {str(image)!r} not found")
        return read_image(os.fspath(image))

    @torch.inference_mode()
    def predict(self, image: Any) -> Any:
        """Predict one image (path or HxWx3 RGB uint8 array) or a list of them."""
        images = image if isinstance(image, list) else [image]
        transform = default_transforms(self.task, False, self.input_size, self.mean, self.std)
        batch, infos = [], []
        for img in images:
            arr = self._load_image(img)
            infos.append({"orig_size": arr.shape[:2]})
            batch.append(transform({"image": arr})["image"])
        if self.net is not None:
            self.net.to(self.device).eval()
        results = self.postprocess(self._forward(torch.stack(batch)), infos)
        return results if isinstance(image, list) else results[0]

    # -- pruning -------------------------------------------------------------------------------
    def prune(
        self,
        ratios: float | Mapping[str, float] | None = None,
        *,
        sensitivities_file: str | os.PathLike | None = None,
        eval_metric_loss: float = 0.05,
        criterion: str = "l1",
        round_to: int | None = 8,
        log_fn: Callable[[str], None] = log,
    ) -> float | dict[str, float]:
        """Physically prune ``net`` (keeping the most important channels); status becomes Prune.

        Give either ``ratios`` or ``sensitivities_file``. Used by ``train`` (method 1/2),
        ``slim.prune`` and ``slimkit prune``.

        Args:
            ratios: One ratio for every prunable group, or ``{group: ratio}``.
            sensitivities_file: Method 1: a sensitivity JSON; method 2: ``"DEFAULT"`` (built-in).
                Groups are pruned at the largest ratio within ``eval_metric_loss``.
            eval_metric_loss: Budget of relative metric loss per pruned group.
            criterion: Channel importance (see ``slimkit.prune.CRITERIA``).
            round_to: Kept channels of each group rounded up to a multiple of this (None: exact).
                On a 2-core AVX-512 CPU, MobileNetV2 pruned to 44 % of its MACs with odd channel
                counts ran 1.58x slower in ONNX Runtime than the original at 64 px, and 2x faster
                with ``round_to=8``.
            log_fn: Receives one line: groups, params and FLOPs before and after.

        Returns:
            The ratios applied (for ``sensitivities_file``, the chosen ``{group: ratio}``).

        Raises:
            ValueError: a Quant model, both or neither of ``ratios``/``sensitivities_file``, or a
                sensitivity file that does not belong to this model.
        """
        if self.net is None:
            raise ValueError("a Quant model cannot be pruned; prune the FP32 model, then quantize")
        if (ratios is None) == (sensitivities_file is None):
            raise ValueError("give either ratios or sensitivities_file to prune")
        if sensitivities_file is not None:
            path = resolve_sensitivities(self.sensitivity_key, sensitivities_file)
            ratios = ratios_within_loss(
                path, eval_metric_loss, self.sensitivity_key, self.architecture
            )
            what = f"{len(ratios)} groups under eval_metric_loss {eval_metric_loss} ({path.name})"
        else:
            assert ratios is not None
            what = f"{len(ratios)} groups" if isinstance(ratios, Mapping) else f"ratio {ratios}"
        x = self.example_inputs().to(next(self.net.parameters()).device)
        self.net, self.prune_plan, summary = prune_net(
            self.net, ratios, x, self.prune_plan, criterion, round_to
        )
        self.status = "Prune"
        log_fn(f"pruned {what}: {summary}")
        return dict(ratios) if isinstance(ratios, Mapping) else ratios

    # -- training ------------------------------------------------------------------------------
    def train(
        self,
        num_epochs: int,
        train_dataset: Any,
        train_batch_size: int = 32,
        eval_dataset: Any = None,
        save_interval_epochs: int = 1,
        log_interval_steps: int = 10,
        save_dir: str | os.PathLike = "output",
        pretrain_weights: str | os.PathLike | None = None,
        optimizer: str = "sgd",
        learning_rate: float = 0.025,
        warmup_steps: int = 0,
        lr_decay_epochs: Sequence[int] | None = None,
        weight_decay: float = 4e-5,
        sensitivities_file: str | os.PathLike | None = None,
        eval_metric_loss: float = 0.05,
        prune_round_to: int | None = 8,
        num_workers: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ) -> dict[str, float]:
        """Train (or, with ``sensitivities_file``, prune then fine-tune) the model.

        Args:
            num_epochs: Passes over ``train_dataset``.
            train_dataset: A slimkit dataset of this task (its transforms, or the task defaults).
            train_batch_size: Batch size.
            eval_dataset: Evaluated every ``save_interval_epochs``; keeps ``save_dir/best_model``.
            save_interval_epochs: Evaluate and save ``save_dir/epoch_N`` every this many epochs.
            log_interval_steps: Update the progress bar's loss every this many steps.
            save_dir: Output directory.
            pretrain_weights: A model directory (Normal or Prune) whose weights initialise the net.
            optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
            learning_rate: Peak learning rate.
            warmup_steps: Linear warm-up steps.
            lr_decay_epochs: Piecewise decay (×0.1) at these epochs; cosine decay when None.
            weight_decay: L2 weight decay.
            sensitivities_file: Method 1: a sensitivity JSON; method 2: ``"DEFAULT"`` (built-in).
                The net (trained weights) is pruned under ``eval_metric_loss`` before training.
            eval_metric_loss: Budget of relative metric loss per pruned group.
            prune_round_to: Kept channels of each pruned group rounded up to a multiple of this
                (SIMD-friendly shapes; None keeps the exact ratios).
            num_workers: DataLoader workers.
            progress: Show progress bars and per-epoch lines.
            overwrite: Replace model directories already at ``save_dir/best_model`` and
                ``save_dir/epoch_N`` (otherwise refused, before training starts). The inputs
                (``pretrain_weights``, the sensitivity file, the datasets, the directory this
                model was loaded from) are never written over.

        Returns:
            The best evaluation metrics (empty when no ``eval_dataset``).
        """
        check_train_args(
            num_epochs,
            train_batch_size,
            save_interval_epochs,
            log_interval_steps,
            learning_rate,
            warmup_steps,
            lr_decay_epochs,
            weight_decay,
            prune_round_to,
            num_workers,
        )
        check_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            check_dataset(eval_dataset, "eval_dataset")
        if sensitivities_file is not None:
            check_float(
                eval_metric_loss, "eval_metric_loss", 0.0, 1.0, low_open=True, high_open=True
            )
        sources = [self.source_dir, pretrain_weights, *dataset_dirs(train_dataset, eval_dataset)]
        if sensitivities_file is not None and str(sensitivities_file) != "DEFAULT":
            sources.append(sensitivities_file)
        save_dir = check_train_targets(
            save_dir, num_epochs, save_interval_epochs, overwrite, sources
        )
        if pretrain_weights is not None:
            self.load_weights_from(pretrain_weights)
        if sensitivities_file is not None:
            self.prune(
                sensitivities_file=sensitivities_file,
                eval_metric_loss=eval_metric_loss,
                round_to=prune_round_to,
            )
        loader = self.make_loader(train_dataset, train_batch_size, True, num_workers)
        opt, sched = self._build_optimizer(
            optimizer,
            learning_rate,
            weight_decay,
            num_epochs,
            len(loader),
            warmup_steps,
            lr_decay_epochs,
        )
        recover_all(save_dir)  # leftovers of a killed run: finish its swaps, delete its temps
        best = self._fit(
            loader,
            opt,
            sched,
            num_epochs,
            eval_dataset,
            save_interval_epochs,
            log_interval_steps,
            save_dir,
            progress,
        )
        return best

    def _fit(
        self,
        loader,
        opt,
        sched,
        num_epochs,
        eval_dataset,
        save_interval,
        log_interval,
        save_dir,
        progress,
    ) -> dict[str, float]:
        assert self.net is not None
        self.net.to(self.device)
        best: dict[str, float] = {}
        for epoch in range(1, num_epochs + 1):
            self.net.train()
            start, running = time.time(), 0.0
            bar = tqdm(
                loader, desc=f"epoch {epoch}/{num_epochs}", disable=not progress, leave=False
            )
            for step, (images, targets) in enumerate(bar, 1):
                loss = self.compute_loss(self.net(images.to(self.device)), targets)
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"loss became {loss.item()} at epoch {epoch} step {step}; "
                        "lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item()
                if step % log_interval == 0 or step == len(loader):
                    bar.set_postfix(
                        loss=f"{running / step:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}"
                    )
            line = (
                f"epoch {epoch}/{num_epochs} loss {running / max(len(loader), 1):.4f} "
                f"time {time.time() - start:.1f}s"
            )
            if epoch % save_interval == 0 or epoch == num_epochs:
                if eval_dataset is not None:
                    self.metrics = self.evaluate(eval_dataset)
                    line += " " + " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
                    if not best or self.metrics[self.metric_name] > best[self.metric_name]:
                        best = dict(self.metrics)
                        self.save(save_dir / "best_model", overwrite=True)  # checked in train()
                self.save(save_dir / f"epoch_{epoch}", overwrite=True)
            if progress:
                log(line)
        if eval_dataset is None or num_epochs == 0:
            self.save(save_dir / "best_model", overwrite=True)
        return best

    def _build_optimizer(
        self, name, lr, weight_decay, num_epochs, steps_per_epoch, warmup_steps, decay_epochs
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        assert self.net is not None
        params = [p for p in self.net.parameters() if p.requires_grad]
        if name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=lr, momentum=0.9, weight_decay=weight_decay
            )
        elif name == "adam":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
        total = max(num_epochs * steps_per_epoch, 1)
        milestones = [e * steps_per_epoch for e in (decay_epochs or [])]

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            if decay_epochs:
                return 0.1 ** sum(step >= m for m in milestones)
            t = (step - warmup_steps) / max(total - warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    # -- saving / loading ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``model.yml`` content of this model."""
        return {
            "task": self.task,
            "architecture": self.architecture,
            "model_class": type(self).__name__,
            "num_classes": self.num_classes,
            "labels": self.labels,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "model_kwargs": self.model_kwargs,
            "status": self.status,
            "metric_name": self.metric_name,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
        }

    def save(self, save_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model directory as one unit: weights, pruning plan (if pruned), ``model.yml``.

        ``save_dir`` must be new or empty; an existing model directory is replaced whole with
        ``overwrite=True`` (a kill never leaves a mix); a directory holding other files is never
        replaced (see :mod:`slimkit._outputs`).
        """
        if self.net is None:
            raise ValueError(
                "a Quant model has no torch weights to save; copy its directory instead"
            )
        save_dir = Path(save_dir)
        with modeldir.writing(save_dir, overwrite) as tmp:
            modeldir.save_weights(self.net, tmp)
            if self.prune_plan is not None:
                # torch-pruning is heavy: slimkit.prune loads only when a pruned model is saved
                from slimkit.prune import save_plan

                save_plan(self.prune_plan, tmp / modeldir.PLAN)
            modeldir.write_model_yml(tmp, self.info())
        return save_dir

    def load_weights_from(self, model_dir: str | os.PathLike) -> None:
        """Initialise this model's net from another model directory (plan re-applied when pruned)."""
        info = modeldir.read_model_yml(model_dir)
        if info["status"] == "Quant":
            raise ValueError(
                f"{str(model_dir)!r} is a Quant model; pretrain_weights needs FP32 weights"
            )
        other = {k: info.get(k) for k in ("architecture", "num_classes")}
        other["model_kwargs"] = info.get("model_kwargs", {})
        if other["architecture"] != self.architecture:
            raise ValueError(
                f"pretrain_weights {str(model_dir)!r} is a {other['architecture']!r} model, "
                f"this model is {self.architecture!r}"
            )
        if other["num_classes"] != self.num_classes:
            raise ValueError(
                f"pretrain_weights {str(model_dir)!r} has {other['num_classes']} classes, "
                f"this model has {self.num_classes}"
            )
        if other["model_kwargs"] != self.model_kwargs:
            raise ValueError(
                f"pretrain_weights {str(model_dir)!r} was built with {other['model_kwargs']}, "
                f"this model with {self.model_kwargs}; create the model with the same arguments"
            )
        self.net, self.prune_plan = modeldir.restore_net(
            Path(model_dir), info["status"], self._build_net(), self.example_inputs()
        )
        self.status = info["status"]
        self.metrics = dict(info.get("metrics", {}))


def _as_list(values: Any) -> list[Any] | None:
    """``values`` as a list when it is a non-string iterable (list, tuple, numpy array)."""
    if isinstance(values, (str, bytes)):
        return None
    try:
        return list(values)
    except TypeError:
        return None


def _channel_values(values: Any, name: str, positive: bool = False) -> tuple[float, ...]:
    """``mean``/``std``: three finite numbers (R, G, B); std > 0."""
    items = _as_list(values)
    if items is None or len(items) != 3:
        raise ValueError(f"{name} must be three numbers (R, G, B), got {values!r}")
    return tuple(
        check_float(v, name, 0.0 if positive else None, None, low_open=positive) for v in items
    )


def _label_names(labels: Any, num_classes: int) -> list[str]:
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


def _checked_spec(architecture: str, task: str) -> ModelSpec:
    """The spec of ``architecture``; a model of another task is refused."""
    spec = model_spec(architecture)
    if task and spec.task is not None and spec.task != task:
        raise ValueError(
            f"{architecture!r} is a {spec.task!r} model, not {task!r}; "
            f"use slimkit.{spec.task} or create_task({architecture!r}, ...)"
        )
    return spec
