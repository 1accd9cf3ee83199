"""Budget-true pruning: the ratios chosen from a sensitivity file, and the promise kept.

``eval_metric_loss`` is a promise about the model the user gets. PaddleSlim picks each group's ratio
as if it were pruned alone (``prune_mode="per_group"``); the losses of all groups together are
larger. With ``prune_mode="budget"`` (the default) the combined pruned model is judged before the
fine-tune: its BatchNorm statistics are re-estimated on training images (:func:`adaptive_bn`) and
it is evaluated; when that relative loss exceeds :func:`loss_limit` —
``min(LOSS_FACTOR × eval_metric_loss, LOSS_CAP)`` — and ``train`` gave a short fine-tune
(``probe``, :func:`slimkit.tasks.probe.short_finetune`: at most one epoch, the fine-tune's own
optimizer and learning rate), the candidate is fine-tuned that long and evaluated again: it passes
when either loss is within the limit. A converged net can lose most of its metric when many groups
are pruned together and still win it back within an epoch (the demo's detector: 0.78 after BN
re-estimation, 0.27 after one epoch, 0.06 after six), so the loss before any training says too
little; the loss after a short fine-tune is the better predictor. A candidate that fails makes
the per-group budgets scale down together — the ratios become
``get_ratios_by_loss(sens, s × eval_metric_loss)`` — and ``s`` is bisected in (0, 1] for the
largest scale that passes (``BISECTION_STEPS`` halvings; a set of ratios met before is not judged
again). If no scale passes, nothing is pruned. The chosen candidate keeps its short fine-tune's
weights. ``per_group`` is measured and reported the same way when an evaluation set is given, but
never backed off. ``pruned_flops`` replaces the loss budget by a FLOPs target (the loss is then
reported and warned about, never backed off).

After fine-tuning, ``train`` logs the final metric and its relative loss against the unpruned model
(:func:`report_final`) and every model directory it writes carries the :class:`PruneRecord` in
``model.yml`` (``pruning:``); a loss over the budget raises a :class:`BudgetWarning`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from slimkit._utils import eval_mode, seeded, swapped
from slimkit.tasks.probe import ProbeFn
from slimkit.tasks.pruning import (
    DEFAULT,
    Candidate,
    check_budget,
    load_model_sensitivities,
    predicted_losses,
    prune_counted,
    ratios_at,
    relative_loss,
    resolve_sensitivities,
)

PRUNE_MODES = ("budget", "per_group")
# the combined model's relative loss before fine-tuning may be at most
# min(LOSS_FACTOR × eval_metric_loss, LOSS_CAP); the rule: README "Keeping the budget"; the
# measurements behind the numbers: docs/benchmarks.md
LOSS_FACTOR = 3.0
LOSS_CAP = 0.5
BISECTION_STEPS = 5  # scale resolution 1/32: at most 1 + 5 evaluations of a pruned model
ADAPTIVE_BN_IMAGES = 256  # training images that re-estimate BatchNorm statistics of a candidate
FLOPS_TOLERANCE = 0.01  # |removed - pruned_flops| accepted by the FLOPs search
FLOPS_STEPS = 20

EvaluateFn = Callable[[nn.Module], dict[str, float]]
RecalibrateFn = Callable[[nn.Module], None]
LogFn = Callable[[str], None]
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class BudgetWarning(UserWarning):
    """A pruned model lost more of its metric than the ``eval_metric_loss`` it was pruned under."""


def loss_limit(eval_metric_loss: float) -> float:
    """The most relative loss a pruned model may show before fine-tuning (see the module doc)."""
    return min(LOSS_FACTOR * eval_metric_loss, LOSS_CAP)


def evaluator(task: Any, eval_dataset: Any) -> EvaluateFn:
    """``task.evaluate(eval_dataset)`` of another net, put in ``task.net`` meanwhile (restored)."""

    def evaluate(net: nn.Module) -> dict[str, float]:
        with swapped(task, "net", net):
            return dict(task.evaluate(eval_dataset))

    return evaluate


def adaptive_bn(
    batches: Iterable[tuple[Any, Any]], images: int = ADAPTIVE_BN_IMAGES
) -> RecalibrateFn:
    """A function that re-estimates a net's BatchNorm running statistics on training images.

    Pruning many groups together shifts every later layer's activations, so the BatchNorm
    statistics learnt on the unpruned net no longer fit and the pruned net can collapse to chance
    although fine-tuning recovers it within a few epochs (a MobileNetV2 x0.5 at 48 px, acc1 0.92,
    per-group choice at eval_metric_loss 0.1: relative loss 0.73 before, 0.34 after
    re-estimation, 0.00 after three epochs of fine-tuning). EagleEye (Li et al., ECCV 2020,
    "adaptive BN") showed that the metric after re-estimation predicts the fine-tuned one far
    better. The first ``images`` images of ``batches`` are read once (with torch's random
    generator seeded 0 meanwhile, so the draw is reproducible) and reused for every candidate;
    only the BatchNorm layers run in training mode (cumulative averages, momentum restored after),
    everything else in eval mode without gradients.
    """
    kept: list[torch.Tensor] = []

    def recalibrate(net: nn.Module) -> None:
        if not kept:
            # a fixed draw (shuffle, augmentation) that leaves the caller's random state as it was
            with seeded(0):
                for inputs, _ in batches:
                    kept.append(inputs)
                    if sum(len(t) for t in kept) >= images:
                        break
        norms = [m for m in net.modules() if isinstance(m, BATCH_NORMS)]
        if not norms or not kept:
            return
        device = next(net.parameters()).device
        momenta = [m.momentum for m in norms]
        with torch.no_grad(), eval_mode(net):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over all batches
                m.train()
            for inputs in kept:
                net(inputs.to(device))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    return recalibrate


class SensitivityPruning:
    """The net pruned at a loss budget of a sensitivity record, each distinct set of ratios once.

    :meth:`at` prunes a copy of the net at ``get_ratios_by_loss(record, budget)`` and counts it;
    :meth:`loss` re-estimates the candidate's BatchNorm statistics (``recalibrate``, when given),
    evaluates it (once) and returns its relative loss against the unpruned net's metric;
    :meth:`passes` judges it against a limit, after a short fine-tune (``probe``) if need be.
    """

    recalibrate: RecalibrateFn | None = None
    probe: ProbeFn | None = None

    def __init__(
        self,
        net: nn.Module,
        sens: dict[str, Any],
        example_inputs: torch.Tensor,
        previous_plan: Any,
        criterion: str,
        round_to: int | None,
        evaluate: EvaluateFn | None,
        metric_name: str,
    ) -> None:
        from slimkit.prune.counting import (
            count_flops,
            count_params,
        )  # heavy (torch-pruning): loaded when pruning runs

        self.net, self.sens, self.example_inputs = net, sens, example_inputs
        self.previous_plan, self.criterion, self.round_to = previous_plan, criterion, round_to
        self.evaluate, self.metric_name = evaluate, metric_name
        self.evaluations = 0
        self.probes = 0
        sizes = (count_params(net), count_flops(net, example_inputs))
        self.unpruned = Candidate({}, net, previous_plan, sizes, sizes)
        self.baseline: float | None = None
        if evaluate is not None:
            self.unpruned.metrics = evaluate(net)
            self.baseline = float(self.unpruned.metrics[metric_name])
            if not (math.isfinite(self.baseline) and self.baseline > 0):
                raise ValueError(
                    f"the unpruned model's {metric_name} is {self.baseline} on the evaluation set: "
                    "a relative loss needs a positive metric; train the model first, or prune "
                    "with prune_mode='per_group' and no eval_dataset"
                )
        self._seen: dict[tuple[tuple[str, float], ...], Candidate] = {}

    def at(self, budget: float) -> Candidate:
        """The net pruned at the ratios ``get_ratios_by_loss`` picks for ``budget``."""
        ratios = ratios_at(self.sens, budget)
        if not ratios:
            return self.unpruned
        key = tuple(sorted(ratios.items()))
        if key not in self._seen:
            net, plan, before, after = prune_counted(
                self.net,
                ratios,
                self.example_inputs,
                self.previous_plan,
                self.criterion,
                self.round_to,
            )
            # ratios that round_to rounds away to nothing: the unpruned net, not evaluated again
            same = after == before
            self._seen[key] = self.unpruned if same else Candidate(ratios, net, plan, before, after)
        return self._seen[key]

    def loss(self, candidate: Candidate) -> float | None:
        """The candidate's measured relative loss (evaluated on first use); None: no eval set."""
        if self.evaluate is None:
            return None
        if candidate.metrics is None:
            if self.recalibrate is not None:
                self.recalibrate(candidate.net)
            candidate.metrics = self.evaluate(candidate.net)
            self.evaluations += 1
        return relative_loss(self.baseline, float(candidate.metrics[self.metric_name]))

    def probed_loss(self, candidate: Candidate) -> float | None:
        """The loss after ``probe`` fine-tuned the candidate's net in place (once); None: no probe."""
        if self.evaluate is None or self.probe is None or candidate is self.unpruned:
            return None
        if candidate.probed is None:
            self.probe(candidate.net)
            candidate.probed = self.evaluate(candidate.net)
            self.probes += 1
        return relative_loss(self.baseline, float(candidate.probed[self.metric_name]))

    def passes(self, candidate: Candidate, limit: float) -> bool:
        """Whether the candidate's loss after BN re-estimation, or else after the probe, is <= limit.

        Without an evaluation set every candidate passes (nothing can be judged).
        """
        loss = self.loss(candidate)
        if loss is None or loss <= limit:
            return True
        probed = self.probed_loss(candidate)
        return probed is not None and probed <= limit

    def max_loss(self) -> float:
        """The largest finite loss recorded: a budget that prunes every group at its largest ratio."""
        finite = [
            float(v)
            for losses in self.sens["sensitivities"].values()
            for v in losses.values()
            if v is not None and math.isfinite(v)
        ]
        return max([0.0, *finite])


