"""``BaseTask.train`` under ``torchrun``: DistributedDataParallel, sharded data, rank-0 outputs.

``torchrun --nproc_per_node N [--nnodes M ...] slimkit train ...`` (or a script calling
``model.train``) starts N processes that join one job (:func:`slimkit._distributed.process_group`:
gloo on CPU, nccl when CUDA). Then:

* **Pruning** (``sensitivities_file``) runs on rank 0 alone; it broadcasts the plan, status,
  record and metrics, and every other rank rebuilds the same pruned architecture from the plan.
  Then every rank takes rank 0's weights and buffers, before the optimizer is built.
* **Data**: ``train_batch_size`` is the *global* batch: each rank takes
  ``train_batch_size / world_size`` samples a step from its :class:`DistributedSampler` shard
  (reshuffled every epoch by ``set_epoch``), so the learning rate and steps per epoch mean what
  they mean in one process. DDP averages the gradients.
* **BatchNorm**: each rank normalises with its own batch's statistics (no SyncBN); the running
  statistics are rank 0's (DDP broadcasts buffers at each forward), and they are what is saved.
* **Loss**: the logged loss is the mean over ranks, and a non-finite loss stops every rank at once.
* **Evaluation**: rank *r* evaluates the *r*-th of N consecutive slices of the evaluation set and
  the meters are merged in rank order (:meth:`ClassificationMeter.merge` adds correct/total,
  :meth:`SegMeter.merge` the confusion matrix, :meth:`VOCMeter.merge` appends the images in
  order), so every rank gets the metric one process computes on the whole set. What slimkit
  cannot merge (COCO evaluation, a user's own meter or ``evaluate``) runs on rank 0 alone and its
  metrics are broadcast.
* **Outputs**: only rank 0 writes model directories, logs and shows progress.

Outside torchrun (``WORLD_SIZE`` unset or 1) every function here does what one process did before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from slimkit._distributed import all_gather, process_group, world
from slimkit.data import collate_fn
from slimkit.tasks.metrics import ClassificationMeter, SegMeter, VOCMeter

__all__ = [
    "evaluate",
    "in_job",
    "is_main",
    "mean_loss",
    "on_main",
    "same_net",
    "set_epoch",
    "sync_net",
    "train_loader",
    "wrap",
]

F = TypeVar("F", bound=Callable[..., Any])
MERGEABLE = (ClassificationMeter, SegMeter, VOCMeter)


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    return world()[0] == 0


def on_main(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` on rank 0 (or in one process); a no-op returning None on the other ranks."""
    return function if is_main() else lambda *args, **kwargs: None


