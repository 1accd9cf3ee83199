"""A short fine-tune of a pruned candidate: what budget-true pruning judges when BN re-estimation
alone is not enough.

A pruned net whose metric collapsed right after pruning often recovers most of it within the
first few hundred steps of fine-tuning; how much it recovers is what decides whether the full
fine-tune can keep the budget. :func:`short_finetune` returns a function that trains a candidate
net in place for ``steps`` optimizer steps with the user's own optimizer, learning rate and weight
decay (cosine decay to zero over those steps, no warm-up), on the training set, in a fixed order
(torch's random generator seeded 0 meanwhile, the caller's random state left as it was).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit._utils import seeded, swapped
from slimkit.tasks.optim import build_optimizer

ProbeFn = Callable[[nn.Module], None]

PROBE_STEPS = 100  # optimizer steps of the short fine-tune (at most one epoch)


def short_finetune(
    task: Any,
    dataset: Any,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    weight_decay: float,
    steps: int = PROBE_STEPS,
) -> ProbeFn:
    """A function that fine-tunes a candidate net of ``task`` in place for a few steps.

    Args:
        task: The task (its ``make_loader`` and ``compute_loss``; ``task.net`` is swapped for the
            candidate meanwhile, so task-level loss settings apply, and restored).
        dataset: The training set.
        batch_size: Training batch size.
        optimizer: ``"adam"`` or ``"sgd"`` (see :func:`slimkit.tasks.optim.build_optimizer`).
        learning_rate: Peak learning rate (the fine-tune's own).
        weight_decay: Weight decay.
        steps: Optimizer steps, at most one epoch (``len(loader)``).
    """

    def probe(net: nn.Module) -> None:
        loader = task.make_loader(dataset, batch_size, True)
        total = max(1, min(steps, len(loader)))
        opt, sched = build_optimizer(net, optimizer, learning_rate, weight_decay, total)
        device = next(net.parameters()).device
        try:
            with swapped(task, "net", net), seeded(0):
                net.train()
                for images, targets in itertools.islice(loader, total):
                    loss = task.compute_loss(net(images.to(device)), targets)
                    if not torch.isfinite(loss):
                        break  # a diverging candidate: judged as it stands
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
        finally:
            net.eval()

    return probe
