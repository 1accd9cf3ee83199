"""The end-to-end demo: the seeds' workflow on the built-in data, for the three tasks.

For each task: generate the data → train the original model (fine-tuned from slimkit's built-in
pretrained weights, as PaddleX users start from ImageNet) → sensitivity analysis → method 1 (own
sensitivities, ``eval_metric_loss``) → method 2 (built-in ``DEFAULT`` sensitivities) → INT8 of the
original and of the method-1 model → a benchmark table (size, metric, latency) and plots. Every
stage writes a model directory under ``out/<task>/`` and is skipped when re-run finds it; the
seconds each stage took go to ``out/summary.json``. A run at another ``eval_metric_loss`` than the
default 0.10 reuses the originals and sensitivity files and writes its own pruned models, INT8
models, benchmark and summary with a ``_loss<budget>`` suffix (``method1_loss0.05``, ...).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slimkit import slim
from slimkit.bench.report import format_report, run_bench
from slimkit.data.generate import make_dataset
from slimkit.tasks.factory import create_task, open_split
from slimkit.tasks.loading import load_model
from slimkit.tasks.logging import log
from slimkit.tasks.modeldir import read_model_yml
from slimkit.tasks.pruning import check_budget

DEFAULT_BUDGET = 0.10  # eval_metric_loss of methods 1 and 2, as in the seeds


def budget_suffix(eval_metric_loss: float) -> str:
    """``""`` at the default budget, else ``_loss<budget>``: the outputs of a run at that budget."""
    return "" if eval_metric_loss == DEFAULT_BUDGET else f"_loss{eval_metric_loss:g}"


@dataclass(frozen=True)
class DemoConfig:
    """One task's demo settings (the full run; ``quick()`` shrinks them for tests)."""

    task: str
    architecture: str
    model_kwargs: dict[str, Any]
    input_size: int
    num_train: int
    num_val: int
    image_size: int
    epochs: int
    finetune_epochs: int
    batch_size: int = 32
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    warmup_steps: int = 20
    pretrain_weights: str | None = None
    analysis_batch_size: int = 25
    loss_cap: float = 1.0
    eval_metric_loss: float = DEFAULT_BUDGET
    quant_batches: int = 10
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    @property
    def suffix(self) -> str:
        """The name suffix of this config's pruned outputs (see :func:`budget_suffix`)."""
        return budget_suffix(self.eval_metric_loss)

    def quick(self) -> DemoConfig:
        """A tiny variant (same architecture and width, so DEFAULT sensitivities still apply)."""
        return replace(
            self,
            num_train=16,
            num_val=8,
            epochs=1,
            finetune_epochs=1,
            batch_size=8,
            analysis_batch_size=8,
            quant_batches=2,
            loss_cap=0.5,
            ratios=(0.3, 0.6, 0.9),
        )


DET_ANCHORS = [
    [9, 9],
    [20, 20],
    [24, 23],
    [27, 27],
    [30, 30],
    [34, 34],
    [38, 38],
    [42, 42],
    [49, 48],
]
"""k-means (IoU) anchors of the built-in detection boxes at 128 px: mean best IoU 0.91 where the
COCO anchors scaled to 128 px give 0.70 (the shapes are square-ish, 9-49 px)."""

CONFIGS: dict[str, DemoConfig] = {
    "cls": DemoConfig(
        "cls",
        "mobilenetv2",
        {"width_mult": 1.0},
        input_size=64,
        num_train=2400,
        num_val=200,
        image_size=64,
        epochs=4,  # from BUILTIN: acc1 0.999 / 1.0 on 1000 val (seeds 1 / 2; 3 epochs, seed 0: 1.0)
        finetune_epochs=8,
        learning_rate=0.002,
        optimizer="adam",
        pretrain_weights="BUILTIN",
    ),
    "det": DemoConfig(
        "det",
        "yolov3_mobilenetv1",
        {"width_mult": 0.5, "neck_width": 0.25, "anchors": DET_ANCHORS},
        input_size=128,
        num_train=800,
        num_val=100,
        image_size=128,
        epochs=12,  # from BUILTIN: bbox_map 0.925 on 500 val images (seed 0)
        finetune_epochs=6,
        learning_rate=0.002,
        optimizer="adam",
        pretrain_weights="BUILTIN",
        batch_size=16,
        loss_cap=0.3,
    ),
    "seg": DemoConfig(
        "seg",
        "unet",
        {"base_channels": 16},
        input_size=64,
        num_train=600,  # 300: val mIoU 0.40-0.67 by run; 600 (20 epochs, twice the steps): 0.92
        num_val=100,
        image_size=64,
        epochs=20,
        finetune_epochs=6,
        learning_rate=0.003,
        optimizer="adam",
        batch_size=16,
    ),
}


def open_or_make(task: str, data_dir: Path, **make_kwargs: Any) -> tuple[Any, Any]:
    """The train and val splits of a built-in dataset, written by ``make_dataset`` when missing."""
    if not (data_dir / "val_list.txt").is_file():
        make_dataset(task, data_dir, **make_kwargs)
    return open_split(task, data_dir, "train"), open_split(task, data_dir, "val")