def back_off(
    pruning: SensitivityPruning, budget: float, limit: float, steps: int = BISECTION_STEPS
) -> tuple[Candidate, float]:
    """The candidate of the largest scale ``s`` in (0, 1] that :meth:`~SensitivityPruning.passes`.

    ``s = 1`` (the per-group choice) is tried first; if it fails, ``s`` is bisected ``steps``
    times, each step judging ``get_ratios_by_loss(sens, s × budget)``. Assumes the loss grows
    with ``s`` (larger budgets never pick smaller ratios). When no tested scale that prunes
    anything passes, the unpruned net is returned with ``s = 0``.

    Returns:
        The chosen candidate and its scale.
    """
    first = pruning.at(budget)
    if pruning.passes(first, limit):
        return first, 1.0
    lo, hi, best = 0.0, 1.0, (pruning.unpruned, 0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = pruning.at(mid * budget)
        if pruning.passes(candidate, limit):
            lo = mid
            if candidate is not pruning.unpruned:
                best = (candidate, mid)
        else:
            hi = mid
    return best


def for_flops(
    pruning: SensitivityPruning,
    pruned_flops: float,
    tolerance: float = FLOPS_TOLERANCE,
    steps: int = FLOPS_STEPS,
) -> tuple[Candidate, float]:
    """The candidate whose FLOPs (counted after ``round_to``) are ``pruned_flops`` lower.

    Bisects the loss budget given to ``get_ratios_by_loss`` (as ``ratios_for_flops``, but counting
    the net pruned with the rounding it will get) until the fraction of FLOPs removed is within
    ``tolerance`` of ``pruned_flops``; otherwise the smallest budget found that removes at least it.

    Returns:
        The candidate and the loss budget that picked its ratios.

    Raises:
        ValueError: even the largest recorded ratios cannot remove that much.
    """
    hi = pruning.max_loss()
    best = (pruning.at(hi), hi)
    removed = 1 - best[0].flops_kept
    if removed < pruned_flops - tolerance:
        raise ValueError(
            f"pruning every group at its largest analysed ratio removes {removed:.1%} of the "
            f"FLOPs, less than pruned_flops={pruned_flops:g}; lower pruned_flops or analyse "
            "larger ratios"
        )
    lo = 0.0
    for _ in range(steps):
        if abs(1 - best[0].flops_kept - pruned_flops) <= tolerance:
            break
        mid = (lo + hi) / 2
        candidate = pruning.at(mid)
        if 1 - candidate.flops_kept < pruned_flops - tolerance:
            lo = mid
        else:
            hi, best = mid, (candidate, mid)
    return best


# ----------------------------------------------------------------------------- the promise
@dataclass
class PruneRecord:
    """How a model was pruned from a sensitivity file, and what it cost; ``model.yml: pruning``.

    Relative losses are ``(baseline - metric) / baseline`` against the unpruned (pretrain) model's
    metric on the evaluation set given to ``train``/``prune``.
    """

    mode: str  # "budget" (budget-true) or "per_group" (PaddleX)
    sensitivities: str  # the file's name ("DEFAULT:<name>" for a built-in one)
    eval_metric_loss: float
    pruned_flops: float | None  # the FLOPs target (fraction removed), None: ratios by loss
    metric_name: str
    baseline: float | None  # the unpruned model's metric; None: no evaluation set
    groups: int  # groups pruned
    predicted_loss: float  # sum over the pruned groups of each one's recorded loss at its ratio
    predicted_max_loss: float  # the largest of them (<= the per-group budget)
    measured_loss: float | None  # the combined pruned model's, after BN re-estimation
    probed_loss: float | None  # the same after the short fine-tune; None: not needed / no probe
    loss_limit: float  # min(LOSS_FACTOR × eval_metric_loss, LOSS_CAP)
    scale: float  # the per-group budget used was scale × eval_metric_loss (FLOPs mode: budget)
    evaluations: int  # pruned models evaluated to choose
    probes: int  # pruned models given the short fine-tune to choose
    params_kept: float
    flops_kept: float

    def to_dict(self, metrics: Mapping[str, float]) -> dict[str, Any]:
        """The record plus the final metric of the model holding ``metrics`` and its loss."""
        final = metrics.get(self.metric_name)
        loss = relative_loss(self.baseline, None if final is None else float(final))
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out.update(
            combine="sum",
            final_metric=None if final is None else float(final),
            final_relative_loss=None if loss is None else round(loss, 6),
            within_budget=None if loss is None else bool(loss <= self.eval_metric_loss),
        )
        return out


def warn_budget(message: str, log_fn: LogFn) -> None:
    """Log ``WARNING: message`` and raise it as a :class:`BudgetWarning`."""
    log_fn(f"WARNING: {message}")
    warnings.warn(message, BudgetWarning, stacklevel=3)


def _fmt(value: float | None) -> str:
    return "not measured (no eval_dataset)" if value is None else f"{value:.4f}"


def choose_pruning(
    pruning: SensitivityPruning,
    eval_metric_loss: float,
    mode: str,
    pruned_flops: float | None,
    source: str,
    log_fn: LogFn,
) -> tuple[Candidate, PruneRecord]:
    """Pick the pruned net (see the module docstring), log predicted and measured losses.

    Raises:
        ValueError: the FLOPs target cannot be reached.
    """
    limit = loss_limit(eval_metric_loss)
    if pruned_flops is not None:
        chosen, scale = for_flops(pruning, pruned_flops)
    elif mode == "budget":
        chosen, scale = back_off(pruning, eval_metric_loss, limit)
    else:
        chosen, scale = pruning.at(eval_metric_loss), 1.0
    measured = pruning.loss(chosen)
    probed = None if chosen.probed is None else pruning.probed_loss(chosen)
    predicted, predicted_max = predicted_losses(pruning.sens, chosen.ratios)
    record = PruneRecord(
        mode=mode,
        sensitivities=source,
        eval_metric_loss=eval_metric_loss,
        pruned_flops=pruned_flops,
        metric_name=pruning.metric_name,
        baseline=pruning.baseline,
        groups=len(chosen.ratios),
        predicted_loss=predicted,
        predicted_max_loss=predicted_max,
        measured_loss=measured,
        probed_loss=probed,
        loss_limit=limit,
        scale=scale,
        evaluations=pruning.evaluations,
        probes=pruning.probes,
        params_kept=chosen.params_kept,
        flops_kept=chosen.flops_kept,
    )
    _log_choice(record, log_fn)
    return chosen, record


def _log_choice(r: PruneRecord, log_fn: LogFn) -> None:
    """One line on the choice; a BudgetWarning where the chosen model is over the limit."""
    how = (
        f"pruned_flops {r.pruned_flops:g}: {1 - r.flops_kept:.1%} of the FLOPs removed"
        if r.pruned_flops is not None
        else f"{r.mode} eval_metric_loss {r.eval_metric_loss:g}, scale {r.scale:g}"
    )
    probed = "" if r.probed_loss is None else f", {r.probed_loss:.4f} after a short fine-tune"
    log_fn(
        f"pruning ({how}, {r.sensitivities}): {r.groups} groups; {r.metric_name} before pruning "
        f"{_fmt(r.baseline)}; relative loss predicted {r.predicted_loss:.4f} (sum of per-group "
        f"losses; max {r.predicted_max_loss:.4f}), measured {_fmt(r.measured_loss)} before "
        f"fine-tuning{probed} (limit {r.loss_limit:.4f}), {r.evaluations} pruned models "
        f"evaluated, {r.probes} fine-tuned briefly"
    )
    judged = r.measured_loss if r.probed_loss is None else r.probed_loss
    if judged is None or judged <= r.loss_limit:
        if r.mode == "budget" and r.groups == 0 and r.pruned_flops is None:
            warn_budget(
                f"no pruning keeps the {r.metric_name} loss within {r.loss_limit:g} before "
                "fine-tuning: the model is fine-tuned unpruned; raise eval_metric_loss, or use "
                "prune_mode='per_group' to prune as the sensitivity file says",
                log_fn,
            )
        return
    warn_budget(
        f"the pruned model loses {judged:.1%} of its {r.metric_name} before fine-tuning, "
        f"over the limit {r.loss_limit:g} (min({LOSS_FACTOR:g} x eval_metric_loss, {LOSS_CAP:g})); "
        "fine-tuning may not bring it within the budget"
        + (" (prune_mode='budget' would back the ratios off)" if r.mode == "per_group" else ""),
        log_fn,
    )


def report_final(record: PruneRecord, metrics: Mapping[str, float], log_fn: LogFn) -> float | None:
    """Log the fine-tuned model's metric and relative loss; a BudgetWarning if over budget.

    Returns:
        The relative loss (None when either metric is unknown).
    """
    final = record.to_dict(metrics)
    loss = final["final_relative_loss"]
    if loss is None:
        log_fn(
            f"pruning result: {record.metric_name} not measured (no eval_dataset); the loss "
            f"budget {record.eval_metric_loss:g} is not checked"
        )
        return None
    line = (
        f"{record.metric_name} {final['final_metric']:.4f} after fine-tuning vs "
        f"{record.baseline:.4f} before pruning: relative loss {loss:.4f}"
    )
    if loss <= record.eval_metric_loss:
        log_fn(f"pruning result: {line}, within eval_metric_loss {record.eval_metric_loss:g}")
    else:
        warn_budget(
            f"the pruned model breaks its budget: {line} > eval_metric_loss "
            f"{record.eval_metric_loss:g}; fine-tune longer or prune with a smaller "
            "eval_metric_loss",
            log_fn,
        )
    return float(loss)


def check_prune_options(
    eval_metric_loss: float,
    mode: str,
    pruned_flops: float | None,
    *,
    has_eval: bool,
    **_: Any,
) -> None:
    """Validate the sensitivity-pruning arguments of ``train``/``prune`` (before any work).

    Takes the ``options`` of :func:`prune_with_sensitivities` as keywords (others ignored).

    Raises:
        ValueError: an unknown mode, a budget or FLOPs target outside (0, 1), or budget-true
            pruning without an evaluation set.
    """
    if mode not in PRUNE_MODES:
        raise ValueError(f"prune_mode must be one of {PRUNE_MODES}, got {mode!r}")
    check_budget(eval_metric_loss)
    if pruned_flops is not None and (
        isinstance(pruned_flops, bool)
        or not isinstance(pruned_flops, (int, float))
        or not 0 < pruned_flops < 1
    ):
        raise ValueError(
            "pruned_flops is the fraction of FLOPs to remove, in (0, 1) (0.4 keeps 60 %), "
            f"got {pruned_flops!r}"
        )
    if mode == "budget" and not has_eval:
        raise ValueError(
            "budget-true pruning (prune_mode='budget', the default) measures the pruned model: "
            "pass eval_dataset=, or prune_mode='per_group' to prune by the sensitivity file "
            "alone (PaddleX's rule; the combined loss is then not checked)"
        )


def prune_with_sensitivities(
    net: nn.Module,
    sensitivities: tuple[str | os.PathLike[str], str, str],
    example_inputs: torch.Tensor,
    previous_plan: Any,
    options: dict[str, Any],
    evaluate: EvaluateFn | None,
    metric_name: str,
    log_fn: LogFn,
    recalibrate: RecalibrateFn | None = None,
    probe: ProbeFn | None = None,
) -> tuple[Candidate, PruneRecord]:
    """Choose and build the pruned net from a sensitivity file (after ``check_prune_options``).

    Args:
        net: The unpruned (or previously pruned) net; left untouched.
        sensitivities: ``(file or "DEFAULT", the model's sensitivity key, its architecture)``.
        example_inputs: A batch of one for tracing and counting.
        previous_plan: The net's pruning plan, if it was pruned before.
        options: ``eval_metric_loss``, ``mode``, ``pruned_flops``, ``criterion``, ``round_to``.
        evaluate: Metrics of a net on the evaluation set, or None (nothing is measured).
        metric_name: The metric the losses refer to (higher is better).
        log_fn: Receives the log lines.
        recalibrate: Applied to each pruned candidate before it is evaluated (``adaptive_bn``).
        probe: Fine-tunes a candidate in place for a short while (``short_finetune``); used in
            ``budget`` mode for a candidate whose loss after ``recalibrate`` is over the limit.

    Returns:
        The chosen candidate (its ``net``, ``plan``, ``ratios``, ``metrics``) and its record.

    Raises:
        ValueError: the file is missing, invalid or another model's, or the FLOPs target cannot
            be reached.
    """
    file, key, architecture = sensitivities
    path = resolve_sensitivities(key, file)
    from slimkit.prune.sensitivity_file import check_criterion  # heavy: imports torch-pruning

    sens = load_model_sensitivities(path, key, architecture)
    criterion = options["criterion"] or sens.get("criterion") or "l1"
    check_criterion(sens, criterion, f"the sensitivities in {path.name!r}")
    pruning = SensitivityPruning(
        net,
        sens,
        example_inputs,
        previous_plan,
        criterion,
        options["round_to"],
        evaluate,
        metric_name,
    )
    pruning.recalibrate = recalibrate
    pruning.probe = probe if options["mode"] == "budget" else None
    return choose_pruning(
        pruning,
        options["eval_metric_loss"],
        options["mode"],
        options["pruned_flops"],
        f"{DEFAULT}:{path.name}" if str(file) == DEFAULT else path.name,
        log_fn,
    )
