"""The PaddleX-like task API shared by Classifier, Detector and Segmenter.

A task object owns an ``nn.Module`` (``.net``) built from the model registry plus everything needed to
train, evaluate, predict and save it: input size, normalisation, class names, status
(``Normal`` | ``Prune`` | ``Quant``) and, when pruned, the pruning plan. Subclasses supply the loss, the
metric meter and the prediction post-processing.
"""

from __future__ import annotations

import functools
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

from slimkit._checks import MAX_CLASSES, check_int
from slimkit._io import recover_all
from slimkit.data import collate_fn
from slimkit.data._base import read_image
from slimkit.data.transforms import default_transforms
from slimkit.models import ModelSpec, create_model, model_spec
from slimkit.models.pretrained import BUILTIN, load_builtin
from slimkit.tasks import checks, distributed, modeldir
from slimkit.tasks.budget import (
    PruneRecord,
    adaptive_bn,
    check_prune_options,
    evaluator,
    prune_with_sensitivities,
    report_final,
)
from slimkit.tasks.logging import log
from slimkit.tasks.optim import DEFAULT_LR, build_optimizer
from slimkit.tasks.probe import short_finetune
from slimkit.tasks.pruning import prune_net, resolve_sensitivities
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
        self.num_classes = check_int(num_classes, "num_classes", 1, MAX_CLASSES)
        spec = _checked_spec(architecture, self.task)
        if input_size is None:
            input_size = spec.input_size
        if input_size is None:
            raise ValueError(f"model {architecture!r} has no default input_size; pass input_size=")
        self.architecture = architecture
        self.input_size = checks.input_hw(input_size)
        self.mean = checks.channel_values(spec.mean if mean is None else mean, "mean")
        self.std = checks.channel_values(spec.std if std is None else std, "std", positive=True)
        self.labels = checks.label_names(labels, self.num_classes)
        self.model_kwargs = dict(model_kwargs)
        checks.check_net_size(architecture, self._net_kwargs())
        self.source_dir: Path | None = None  # the model directory load_model read it from
        self.status = "Normal"
        self.prune_plan: dict[str, Any] | None = None
        self.prune_record: PruneRecord | None = None  # how train/prune chose the ratios
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
    def prepare_training(self, train_dataset: Any) -> None:
        """Called by ``train`` before the first step (the segmenter's class weights); no-op here."""

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
        checks.check_dataset(dataset, batch_size=batch_size)
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
    @distributed.meter_loop  # ranks under torchrun may share it (tasks/distributed.py)
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
        prune_mode: str = "budget",
        pruned_flops: float | None = None,
        eval_dataset: Any = None,
        bn_dataset: Any = None,
        criterion: str | None = None,
        round_to: int | None = 8,
        log_fn: Callable[[str], None] = log,
        verify: bool = False,
        finetune_probe: Callable[[nn.Module], None] | None = None,
    ) -> float | dict[str, float]:
        """Physically prune ``net`` (keeping the most important channels); status becomes Prune.

        Give either ``ratios`` or ``sensitivities_file``. Used by ``train`` (method 1/2),
        ``slim.prune`` and ``slimkit prune``.

        Args:
            ratios: One ratio for every prunable group, or ``{group: ratio}``.
            sensitivities_file: Method 1: a sensitivity JSON; method 2: ``"DEFAULT"`` (built-in).
                Groups are pruned at the largest ratio within ``eval_metric_loss`` (per group),
                checked on ``eval_dataset`` as ``prune_mode`` says.
            eval_metric_loss: Budget of relative metric loss, in (0, 1).
            prune_mode: ``"budget"`` (default; needs ``eval_dataset``) or ``"per_group"``
                (PaddleX's rule); see :mod:`slimkit.tasks.budget`.
            pruned_flops: Remove this fraction of the FLOPs (0.4 keeps 60 %) instead of
                choosing by the loss budget (the loss is measured and warned about).
            eval_dataset: The evaluation set the losses are measured on.
            bn_dataset: Training images that re-estimate each pruned candidate's BatchNorm
                statistics before it is measured (``adaptive_bn``); ``train`` passes its own.
            criterion: Channel importance (see ``slimkit.prune.CRITERIA``); None: ``"l1"`` for
                ``ratios``, the sensitivity file's own criterion for ``sensitivities_file`` (another
                criterion than the file's is a ``ValueError``).
            round_to: Kept channels of each group rounded up to a multiple of this (None: exact);
                odd channel counts can run slower than the original (docs/benchmarks.md, "Round
                pruned ...").
            log_fn: Receives the log lines: groups, params and FLOPs before and after, losses.
            verify: Raise if a pruned group differs from the original with the same channels
                zeroed (else such groups are left unpruned with a warning); ratios only.
            finetune_probe: In ``budget`` mode, fine-tunes in place, briefly, a candidate whose
                loss after BN re-estimation is over the limit, to judge it again
                (``train`` passes ``slimkit.tasks.probe.short_finetune`` with its own settings);
                None: candidates are judged after BN re-estimation only.

        Returns:
            The ratios applied (for ``sensitivities_file``, the chosen ``{group: ratio}``).

        Raises:
            ValueError: a Quant model, both or neither of ``ratios``/``sensitivities_file``, a
                sensitivity file that does not belong to this model, or bad pruning options.
        """
        if self.net is None:
            raise ValueError("a Quant model cannot be pruned; prune the FP32 model, then quantize")
        if (ratios is None) == (sensitivities_file is None):
            raise ValueError("give either ratios or sensitivities_file to prune")
        x = self.example_inputs().to(next(self.net.parameters()).device)
        if sensitivities_file is None:
            if pruned_flops is not None:
                raise ValueError("pruned_flops picks ratios from sensitivities_file; pass one")
            assert ratios is not None
            self.net, self.prune_plan, summary = prune_net(
                self.net, ratios, x, self.prune_plan, criterion or "l1", round_to, verify
            )
            self.status = "Prune"
            what = f"{len(ratios)} groups" if isinstance(ratios, Mapping) else f"ratio {ratios}"
            log_fn(f"pruned {what}: {summary}")
            return dict(ratios) if isinstance(ratios, Mapping) else ratios
        return self._prune_by_sensitivities(
            sensitivities_file,
            {
                "eval_metric_loss": eval_metric_loss,
                "mode": prune_mode,
                "pruned_flops": pruned_flops,
                "criterion": criterion,
                "round_to": round_to,
            },
            (eval_dataset, bn_dataset),
            x,
            log_fn,
            finetune_probe,
        )

    def _prune_by_sensitivities(
        self,
        sensitivities_file: str | os.PathLike,
        options: dict[str, Any],
        datasets: tuple[Any, Any],
        x: torch.Tensor,
        log_fn: Callable[[str], None],
        probe: Callable[[nn.Module], None] | None = None,
    ) -> dict[str, float]:
        """Method 1/2 pruning (see ``prune``); keeps the record written to ``model.yml``."""
        assert self.net is not None
        eval_dataset, bn_dataset = datasets
        check_prune_options(**options, has_eval=eval_dataset is not None)
        evaluate = None if eval_dataset is None else evaluator(self, eval_dataset)
        chosen, self.prune_record = prune_with_sensitivities(
            self.net,
            (sensitivities_file, self.sensitivity_key, self.architecture),
            x,
            self.prune_plan,
            options,
            evaluate,
            self.metric_name,
            log_fn,
            None if bn_dataset is None else adaptive_bn(self.make_loader(bn_dataset, 32, True)),
            probe,
        )
        if chosen.ratios:
            self.net, self.prune_plan, self.status = chosen.net, chosen.plan, "Prune"
            log_fn(f"pruned {len(chosen.ratios)} groups: {chosen.summary}")
        self.metrics = dict(chosen.metrics or {})  # the pretrain model's are no longer this one's
        return dict(chosen.ratios)

    # -- training ------------------------------------------------------------------------------
    @distributed.in_job  # under torchrun: DDP, sharded data, rank-0 outputs (tasks/distributed.py)
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
        optimizer: str = "adam",
        learning_rate: float | None = None,
        warmup_steps: int = 0,
        lr_decay_epochs: Sequence[int] | None = None,
        weight_decay: float = 4e-5,
        sensitivities_file: str | os.PathLike | None = None,
        eval_metric_loss: float = 0.05,
        prune_mode: str = "budget",
        pruned_flops: float | None = None,
        prune_round_to: int | None = 8,
        num_workers: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ) -> dict[str, float]:
        """Train (or, with ``sensitivities_file``, prune then fine-tune) the model.

        Args:
            num_epochs: Passes over ``train_dataset``.
            train_dataset: A slimkit dataset of this task (its transforms, or the task defaults).
            train_batch_size: Batch size (under torchrun the global batch, split over the ranks).
            eval_dataset: Evaluated every ``save_interval_epochs``; keeps ``save_dir/best_model``.
            save_interval_epochs: Evaluate and save ``save_dir/epoch_N`` every this many epochs.
            log_interval_steps: Update the progress bar's loss every this many steps.
            save_dir: Output directory.
            pretrain_weights: A model directory (Normal or Prune) whose weights initialise the net,
                or ``"BUILTIN"``: slimkit's own pretrained weights for this architecture and width
                (heads excluded; see ``slimkit.models.pretrained``).
            optimizer: ``"adam"`` (AdamW) or ``"sgd"`` (momentum 0.9). With ``"adam"`` the
                weights of bias-free convolutions (all followed by BatchNorm, so scale-invariant)
                take the same *relative* step whatever their scale (see ``slimkit.tasks.optim``).
            learning_rate: Peak learning rate (None: 2e-3 for adam, 0.025 for sgd).
            warmup_steps: Linear warm-up steps.
            lr_decay_epochs: Piecewise decay (×0.1) at these epochs; cosine decay when None.
            weight_decay: L2 weight decay.
            sensitivities_file: Method 1: a sensitivity JSON; method 2: ``"DEFAULT"`` (built-in).
                The net (trained weights) is pruned under ``eval_metric_loss`` before training;
                after it, the best model's metric and its relative loss against the unpruned
                model are logged and written to ``model.yml`` (``pruning:``), with a
                :class:`~slimkit.tasks.budget.BudgetWarning` when the loss exceeds the budget.
            eval_metric_loss: Budget of relative metric loss of the pruned model, in (0, 1).
            prune_mode: ``"budget"`` (default; needs ``eval_dataset``): the ratios are backed
                off until the pruned model loses at most ``loss_limit(eval_metric_loss)``
                after BN re-estimation or, failing that, after a short fine-tune (at most
                ``slimkit.tasks.probe.PROBE_STEPS`` steps with these training settings; the
                chosen model keeps it). ``"per_group"``: PaddleX's rule; see ``prune``.
            pruned_flops: Remove this fraction of the FLOPs (0.4 keeps 60 %) instead of choosing
                by the loss budget (losses are reported and warned about, never backed off).
            prune_round_to: Kept channels of each pruned group rounded up to a multiple of this
                (SIMD-friendly shapes; None keeps the exact ratios).
            num_workers: DataLoader workers.
            progress: Show progress bars and per-epoch lines.
            overwrite: Replace the model directories at ``save_dir/best_model``/``epoch_N`` (else
                refused before training starts). Inputs are never written over.

        Returns:
            The best evaluation metrics (empty when no ``eval_dataset``).
        """
        save_dir = checks.check_train_call(self.source_dir, locals())  # numbers, datasets, outputs
        if sensitivities_file is not None:
            resolve_sensitivities(self.sensitivity_key, sensitivities_file)  # exists, or DEFAULT
            check_prune_options(
                eval_metric_loss, prune_mode, pruned_flops, has_eval=eval_dataset is not None
            )
        elif pruned_flops is not None:
            raise ValueError("pruned_flops picks ratios from sensitivities_file; pass one")
        if pretrain_weights is not None and str(pretrain_weights) == BUILTIN:
            self.load_builtin_weights()
        elif pretrain_weights is not None:
            self.load_weights_from(pretrain_weights)
        lr = DEFAULT_LR.get(optimizer, 0.0) if learning_rate is None else learning_rate
        self.prepare_training(train_dataset)  # before pruning: the short fine-tunes use it
        prune = None
        if sensitivities_file is not None:
            prune = functools.partial(
                self.prune,
                sensitivities_file=sensitivities_file,
                eval_metric_loss=eval_metric_loss,
                prune_mode=prune_mode,
                pruned_flops=pruned_flops,
                eval_dataset=eval_dataset,
                bn_dataset=train_dataset,
                round_to=prune_round_to,
                finetune_probe=short_finetune(
                    self, train_dataset, train_batch_size, optimizer, lr, weight_decay
                ),
            )
        distributed.same_net(self, prune)  # rank 0 prunes; every rank starts from rank 0's net
        loader = distributed.train_loader(self, train_dataset, train_batch_size, num_workers)
        opt, sched = self._build_optimizer(
            optimizer,
            lr,
            weight_decay,
            num_epochs,
            len(loader),
            warmup_steps,
            lr_decay_epochs,
        )
        if distributed.is_main():
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
            progress and distributed.is_main(),
        )
        if sensitivities_file is not None and self.prune_record and distributed.is_main():
            report_final(self.prune_record, best or self.metrics, log)
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
        net, save = distributed.wrap(self.net, self.device), distributed.on_main(self.save)
        best: dict[str, float] = {}
        for epoch in range(1, num_epochs + 1):
            net.train()
            distributed.set_epoch(loader, epoch)
            start, running = time.time(), 0.0
            bar = tqdm(
                loader, desc=f"epoch {epoch}/{num_epochs}", disable=not progress, leave=False
            )
            for step, (images, targets) in enumerate(bar, 1):
                loss = self.compute_loss(net(images.to(self.device)), targets)
                value = distributed.mean_loss(loss)  # over the ranks: all stop together
                if not torch.isfinite(value):
                    raise RuntimeError(
                        f"loss became {value.item()} at epoch {epoch} step {step}; "
                        "lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += value.item()
                if step % log_interval == 0 or step == len(loader):
                    bar.set_postfix(
                        loss=f"{running / step:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}"
                    )
            distributed.sync_net(self.net)  # every rank: rank 0's BN statistics
            line = (
                f"epoch {epoch}/{num_epochs} loss {running / max(len(loader), 1):.4f} "
                f"time {time.time() - start:.1f}s"
            )
            if epoch % save_interval == 0 or epoch == num_epochs:
                if eval_dataset is not None:
                    self.metrics = distributed.evaluate(self, eval_dataset)
                    line += " " + " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
                    if not best or self.metrics[self.metric_name] > best[self.metric_name]:
                        best = dict(self.metrics)
                        save(save_dir / "best_model", overwrite=True)  # checked in train()
                save(save_dir / f"epoch_{epoch}", overwrite=True)
            if progress:
                log(line)
        if eval_dataset is None or num_epochs == 0:
            save(save_dir / "best_model", overwrite=True)
        return best

    def _build_optimizer(
        self,
        name: str,
        lr: float,
        weight_decay: float,
        num_epochs: int,
        steps_per_epoch: int,
        warmup_steps: int,
        decay_epochs: Sequence[int] | None,
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        assert self.net is not None
        return build_optimizer(
            self.net,
            name,
            lr,
            weight_decay,
            total_steps=num_epochs * steps_per_epoch,
            warmup_steps=warmup_steps,
            milestones=[e * steps_per_epoch for e in (decay_epochs or [])],
        )

    # -- saving / loading ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``model.yml`` content of this model (``pruning``: see ``PruneRecord.to_dict``)."""
        info = {
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
        if self.prune_record is not None:
            info["pruning"] = self.prune_record.to_dict(self.metrics)
        return info

    def save(self, save_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model directory as one unit: weights, pruning plan (if pruned), ``model.yml``.

        ``save_dir`` must be new or empty; a model directory there is replaced whole only with
        ``overwrite=True``, other files never (see :mod:`slimkit._outputs`).
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

    def load_builtin_weights(self) -> dict[str, Any]:
        """Initialise the net, heads aside, from slimkit's built-in pretrained weights.

        Returns:
            The manifest entry loaded (``file``, ``trained_on``, ``metrics``, ...).

        Raises:
            ValueError: This is not a fresh (Normal, FP32) model, or no built-in weights ship for
                its architecture and options.
        """
        if self.net is None or self.status != "Normal":
            raise ValueError(
                f"built-in weights initialise a fresh model; this one is {self.status}"
            )
        entry = load_builtin(self.net, self.architecture, self.model_kwargs)
        log(f"initialised from built-in weights {entry['file']} ({entry['trained_on']})")
        return entry

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


def _checked_spec(architecture: str, task: str) -> ModelSpec:
    """The spec of ``architecture``; a model of another task is refused."""
    spec = model_spec(architecture)
    if task and spec.task is not None and spec.task != task:
        raise ValueError(
            f"{architecture!r} is a {spec.task!r} model, not {task!r}; "
            f"use slimkit.{spec.task} or create_task({architecture!r}, ...)"
        )
    return spec
