"""Train slimkit's built-in pretrained weights (``pretrain_weights="BUILTIN"``) and ship them.

For every demo model (``slimkit.demo.CONFIGS``): generate a larger dataset of its task with the seven
``PRETRAIN_CLASSES`` (circle, square, triangle, cross, star, pentagon, hexagon; seed 100, so no image
is shared with the demo's seed-0 data or the seed-1 reference data of the DEFAULT sensitivities),
train the model from scratch with slimkit's own recipe, and write its weights without the task head
as float16 safetensors into ``src/slimkit/pretrained/`` with a manifest entry (SHA-256, options,
training set, final metric). This is slimkit's counterpart of PaddleX's ImageNet/COCO weights: the
demo then fine-tunes instead of starting from scratch. The detector's MobileNetV1 backbone first
learns to classify the shapes (64-px images, the objects' pixel size at 128 px), as ImageNet
backbones do, before the whole detector is trained.

    .venv/bin/python tools/pretrain_builtin.py --out /tmp/slimkit_pretrain [--tasks cls,det,seg]

Every stage keeps its model directory under ``--out`` and is skipped when re-run finds it finished.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimkit.data.generate import PRETRAIN_CLASSES
from slimkit.demo import CONFIGS, DemoConfig, open_or_make
from slimkit.models.pretrained import save_builtin
from slimkit.tasks.base import BaseTask
from slimkit.tasks.factory import create_task
from slimkit.tasks.loading import load_model

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "slimkit" / "pretrained"
PRETRAIN_SEED = 100
BACKBONE_NOTE = (
    "; backbone first trained as a MobileNetV1 classifier on the 8400-image 64-px cls set, "
    "10 epochs"
)


@dataclass(frozen=True)
class Stage:
    """One pretraining run: data (task, images, size) and schedule."""

    task: str
    num_train: int
    num_val: int
    image_size: int
    epochs: int
    batch_size: int
    learning_rate: float = 2e-3


STAGES = {
    "cls": Stage("cls", 8400, 700, 64, 10, 32),
    "det_backbone": Stage("cls", 8400, 700, 64, 10, 32),
    "det": Stage("det", 3000, 300, 128, 12, 16),
    "seg": Stage("seg", 3000, 300, 64, 15, 16),
}


def dataset(stage: Stage, root: Path) -> tuple[Any, Any]:
    """Write (once) and open the pretraining set of a stage."""
    return open_or_make(
        stage.task,
        root / "data" / f"{stage.task}_{stage.image_size}",
        num_train=stage.num_train,
        num_val=stage.num_val,
        image_size=stage.image_size,
        seed=PRETRAIN_SEED,
        classes=PRETRAIN_CLASSES,
    )


def train_stage(
    stage: Stage, architecture: str, kwargs: dict[str, Any], root: Path, name: str, init: Any = None
) -> BaseTask:
    """Train one model from scratch (or from ``init(model)``); returns its best model."""
    save_dir = root / name
    best = save_dir / "best_model"
    if (save_dir / f"epoch_{stage.epochs}" / "model.yml").is_file():
        return load_model(best)
    train_ds, val_ds = dataset(stage, root)
    model = create_task(
        architecture, train_ds.num_classes, stage.image_size, labels=train_ds.labels, **kwargs
    )
    if init is not None:
        init(model)
    start = time.time()
    model.train(
        num_epochs=stage.epochs,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        train_batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        optimizer="adam",
        warmup_steps=50,
        save_dir=save_dir,
        save_interval_epochs=max(stage.epochs // 4, 1),
        overwrite=True,  # this tool's own stage, redone when a run was interrupted
    )
    print(f"{name}: {time.time() - start:.0f}s")
    return load_model(best)


def backbone_init(classifier: BaseTask) -> Any:
    """Copy a trained classifier's trunk into a detector's ``backbone`` (the classifier dropped)."""
    assert classifier.net is not None
    trunk = {k: v for k, v in classifier.net.state_dict().items() if not k.startswith("classifier")}

    def init(detector: BaseTask) -> None:
        assert detector.net is not None
        missing = detector.net.backbone.load_state_dict(trunk, strict=True)  # type: ignore[operator]
        assert not missing.missing_keys and not missing.unexpected_keys

    return init


def pretrain(task: str, cfg: DemoConfig, root: Path) -> None:
    """All stages of one demo model, then its weights into the package."""
    kwargs = dict(cfg.model_kwargs)
    init = None
    if task == "det":
        trunk_kw = {"width_mult": kwargs["width_mult"]}
        classifier = train_stage(
            STAGES["det_backbone"], "mobilenetv1", trunk_kw, root, "det_backbone"
        )
        init = backbone_init(classifier)
    model = train_stage(STAGES[task], cfg.architecture, kwargs, root, task, init)
    assert model.net is not None
    weight_kwargs = {k: v for k, v in kwargs.items() if k not in ("anchors", "anchor_masks")}
    stage = STAGES[task]
    entry = save_builtin(
        model.net,
        cfg.architecture,
        weight_kwargs,
        PACKAGE_DIR,
        trained_on=(
            f"slimkit generated {task} set, {stage.num_train} images at {stage.image_size} px, "
            f"{len(PRETRAIN_CLASSES)} shape kinds, seed {PRETRAIN_SEED}, {stage.epochs} epochs"
            + (BACKBONE_NOTE if task == "det" else "")
        ),
        metrics={model.metric_name: float(model.metrics.get(model.metric_name, 0.0))},
    )
    print(f"{task}: wrote {entry['file']} ({entry['tensors']} tensors) {entry['metrics']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/slimkit_pretrain")
    p.add_argument("--tasks", default="cls,det,seg")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for task in args.tasks.split(","):
        pretrain(task, CONFIGS[task], Path(args.out))


if __name__ == "__main__":
    main()
