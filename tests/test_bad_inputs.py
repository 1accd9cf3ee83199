"""Bad inputs through the CLI, in-process: one line ``slimkit: error: ...``, exit 2, nothing touched.

Every case runs ``slimkit.cli.main`` on a shared little world (a dataset, Normal / Prune / Quant
model directories, a training output, a sensitivity file, the user's own files) and checks that

* the exit status is 2 and stderr shows exactly one line, ``slimkit: error: ...`` (what a terminal
  shows: a progress bar erased with carriage returns is not a line), with no traceback;
* no file or directory of the world was added, removed or changed (hashes before and after),
  and no temporary file was left behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from slimkit.cli import main

# -- the world -------------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (no pixel data: Pillow reads the size lazily)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _yml_variant(world: Path, name: str, change) -> None:
    """A copy of the Normal model directory whose model.yml is edited by ``change(info)``."""
    import yaml

    target = world / "bad" / name
    shutil.copytree(world / "m", target)
    info = yaml.safe_load((target / "model.yml").read_text())
    text = change(info)
    if not isinstance(text, str):
        text = yaml.safe_dump(info, sort_keys=False)
    (target / "model.yml").write_text(text)


YML_CHANGES = {
    "task_xyz": lambda i: i.update(task="xyz"),
    "classes_float": lambda i: i.update(num_classes=4.7),
    "classes_huge": lambda i: i.update(num_classes=10**9),
    "classes_text": lambda i: i.update(num_classes="four"),
    "classes_negative": lambda i: i.update(num_classes=-1),
    "input_huge": lambda i: i.update(input_size=[100000, 100000]),
    "input_zero": lambda i: i.update(input_size=[0, 32]),
    "input_text": lambda i: i.update(input_size="big"),
    "input_three": lambda i: i.update(input_size=[32, 32, 3]),
    "labels_short": lambda i: i.update(labels=["circle"]),
    "labels_text": lambda i: i.update(labels="circle"),
    "status_bogus": lambda i: i.update(status="Half"),
    "arch_unknown": lambda i: i.update(architecture="resnet9000"),
    "arch_number": lambda i: i.update(architecture=7),
    "width_nan": lambda i: i["model_kwargs"].update(width_mult=float("nan")),
    "width_negative": lambda i: i["model_kwargs"].update(width_mult=-1.0),
    "width_huge": lambda i: i["model_kwargs"].update(width_mult=1e4),
    "kwarg_unknown": lambda i: i["model_kwargs"].update(wings=2),
    "kwargs_list": lambda i: i.update(model_kwargs=[1, 2]),
    "mean_nan": lambda i: i.update(mean=[float("nan"), 0.5, 0.5]),
    "std_zero": lambda i: i.update(std=[0.0, 0.0, 0.0]),
    "std_two": lambda i: i.update(std=[0.2, 0.2]),
    "missing_keys": lambda i: "task: cls\n",
    "bad_yaml": lambda i: "task: cls\narchitecture: [mobilenetv1\n",
    "empty": lambda i: "",
    "a_list": lambda i: "- 1\n- 2\n",
    "huge": lambda i: "# " + "x" * (2 << 20) + "\n",
}


PLAN_CHANGES = {  # what a pruning plan may not hold (its second group edited)
    "plan_negative_index": lambda g: g.update(kept=[-1, *g["kept"][1:]]),
    "plan_float_index": lambda g: g.update(kept=[0.5, *g["kept"][1:]]),
    "plan_huge_index": lambda g: g.update(kept=[*g["kept"][:-1], 10**12]),
    "plan_repeated_index": lambda g: g.update(kept=[g["kept"][0], *g["kept"][:-1]]),
    "plan_channels_nan": lambda g: g.update(num_channels=float("nan")),
    "plan_channels_huge": lambda g: g.update(num_channels=10**12),
    "plan_nothing_kept": lambda g: g.update(kept=[]),
}


def _make_model_dirs(world: Path, data: Path) -> None:
    import slimkit
    from slimkit import slim
    from slimkit.tasks.factory import open_split

    val = open_split("cls", data, "val")
    model = slimkit.cls.MobileNetV1(
        num_classes=4, input_size=32, width_mult=0.25, labels=val.labels
    )
    model.save(world / "m")
    slim.prune(world / "m", 0.5, world / "p")
    slim.export_quant_model(slimkit.load_model(world / "m"), val, batch_num=1, save_dir=world / "q")
    slim.analysis(
        slimkit.load_model(world / "m"),
        val,
        batch_size=4,
        save_file=world / "s.json",
        ratios=(0.5,),
        progress=False,
    )
    shutil.copy(world / "s.json", world / "s2.json")
    for d in ("best_model", "epoch_1"):  # a finished training run
        shutil.copytree(world / "m", world / "run" / d)
    slim.visualize(slimkit.load_model(world / "m"), world / "s.json", world / "plots")


def _make_broken_dirs(world: Path) -> None:
    for name, change in YML_CHANGES.items():
        _yml_variant(world, name, change)
    bad = world / "bad"
    for name, content in (("onnx_garbage", b"garbage"), ("onnx_empty", b"")):
        shutil.copytree(world / "q", bad / name)
        (bad / name / "model.onnx").write_bytes(content)
    shutil.copytree(world / "q", bad / "onnx_missing")
    (bad / "onnx_missing" / "model.onnx").unlink()
    shutil.copytree(world / "m", bad / "weights_missing")
    (bad / "weights_missing" / "model.safetensors").unlink()
    shutil.copytree(world / "m", bad / "weights_garbage")
    (bad / "weights_garbage" / "model.safetensors").write_bytes(b"\x00" * 64)
    shutil.copytree(world / "m", bad / "weights_other")
    shutil.copy(world / "p" / "model.safetensors", bad / "weights_other" / "model.safetensors")
    shutil.copytree(world / "p", bad / "plan_missing")
    (bad / "plan_missing" / "prune_plan.json").unlink()
    shutil.copytree(world / "p", bad / "plan_garbage")
    (bad / "plan_garbage" / "prune_plan.json").write_text("{not json")
    for name, change in PLAN_CHANGES.items():
        shutil.copytree(world / "p", bad / name)
        plan = json.loads((bad / name / "prune_plan.json").read_text())
        change(plan["groups"][1])
        (bad / name / "prune_plan.json").write_text(json.dumps(plan))
    (bad / "yml_is_dir").mkdir()
    (bad / "yml_is_dir" / "model.yml").mkdir()
    shutil.copytree(world / "m", bad / "yml_binary")
    (bad / "yml_binary" / "model.yml").write_bytes(b"\xff\xfe\x00garbage")


def _make_user_files(world: Path, data: Path) -> None:
    user = world / "user"
    (user / "own_data").mkdir(parents=True)
    (user / "own_data" / "labels.txt").write_text("cat\ndog\n")
    (user / "own_data" / "train_list.txt").write_text("img/a.jpg 0\n")
    (user / "own_data" / "val_list.txt").write_text("img/b.jpg 1\n")
    (user / "notes").mkdir()
    (user / "notes" / "todo.txt").write_text("mine")
    (user / "file.txt").write_text("my file")
    (user / "run_foreign" / "best_model").mkdir(parents=True)
    (user / "run_foreign" / "best_model" / "notes.md").write_text("mine")
    (user / "bomb.png").write_bytes(_png_header(20000, 20000))  # 400 M pixels
    (user / "big.png").write_bytes(_png_header(10000, 10000))  # 100 M: Pillow only warns
    (user / "over_limit.png").write_bytes(_png_header(9000, 8000))  # over slimkit's limit
    jpg = next(data.rglob("*.jpg")).read_bytes()
    (user / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (user / "ratios_bad.json").write_text("{bad")
    (user / "ratios_nan.json").write_text('{"conv": NaN}')
    (user / "ratios_big.json").write_text('{"conv": 1.5}')
    (user / "ratios_list.json").write_text("[0.5]")
    (user / "ratios_text.json").write_text('{"conv": "half"}')
    (user / "not_sens.json").write_text('{"a": 1}')
    (user / "ratios_unknown.json").write_text('{"no.such.layer": 0.5}')
    bad_data = world / "bad_data"
    for name in ("corrupt_image", "bad_label", "missing_image", "empty_labels", "no_lists"):
        shutil.copytree(data, bad_data / name)
    first = next((bad_data / "corrupt_image").rglob("val_*.jpg"))
    first.write_bytes(b"not a jpeg")
    lines = (bad_data / "bad_label" / "val_list.txt").read_text().splitlines()
    (bad_data / "bad_label" / "val_list.txt").write_text(lines[0].split()[0] + " 9\n")
    next((bad_data / "missing_image").rglob("val_*.jpg")).unlink()
    (bad_data / "empty_labels" / "labels.txt").write_text("\n")
    for name in ("train_list.txt", "val_list.txt"):
        (bad_data / "no_lists" / name).unlink()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from slimkit.data.generate import make_dataset

    world = tmp_path_factory.mktemp("world")
    data = world / "d"
    make_dataset("cls", data, num_train=8, num_val=4, image_size=32)
    _make_model_dirs(world, data)
    _make_broken_dirs(world)
    _make_user_files(world, data)
    return world


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, ``dir`` for a directory."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: after a carriage return only the last text of a line stays."""
    shown = (line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return [line for line in shown if line.strip()]


# -- the cases -------------------------------------------------------------------------------------
Q = ["--data", "{d}", "--batch-num", "1"]  # quantize
T = ["train", "--model", "mobilenetv1", "--data", "{d}", "--epochs", "1", "--input-size", "32"]
T += ["--width-mult", "0.25", "--batch-size", "4"]
CASES: dict[str, list[str]] = {
    # -- outputs: never an input, existing results only with --overwrite, user files never
    "quantize_into_source": ["quantize", "{m}", *Q, "--save-dir", "{m}"],
    "quantize_into_source_overwrite": ["quantize", "{m}", *Q, "--save-dir", "{m}", "--overwrite"],
    "quantize_inside_source": ["quantize", "{m}", *Q, "--save-dir", "{m}/int8"],
    "quantize_over_quant": ["quantize", "{m}", *Q, "--save-dir", "{q}"],
    "quantize_over_other_model": ["quantize", "{m}", *Q, "--save-dir", "{p}"],
    "quantize_over_notes": ["quantize", "{m}", *Q, "--save-dir", "{user}/notes", "--overwrite"],
    "quantize_over_dataset": ["quantize", "{m}", *Q, "--save-dir", "{d}", "--overwrite"],
    "quantize_onto_file": ["quantize", "{m}", *Q, "--save-dir", "{user}/file.txt"],
    "quantize_under_file": ["quantize", "{m}", *Q, "--save-dir", "{user}/file.txt/q"],
    "quantize_unwritable": ["quantize", "{m}", *Q, "--save-dir", "/proc/sys/slimkit_q"],
    "quantize_cache_in_model": [
        "quantize",
        "{m}",
        *Q,
        "--save-dir",
        "{w}/q9",
        "--cache-dir",
        "{m}",
    ],
    "quantize_quant_model": ["quantize", "{q}", *Q, "--save-dir", "{w}/q9"],
    "train_pretrain_inside_save_dir": [
        *T,
        "--pretrain",
        "{w}/run/best_model",
        "--save-dir",
        "{w}/run",
    ],
    "train_pretrain_inside_overwrite": [
        *T,
        "--pretrain",
        "{w}/run/best_model",
        "--save-dir",
        "{w}/run",
        "--overwrite",
    ],
    "train_over_finished_run": [*T, "--save-dir", "{w}/run"],
    "train_over_foreign_best_model": [*T, "--save-dir", "{user}/run_foreign", "--overwrite"],
    "train_into_model_dir": [*T, "--save-dir", "{m}"],
    "train_onto_file": [*T, "--save-dir", "{user}/file.txt"],
    "train_unwritable": [*T, "--save-dir", "/proc/sys/slimkit_run"],
    "prune_over_other_model": ["prune", "{m}", "--ratios", "0.5", "--save-dir", "{p}"],
    "prune_into_source": ["prune", "{m}", "--ratios", "0.5", "--save-dir", "{m}"],
    "prune_into_source_overwrite": [
        "prune",
        "{m}",
        "--ratios",
        "0.5",
        "--save-dir",
        "{m}",
        "--overwrite",
    ],
    "prune_over_notes": [
        "prune",
        "{m}",
        "--ratios",
        "0.5",
        "--save-dir",
        "{user}/notes",
        "--overwrite",
    ],
    "prune_onto_file": ["prune", "{m}", "--ratios", "0.5", "--save-dir", "{user}/file.txt"],
    "prune_over_dataset": ["prune", "{m}", "--ratios", "0.5", "--save-dir", "{d}", "--overwrite"],
    "prune_containing_source": [
        "prune",
        "{m}",
        "--ratios",
        "0.5",
        "--save-dir",
        "{w}",
        "--overwrite",
    ],
    "make_over_user_data": ["datasets", "make", "--task", "cls", "{user}/own_data"],
    "make_over_user_data_overwrite": [
        "datasets",
        "make",
        "--task",
        "cls",
        "{user}/own_data",
        "--overwrite",
    ],
    "make_over_generated": ["datasets", "make", "--task", "cls", "{d}", "--num-train", "4"],
    "make_onto_file": ["datasets", "make", "--task", "cls", "{user}/file.txt"],
    "make_over_model": ["datasets", "make", "--task", "cls", "{m}", "--overwrite"],
    "make_under_file": ["datasets", "make", "--task", "seg", "{user}/file.txt/data"],
    "merge_onto_model_yml": ["merge", "{s}", "-o", "{m}/model.yml"],
    "merge_onto_model_yml_overwrite": ["merge", "{s}", "-o", "{m}/model.yml", "--overwrite"],
    "merge_onto_input": ["merge", "{s}", "-o", "{s}", "--overwrite"],
    "merge_over_sens_file": ["merge", "{s}", "-o", "{w}/s2.json"],
    "merge_onto_directory": ["merge", "{s}", "-o", "{user}/notes"],
    "merge_onto_user_file": ["merge", "{s}", "-o", "{user}/file.txt", "--overwrite"],
    "merge_missing_input": ["merge", "{w}/none.json", "-o", "{w}/all.json"],
    "merge_not_json": ["merge", "{user}/file.txt", "-o", "{w}/all.json"],
    "analyze_into_model_dir": ["analyze", "{m}", "--data", "{d}", "--save-file", "{m}/s.json"],
    "analyze_onto_model_dir": ["analyze", "{m}", "--data", "{d}", "--save-file", "{m}"],
    "analyze_onto_directory": ["analyze", "{m}", "--data", "{d}", "--save-file", "{user}/notes"],
    "analyze_onto_user_file": ["analyze", "{m}", "--data", "{d}", "--save-file", "{user}/file.txt"],
    "analyze_other_json": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{user}/not_sens.json",
    ],
    "visualize_over_plots": ["visualize", "{m}", "{s}", "--save-dir", "{w}/plots"],
    "visualize_onto_file": ["visualize", "{m}", "{s}", "--save-dir", "{user}/file.txt"],
    "bench_into_model": ["bench", "{m}", "--data", "{d}", "--out", "{m}", "--runs", "1"],
    "bench_onto_file": ["bench", "{m}", "--data", "{d}", "--out", "{user}/file.txt"],
    # -- flag values: type, finiteness, range
    "train_lr_nan": [*T, "--lr", "nan", "--save-dir", "{w}/new"],
    "train_lr_inf": [*T, "--lr", "inf", "--save-dir", "{w}/new"],
    "train_lr_zero": [*T, "--lr", "0", "--save-dir", "{w}/new"],
    "train_lr_negative": [*T, "--lr", "-0.1", "--save-dir", "{w}/new"],
    "train_lr_text": [*T, "--lr", "fast", "--save-dir", "{w}/new"],
    "train_epochs_negative": [*T, "--epochs", "-1", "--save-dir", "{w}/new"],
    "train_epochs_float": [*T, "--epochs", "1.5", "--save-dir", "{w}/new"],
    "train_batch_zero": [*T, "--batch-size", "0", "--save-dir", "{w}/new"],
    "train_batch_negative": [*T, "--batch-size", "-3", "--save-dir", "{w}/new"],
    "train_save_interval_zero": [*T, "--save-interval", "0", "--save-dir", "{w}/new"],
    "train_input_zero": [*T, "--input-size", "0", "--save-dir", "{w}/new"],
    "train_input_huge": [*T, "--input-size", "100000", "--save-dir", "{w}/new"],
    "train_width_nan": [*T, "--width-mult", "nan", "--save-dir", "{w}/new"],
    "train_width_zero": [*T, "--width-mult", "0", "--save-dir", "{w}/new"],
    "train_width_huge": [*T, "--width-mult", "1e6", "--save-dir", "{w}/new"],
    "train_base_channels_zero": [*T, "--base-channels", "0", "--save-dir", "{w}/new"],
    "train_metric_loss_nan": [*T, "--eval-metric-loss", "nan", "--save-dir", "{w}/new"],
    "train_metric_loss_big": [*T, "--eval-metric-loss", "1.5", "--save-dir", "{w}/new"],
    "train_round_to_negative": [*T, "--round-to", "-8", "--save-dir", "{w}/new"],
    "train_unknown_model": ["train", "--model", "resnet9000", "--data", "{d}"],
    "train_unknown_optimizer": [*T, "--optimizer", "lion", "--save-dir", "{w}/new"],
    "train_missing_sensitivities": [
        *T,
        "--sensitivities",
        "{w}/none.json",
        "--save-dir",
        "{w}/new",
    ],
    "train_sensitivities_not_json": [
        *T,
        "--sensitivities",
        "{user}/file.txt",
        "--save-dir",
        "{w}/new",
    ],
    "train_missing_pretrain": [*T, "--pretrain", "{w}/none", "--save-dir", "{w}/new"],
    "train_pretrain_quant": [*T, "--pretrain", "{q}", "--save-dir", "{w}/new"],
    "prune_ratio_nan": ["prune", "{m}", "--ratios", "nan", "--save-dir", "{w}/new"],
    "prune_ratio_one": ["prune", "{m}", "--ratios", "1", "--save-dir", "{w}/new"],
    "prune_ratio_negative": ["prune", "{m}", "--ratios", "-0.1", "--save-dir", "{w}/new"],
    "prune_ratio_inf": ["prune", "{m}", "--ratios", "inf", "--save-dir", "{w}/new"],
    "prune_ratio_text": ["prune", "{m}", "--ratios", "half", "--save-dir", "{w}/new"],
    "prune_ratios_bad_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_bad.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_ratios_nan_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_nan.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_ratios_big_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_big.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_ratios_list_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_list.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_ratios_text_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_text.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_ratios_directory": ["prune", "{m}", "--ratios", "{user}/notes", "--save-dir", "{w}/new"],
    "prune_ratio_one_json": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/not_sens.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_unknown_group": [
        "prune",
        "{m}",
        "--ratios",
        "{user}/ratios_unknown.json",
        "--save-dir",
        "{w}/new",
    ],
    "prune_round_to_negative": [
        "prune",
        "{m}",
        "--ratios",
        "0.5",
        "--round-to",
        "-1",
        "--save-dir",
        "{w}/new",
    ],
    "prune_criterion": [
        "prune",
        "{m}",
        "--ratios",
        "0.5",
        "--criterion",
        "l3",
        "--save-dir",
        "{w}/new",
    ],
    "prune_quant_model": ["prune", "{q}", "--ratios", "0.5", "--save-dir", "{w}/new"],
    "quantize_batch_num_zero": [
        "quantize",
        "{m}",
        "--data",
        "{d}",
        "--batch-num",
        "0",
        "--save-dir",
        "{w}/new",
    ],
    "quantize_batch_size_zero": [
        "quantize",
        "{m}",
        *Q,
        "--batch-size",
        "0",
        "--save-dir",
        "{w}/new",
    ],
    "quantize_drop_nan": [
        "quantize",
        "{m}",
        *Q,
        "--max-metric-drop",
        "nan",
        "--save-dir",
        "{w}/new",
    ],
    "quantize_drop_negative": [
        "quantize",
        "{m}",
        *Q,
        "--max-metric-drop",
        "-1",
        "--save-dir",
        "{w}/new",
    ],
    "quantize_algo": ["quantize", "{m}", *Q, "--algo", "magic", "--save-dir", "{w}/new"],
    "predict_threshold_nan": ["predict", "{m}", "{user}/truncated.jpg", "--threshold", "nan"],
    "predict_threshold_big": ["predict", "{m}", "{user}/truncated.jpg", "--threshold", "2"],
    "evaluate_batch_zero": ["evaluate", "{m}", "--data", "{d}", "--batch-size", "0"],
    "analyze_batch_zero": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{w}/new.json",
        "--batch-size",
        "0",
    ],
    "analyze_loss_cap_nan": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{w}/new.json",
        "--loss-cap",
        "nan",
    ],
    "analyze_shard_out_of_range": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{w}/new.json",
        "--shard",
        "2/2",
    ],
    "analyze_shard_text": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{w}/new.json",
        "--shard",
        "a/b",
    ],
    "analyze_shard_three": [
        "analyze",
        "{m}",
        "--data",
        "{d}",
        "--save-file",
        "{w}/new.json",
        "--shard",
        "1/2/3",
    ],
    "make_num_train_zero": ["datasets", "make", "--task", "cls", "{w}/new", "--num-train", "0"],
    "make_image_size_small": ["datasets", "make", "--task", "cls", "{w}/new", "--image-size", "16"],
    "make_image_size_huge": [
        "datasets",
        "make",
        "--task",
        "cls",
        "{w}/new",
        "--image-size",
        "100000",
    ],
    "make_seed_negative": ["datasets", "make", "--task", "cls", "{w}/new", "--seed", "-1"],
    "make_task": ["datasets", "make", "--task", "pose", "{w}/new"],
    "visualize_loss_nan": [
        "visualize",
        "{m}",
        "{s}",
        "--save-dir",
        "{w}/new",
        "--eval-metric-loss",
        "nan",
    ],
    "bench_threads_zero": ["bench", "{m}", "--data", "{d}", "--out", "{w}/new", "--threads", "0"],
    "bench_runs_zero": ["bench", "{m}", "--data", "{d}", "--out", "{w}/new", "--runs", "0"],
    "demo_task": ["demo", "--tasks", "pose", "--out", "{w}/new"],
    # -- files: model directories, images, datasets
    **{f"yml_{name}": ["evaluate", "{w}/bad/" + name, "--data", "{d}"] for name in YML_CHANGES},
    **{
        f"dir_{name}": ["evaluate", "{w}/bad/" + name, "--data", "{d}"]
        for name in (
            "onnx_garbage",
            "onnx_empty",
            "onnx_missing",
            "weights_missing",
            "weights_garbage",
            "weights_other",
            "plan_missing",
            "plan_garbage",
            "yml_is_dir",
            "yml_binary",
            *PLAN_CHANGES,
        )
    },
    "model_dir_missing": ["evaluate", "{w}/none", "--data", "{d}"],
    "model_dir_is_file": ["evaluate", "{user}/file.txt", "--data", "{d}"],
    "model_dir_is_dataset": ["evaluate", "{d}", "--data", "{d}"],
    "predict_text_file": ["predict", "{m}", "{user}/file.txt"],
    "predict_bomb": ["predict", "{m}", "{user}/bomb.png"],
    "predict_big": ["predict", "{m}", "{user}/big.png"],
    "predict_over_limit": ["predict", "{m}", "{user}/over_limit.png"],
    "predict_truncated": ["predict", "{m}", "{user}/truncated.jpg"],
    "predict_missing": ["predict", "{m}", "{w}/none.jpg"],
    "predict_directory": ["predict", "{m}", "{user}/notes"],
    "predict_quant_garbage": ["predict", "{w}/bad/onnx_garbage", "{user}/bomb.png"],
    "data_missing": ["evaluate", "{m}", "--data", "{w}/none"],
    "data_is_file": ["evaluate", "{m}", "--data", "{user}/file.txt"],
    "data_corrupt_image": ["evaluate", "{m}", "--data", "{w}/bad_data/corrupt_image"],
    "data_bad_label": ["evaluate", "{m}", "--data", "{w}/bad_data/bad_label"],
    "data_missing_image": ["evaluate", "{m}", "--data", "{w}/bad_data/missing_image"],
    "data_empty_labels": ["evaluate", "{m}", "--data", "{w}/bad_data/empty_labels"],
    "data_no_lists": ["evaluate", "{m}", "--data", "{w}/bad_data/no_lists"],
    "data_user_own": ["evaluate", "{m}", "--data", "{user}/own_data"],
    "data_split": ["evaluate", "{m}", "--data", "{d}", "--split", "test"],
    "quantize_corrupt_data": [
        "quantize",
        "{m}",
        "--data",
        "{w}/bad_data/corrupt_image",
        "--save-dir",
        "{w}/new",
    ],
    "analyze_other_task_data": [
        "analyze",
        "{m}",
        "--data",
        "{user}/notes",
        "--save-file",
        "{w}/new.json",
    ],
}


