"""Per-group only (PaddleX) vs budget-true pruning on the demo's models.

For each task it loads what `make demo` (`slimkit demo --out DIR`) left: the trained original
(`DIR/<task>/original/best_model`), its sensitivity file (`DIR/<task>/model.sensi.json`) and the
data (`DIR/data/<task>`). It prunes the original three ways at the same `eval_metric_loss`:
`prune_mode="per_group"` (PaddleX), `prune_mode="budget"` judged after BN re-estimation only (the
rule without the short fine-tune, for comparison) and `prune_mode="budget"` as `train` does it, and
fine-tunes each as the demo does (`slimkit.demo.CONFIGS[task]`: finetune_epochs, learning rate
x 0.2, optimizer, batch size). Per task and mode it prints the budget, the predicted relative
loss (sum of the per-group losses at the chosen ratios), the loss measured on the combined model
after BN re-estimation, after the short fine-tune (where one was needed) and after fine-tuning
(the best epoch, as `train` keeps it), the budget scale, the FLOPs kept, and the ONNX Runtime FP32
latency ratio pruned/original (1 thread, batch 1, medians of interleaved rounds).

    OMP_NUM_THREADS=1 python benchmarks/budget_ablation.py --demo-dir demo_output \
        [--tasks cls,det,seg] [--budget 0.10] [--epochs N] [--runs 50]

`--sweep 1,0.5,0.25` instead prunes per group at budgets `s x budget` and fine-tunes each: the
(before, after) pairs from which `slimkit.tasks.budget.LOSS_FACTOR` is chosen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from slimkit.bench.latency import onnx_latency
from slimkit.demo import CONFIGS, prepare_data
from slimkit.quant import export_onnx
from slimkit.tasks.budget import BudgetWarning
from slimkit.tasks.loading import load_model

NO_PROBE = "budget, no short FT"


def prune_and_finetune(
    case: dict[str, Any], out: Path, mode: str, budget: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Prune the original under ``budget`` in ``mode``, fine-tune, return the pruning record."""
    cfg = case["cfg"]
    epochs = cfg.finetune_epochs if args.epochs is None else args.epochs
    model = load_model(case["original"])
    no_probe = mode == NO_PROBE  # the rule before the short fine-tune: judged after BN only
    probe = mock.patch("slimkit.tasks.base.short_finetune", lambda *a, **k: None)
    torch.manual_seed(args.seed)  # the same shuffles for both modes: equal ratios, equal results
    with warnings.catch_warnings(record=True) as caught, probe if no_probe else nullcontext():
        warnings.simplefilter("always", BudgetWarning)
        best = model.train(
            num_epochs=epochs,
            train_dataset=case["train"],
            eval_dataset=case["val"],
            train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate * 0.2,
            optimizer=cfg.optimizer,
            save_dir=out,
            sensitivities_file=case["sens"],
            eval_metric_loss=budget,
            prune_mode="budget" if no_probe else mode,
            save_interval_epochs=max(epochs // 2, 1),
            progress=args.progress,
        )
    assert model.prune_record is not None
    record = model.prune_record.to_dict(best or model.metrics)
    record["warnings"] = sum(issubclass(w.category, BudgetWarning) for w in caught)
    record["dir"] = out / "best_model"
    return record


def latency_ratio(original: Path, pruned: Path, args: argparse.Namespace, tmp: Path) -> float:
    """Median over interleaved rounds of ORT FP32 latency pruned / original (batch 1)."""
    paths, shape = [], None
    for i, model_dir in enumerate((original, pruned)):
        model = load_model(model_dir)
        assert model.net is not None
        x = model.example_inputs(1)
        shape = tuple(x.shape)
        paths.append(export_onnx(model.net.cpu().eval(), x, tmp / f"m{i}.onnx", opset=17))
    assert shape is not None
    times: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i, path in enumerate(paths):
            stats = onnx_latency(path, shape, threads=args.threads, warmup=5, runs=args.runs)
            times[i].append(stats.median_ms)
    return statistics.median(times[1]) / statistics.median(times[0])


def _cell(value: Any, fmt: str = "{:.3f}") -> str:
    return "—" if value is None else fmt.format(value)


def row(task: str, label: str, rec: dict[str, Any], latency: float | None) -> str:
    """One Markdown table row."""
    cells = [
        task,
        label,
        _cell(rec["eval_metric_loss"], "{:g}"),
        _cell(rec["predicted_loss"]),
        _cell(rec["measured_loss"]),
        _cell(rec["probed_loss"]),
        _cell(rec["final_relative_loss"]),
        "yes" if rec["within_budget"] else "no",
        _cell(rec["scale"], "{:.3g}"),
        f"{rec['baseline']:.4f} → {_cell(rec['final_metric'], '{:.4f}')}",
        _cell(rec["flops_kept"], "{:.1%}"),
        _cell(latency, "{:.2f}×"),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| task | mode | budget | predicted (sum) | measured before FT | after short FT | after FT "
    "| within | scale | metric orig → final | FLOPs kept | ORT FP32 latency |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def load_case(demo_dir: Path, task: str) -> dict[str, Any] | None:
    """The demo's original, sensitivity file and datasets of a task (None when missing)."""
    cfg = CONFIGS[task]
    original = demo_dir / task / "original" / "best_model"
    sens = demo_dir / task / "model.sensi.json"
    missing = [str(p) for p in (original / "model.yml", sens) if not p.is_file()]
    if missing:
        print(f"{task}: skipped, missing {missing} (run `slimkit demo --out {demo_dir}` first)")
        return None
    train, val = prepare_data(cfg, demo_dir / "data" / task)
    return {"cfg": cfg, "original": original, "sens": sens, "train": train, "val": val}


def run(args: argparse.Namespace) -> None:
    """Run the ablation (or the sweep) and print one table."""
    lines = [HEADER]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for task in args.tasks.split(","):
            case = load_case(Path(args.demo_dir), task)
            if case is None:
                continue
            if args.sweep:
                runs = [("per_group", s) for s in (float(v) for v in args.sweep.split(","))]
            else:
                runs = [("per_group", 1.0), (NO_PROBE, 1.0), ("budget", 1.0)]
            for mode, scale in runs:
                out = tmp / f"{task}_{mode}_{scale:g}"
                rec = prune_and_finetune(case, out, mode, scale * args.budget, args)
                latency = None
                if args.runs > 0:
                    latency = latency_ratio(case["original"], rec["dir"], args, out)
                label = mode if not args.sweep else f"per_group at {scale:g} × budget"
                lines.append(row(task, label, rec, latency))
                print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--demo-dir", default="demo_output")
    p.add_argument("--tasks", default="cls,det,seg")
    p.add_argument("--budget", type=float, default=0.10)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the demo's)")
    p.add_argument("--sweep", help="comma-separated scales s: per-group pruning at s x budget")
    p.add_argument("--runs", type=int, default=50, help="latency runs per round (0: skip)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="torch seed before each fine-tuning")
    p.add_argument("--progress", action="store_true", help="per-epoch lines")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