def prepare_data(cfg: DemoConfig, data_dir: Path, seed: int = 0) -> tuple[Any, Any]:
    """Write (once) and open the built-in dataset of a task."""
    train_ds, val_ds = open_or_make(
        cfg.task,
        data_dir,
        num_train=cfg.num_train,
        num_val=cfg.num_val,
        image_size=cfg.image_size,
        seed=seed,
    )
    if (len(train_ds), len(val_ds)) != (cfg.num_train, cfg.num_val):
        raise ValueError(
            f"the demo data in {str(data_dir)!r} has {len(train_ds)} train / {len(val_ds)} val "
            f"images but this demo makes {cfg.num_train} / {cfg.num_val} (an output folder of "
            "another slimkit version or --quick run); choose another --out or delete that folder"
        )
    return train_ds, val_ds


def _done(model_dir: Path) -> bool:
    return (model_dir / "model.yml").is_file()


def _trained(save_dir: Path, epochs: int) -> bool:
    """A training stage is finished when its last epoch was saved (an interrupted one is redone)."""
    return _done(save_dir / f"epoch_{epochs}") and _done(save_dir / "best_model")


def train_original(cfg: DemoConfig, train_ds: Any, val_ds: Any, out: Path) -> Path:
    """Stage 1: train the original model; returns its ``best_model`` directory."""
    best = out / "original" / "best_model"
    if not _trained(out / "original", cfg.epochs):
        model = create_task(
            cfg.architecture,
            train_ds.num_classes,
            cfg.input_size,
            labels=train_ds.labels,
            **cfg.model_kwargs,
        )
        model.train(
            num_epochs=cfg.epochs,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            optimizer=cfg.optimizer,
            warmup_steps=cfg.warmup_steps,
            pretrain_weights=cfg.pretrain_weights,
            save_dir=out / "original",
            save_interval_epochs=max(cfg.epochs // 3, 1),
            overwrite=True,  # the demo's own stage, redone when a run was interrupted
        )
    return best


def analyze(cfg: DemoConfig, model_dir: Path, val_ds: Any, save_file: Path) -> Path:
    """Stage 2: sensitivity analysis of the trained model (resumes an interrupted file)."""
    slim.analysis(
        load_model(model_dir),
        val_ds,
        batch_size=cfg.analysis_batch_size,
        save_file=save_file,
        loss_cap=cfg.loss_cap,
        ratios=cfg.ratios,
    )
    return save_file


def prune_and_finetune(
    cfg: DemoConfig,
    original: Path,
    sensitivities: str | Path,
    train_ds: Any,
    val_ds: Any,
    out: Path,
) -> Path | None:
    """Stage 3: method 1 (a file) or method 2 (``"DEFAULT"``): prune + fine-tune."""
    best = out / "best_model"
    if _trained(out, cfg.finetune_epochs):
        return best
    model = load_model(original)
    try:
        model.train(
            num_epochs=cfg.finetune_epochs,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate * 0.2,
            optimizer=cfg.optimizer,
            save_dir=out,
            sensitivities_file=sensitivities,
            eval_metric_loss=cfg.eval_metric_loss,
            save_interval_epochs=max(cfg.finetune_epochs // 2, 1),
            overwrite=True,  # the demo's own stage, redone when a run was interrupted
        )
    except ValueError as e:
        if str(sensitivities) != "DEFAULT":
            raise
        log(f"method 2 skipped: {e}")
        return None
    return best


def quantize(cfg: DemoConfig, model_dir: Path, val_ds: Any, out: Path) -> Path:
    """Stage 4: INT8 post-training quantization with KL calibration."""
    if not _done(out):
        slim.export_quant_model(
            load_model(model_dir),
            val_ds,
            batch_size=1,
            batch_num=cfg.quant_batches,
            save_dir=out,
            cache_dir=out.parent / "calib_cache",
        )
    return out


@contextmanager
def _stage(times: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``times[name]``."""
    start = time.time()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + round(time.time() - start, 1)


def _prune_rows(
    cfg: DemoConfig, original: Path, train_ds: Any, val_ds: Any, out: Path, times: dict[str, float]
) -> list[tuple[str, Path]]:
    """Stages 2-3: sensitivity analysis, method 1 and method 2; the rows they add."""
    log(f"[{cfg.task}] 2/5 sensitivity analysis")
    with _stage(times, "analysis"):
        sens = analyze(cfg, original, val_ds, out / "model.sensi.json")
    log(f"[{cfg.task}] 3/5 method 1 (own sensitivities) and method 2 (DEFAULT)")
    m1, m2 = out / f"method1{cfg.suffix}", out / f"method2{cfg.suffix}"
    with _stage(times, "method1"):
        method1 = prune_and_finetune(cfg, original, sens, train_ds, val_ds, m1)
    with _stage(times, "method2"):
        method2 = prune_and_finetune(cfg, original, "DEFAULT", train_ds, val_ds, m2)
    assert method1 is not None  # only method 2 (DEFAULT) is skipped, returning None
    rows = [(f"method1 (loss {cfg.eval_metric_loss})", method1)]
    if method2 is not None:
        rows.append((f"method2 DEFAULT (loss {cfg.eval_metric_loss})", method2))
    return rows


def run_task(cfg: DemoConfig, out: Path, data_root: Path) -> dict[str, Any]:
    """The whole workflow for one task; returns the benchmark result (with stage ``times``)."""
    start, times = time.time(), dict[str, float]()
    with _stage(times, "data"):
        train_ds, val_ds = prepare_data(cfg, data_root / cfg.task)
    log(f"[{cfg.task}] 1/5 train {cfg.architecture} ({len(train_ds)} train / {len(val_ds)} val)")
    with _stage(times, "train"):
        original = train_original(cfg, train_ds, val_ds, out)
    rows = [("original", original)]
    info = read_model_yml(original)
    if info["metrics"].get(info["metric_name"], 0.0) > 0:
        rows += _prune_rows(cfg, original, train_ds, val_ds, out, times)
    else:  # only in --quick runs, whose few steps may not lift the metric above zero
        log(
            f"[{cfg.task}] 2-3/5 skipped: the original model's metric is 0, nothing to prune against"
        )
    log(f"[{cfg.task}] 4/5 INT8 quantization")
    with _stage(times, "int8"):
        rows.append(("original INT8", quantize(cfg, original, val_ds, out / "int8")))
        if len(rows) > 2:
            m1_int8 = out / f"method1{cfg.suffix}_int8"
            rows.append(("method1 INT8", quantize(cfg, rows[1][1], val_ds, m1_int8)))
    log(f"[{cfg.task}] 5/5 benchmark")
    with _stage(times, "bench"):
        result = run_bench(
            [str(d) for _, d in rows],
            str(data_root / cfg.task),
            str(out / f"bench{cfg.suffix}"),
            names=[n for n, _ in rows],
            title=f"{cfg.task}: {cfg.architecture}",
            overwrite=True,  # the demo's own report, rewritten on every run
        )
    times["total"] = round(time.time() - start, 1)
    result["times"] = times
    log(
        f"[{cfg.task}] done in {times['total']:.0f}s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in times.items() if k != "total")
    )
    for line in pruning_summary(result, cfg.eval_metric_loss):
        log(f"[{cfg.task}] {line}")
    return result


def pruning_summary(result: dict[str, Any], budget: float) -> list[str]:
    """One line per pruned FP32 row: metric, relative loss vs the budget, ORT FP32 latency ratio."""
    rows = result["rows"]
    base = rows[0]

    def ort_ms(row: dict[str, Any]) -> float | None:
        stats = row["latency"].get("cpu_ort_fp32")
        return stats["median_ms"] if stats else None

    lines = []
    for row in rows[1:]:
        if row["status"] != "Prune" or not base["metric"]:
            continue
        loss = (base["metric"] - row["metric"]) / base["metric"]
        ms, base_ms = ort_ms(row), ort_ms(base)
        ratio = f"{ms / base_ms:.2f}" if ms and base_ms else "n/a"
        lines.append(
            f"{row['name']}: {row['metric_name']} {base['metric']:.4f} -> {row['metric']:.4f}, "
            f"relative loss {loss:+.3f} vs budget {budget:.2f}, ORT FP32 latency ratio {ratio}"
        )
    return lines


def run_demo(
    out: str | os.PathLike = "demo_output",
    quick: bool = False,
    tasks: list[str] | tuple[str, ...] = ("cls", "det", "seg"),
    eval_metric_loss: float | None = None,
) -> dict[str, Any]:
    """Run the workflow for ``tasks``; print and return the three benchmark tables.

    ``eval_metric_loss`` (default: each task's 0.10) is the pruning budget of methods 1 and 2.
    """
    unknown = [t for t in tasks if t not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown demo task(s) {unknown}; choose from {sorted(CONFIGS)}")
    if eval_metric_loss is not None:
        check_budget(eval_metric_loss)
    out = Path(out)
    start, results, configs = time.time(), {}, {}
    for task in tasks:
        cfg = CONFIGS[task].quick() if quick else CONFIGS[task]
        if eval_metric_loss is not None:
            cfg = replace(cfg, eval_metric_loss=eval_metric_loss)
        configs[task] = cfg
        results[task] = run_task(cfg, out / task, out / "data")

    for task, res in results.items():
        print(f"\n## {task}\n\n{format_report(res)}")
        for line in pruning_summary(res, configs[task].eval_metric_loss):
            print(f"- {line}")
    total = time.time() - start
    print(f"\ndemo finished in {total / 60:.1f} min; outputs under {out}/")
    summary = {
        "minutes": total / 60,
        "tasks": list(results),
        "stage_seconds": {t: r["times"] for t, r in results.items()},
        "eval_metric_loss": {t: c.eval_metric_loss for t, c in configs.items()},
        "pruning": {t: pruning_summary(r, configs[t].eval_metric_loss) for t, r in results.items()},
    }
    suffix = budget_suffix(DEFAULT_BUDGET if eval_metric_loss is None else eval_metric_loss)
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1))
    return results