def run(world: Path, argv: list[str], capsys) -> tuple[int, str]:
    places = {"w": world, "d": world / "d", "m": world / "m", "p": world / "p"}
    places.update(q=world / "q", s=world / "s.json", user=world / "user")
    args = [a.format(**{k: str(v) for k, v in places.items()}) for a in argv]
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse errors
        code = e.code
    return code, capsys.readouterr().err


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_touches_nothing(world, name, capsys):
    before = snapshot(world)
    code, err = run(world, CASES[name], capsys)
    lines = visible_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("slimkit: error: "), err
    assert "Traceback" not in err
    assert snapshot(world) == before  # nothing added, removed or changed; no temporary files


EXPECTED = {  # what the line says, for the cases the issue reported
    "quantize_into_source": "never writes over its own input",
    "train_pretrain_inside_save_dir": "never writes over its own input",
    "prune_over_other_model": "--overwrite",
    "make_over_user_data": "never replaces them",
    "merge_onto_model_yml": "not a file slimkit wrote",
    "train_save_interval_zero": "--save-interval",
    "train_lr_nan": "finite",
    "quantize_drop_nan": "finite",
    "predict_threshold_nan": "finite",
    "yml_classes_float": "num_classes must be an integer",
    "yml_classes_huge": "num_classes must be in [1, 100000]",
    "yml_input_huge": "input_size must be in [1, 8192]",
    "yml_labels_short": "labels must be a list of 4 class names",
    "yml_task_xyz": "task must be one of",
    "dir_onnx_garbage": "ONNX Runtime cannot load",
    "dir_onnx_empty": "ONNX Runtime cannot load",
    "predict_bomb": "bomb",
    "predict_over_limit": "more than slimkit decodes",
    "train_unwritable": "no write permission",
    "yml_width_huge": "parameters",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_line_says_what_was_wrong(world, name, capsys):
    code, err = run(world, CASES[name], capsys)
    assert code == 2 and EXPECTED[name] in err, err


def test_a_model_yml_written_by_slimkit_is_accepted(world):
    """The checks do not refuse what slimkit writes (the world's own model directories)."""
    import slimkit

    for d in ("m", "p", "q"):
        assert slimkit.load_model(world / d).status in ("Normal", "Prune", "Quant")
    info = json.loads(json.dumps(slimkit.load_model(world / "m").info()))
    assert info["num_classes"] == 4 and info["input_size"] == [32, 32]