def in_job(method: F) -> F:
    """Run a task method inside the torchrun job, if any (``process_group`` on ``self.device``)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with process_group(self.device):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def same_net(task: Any, prune: Callable[[], Any] | None = None) -> None:
    """Give every rank rank 0's net before training: pruned by ``prune()`` (if given) on rank 0
    alone, and with rank 0's weights and buffers.

    The other ranks rebuild the pruned architecture from rank 0's plan (``apply_plan`` on a fresh
    net) and take its status, record and metrics. The weights must agree *before* the optimizer is
    built (AdamW's per-tensor rates depend on them, ``tasks/optim.py``), not only once DDP wraps
    the net. An error of ``prune()`` on rank 0 is raised on every rank.
    """
    rank, size = world()
    if size == 1:
        if prune is not None:
            prune()
        return
    if prune is not None:
        _prune_on_main(task, prune, rank)
    task.net.to(task.device)  # nccl broadcasts CUDA tensors
    sync_net(task.net)


def _prune_on_main(task: Any, prune: Callable[[], Any], rank: int) -> None:
    state: tuple[str | None, Any] = (None, None)
    if rank == 0:
        try:
            prune()
            state = (None, (task.prune_plan, task.status, task.prune_record, task.metrics))
        except Exception as e:
            _broadcast((f"{type(e).__name__}: {e}", None))
            raise
    error, result = _broadcast(state)
    if error is not None:
        raise RuntimeError(f"pruning failed on rank 0: {error}")
    if rank == 0:
        return
    plan, task.status, task.prune_record, task.metrics = result
    if plan is not None and plan != task.prune_plan:
        from slimkit.prune import apply_plan  # torch-pruning is heavy: only when pruning

        task.net = apply_plan(task._build_net(), plan, task.example_inputs())
        task.prune_plan = plan


def _shared_seed() -> int:
    """One random seed, drawn by rank 0 from torch's generator, on every rank."""
    return int(_broadcast(int(torch.randint(0, 2**31 - 1, ()).item())))


def train_loader(task: Any, dataset: Any, batch_size: int, num_workers: int) -> DataLoader:
    """The training loader: ``task.make_loader`` in one process; under torchrun a shard of
    ``batch_size / world_size`` samples a step from a shuffled :class:`DistributedSampler`.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the number of processes.
    """
    rank, size = world()
    if size == 1:
        return task.make_loader(dataset, batch_size, True, num_workers)
    if batch_size % size:
        raise ValueError(
            f"train_batch_size {batch_size} is the global batch and must be a multiple of the "
            f"{size} processes; use e.g. {max(batch_size // size, 1) * size}"
        )
    per_rank = batch_size // size
    ds = task.make_loader(dataset, per_rank, True, num_workers).dataset  # checks + transforms
    sampler: DistributedSampler[Any] = DistributedSampler(
        ds, size, rank, shuffle=True, seed=_shared_seed()
    )
    return DataLoader(
        ds,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=len(sampler) > per_rank,  # every rank: the same number of steps
        collate_fn=collate_fn(task.task),
        num_workers=num_workers,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed loader for ``epoch`` (no-op for a plain one)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in DistributedDataParallel under torchrun (copies rank 0's weights), else ``net``."""
    if world()[1] == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def sync_net(net: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts the buffers at the start of each training forward, so after an epoch's last
    step each rank holds the statistics of its own last batch; this makes every rank's net rank
    0's again (what rank 0 saves) before evaluating or returning. No-op in one process.
    """
    if world()[1] == 1:
        return
    for tensor in net.state_dict().values():
        dist.broadcast(tensor, src=0)


def mean_loss(loss: torch.Tensor) -> torch.Tensor:
    """The loss averaged over the ranks (detached): what a step of the global batch logs."""
    value = loss.detach()
    if world()[1] == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world()[1]


def _slice(n: int, rank: int, size: int) -> range:
    """The ``rank``-th of ``size`` consecutive, near-equal slices of ``range(n)``."""
    return range(rank * n // size, (rank + 1) * n // size)


def merged_metrics(meter: Any, shares: Iterable[Any]) -> dict[str, Any]:
    """The metrics of a task ``meter`` whose ``.meter`` becomes ``shares`` merged in order."""
    first, *rest = shares
    for other in rest:
        first.merge(other)
    meter.meter = first
    return {k: v for k, v in meter.compute().items() if not isinstance(v, (list, dict))}


@torch.inference_mode()
def _shard_update(task: Any, meter: Any, dataset: Any, batch_size: int) -> None:
    """Update ``meter`` with this rank's slice of ``dataset`` (possibly empty)."""
    rank, size = world()
    checked = task.make_loader(dataset, batch_size).dataset  # checks + eval transforms
    loader = DataLoader(
        Subset(checked, _slice(len(checked), rank, size)),
        batch_size=batch_size,
        collate_fn=collate_fn(task.task),
    )
    for images, targets in loader:
        meter.update(task._forward(images), targets)


def meter_loop(evaluate: F) -> F:
    """Mark an ``evaluate`` method as slimkit's own meter loop, which ranks may share.

    ``BaseTask.evaluate`` and ``Detector.evaluate`` carry the mark; a subclass that overrides
    ``evaluate`` without it is evaluated on rank 0 alone.
    """
    evaluate.__dict__["_slimkit_meter_loop"] = True
    return evaluate


def _shardable(task: Any, meter: Any, dataset: Any) -> bool:
    """Whether ``task.evaluate`` is slimkit's meter loop over a meter slimkit can merge (not a
    subclass's or instance's own ``evaluate``, nor a COCO evaluation, nor a user's meter)."""
    method = getattr(type(task), "evaluate", None)
    plain = "evaluate" not in vars(task) and getattr(method, "_slimkit_meter_loop", False)
    coco = hasattr(dataset, "ann_file")  # Detector.evaluate adds COCO AP on the whole set
    return plain and not coco and isinstance(getattr(meter, "meter", None), MERGEABLE)


def evaluate(task: Any, dataset: Any, batch_size: int = 8) -> dict[str, Any]:
    """``task.evaluate(dataset)``, the work shared by the ranks under torchrun (module docstring);
    every rank returns the same metrics."""
    if world()[1] == 1:
        return task.evaluate(dataset, batch_size=batch_size)
    if task.net is not None:
        task.net.to(task.device).eval()
    meter = task.make_meter()
    if not _shardable(task, meter, dataset):
        metrics = task.evaluate(dataset, batch_size=batch_size) if is_main() else None
        return _broadcast(metrics)
    _shard_update(task, meter, dataset, batch_size)
    return merged_metrics(meter, all_gather(meter.meter))
