"""The ``slimkit`` command. Each subcommand parses its flags and calls one library function.

Expected user errors become one line ``slimkit: error: ...`` on stderr and exit status 2: bad flags
(every number is checked for type, finiteness and range as it is parsed), ``ValueError`` (which
includes ``DatasetError`` and what the libraries convert from ONNX Runtime, Pillow, YAML and
safetensors errors), ``OSError`` (a missing, unreadable or unwritable file, a full disk) and
``MemoryError``. Anything else (``TypeError``, ``AttributeError``, ...) is a bug and shows its
traceback. Outputs follow :mod:`slimkit._outputs`: existing results are replaced only with
``--overwrite``, inputs never.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from slimkit import slim
from slimkit._checks import MAX_CLASSES, MAX_INPUT_SIDE, check_float, check_int
from slimkit._outputs import check_target
from slimkit.bench.report import run_bench
from slimkit.data.generate import make_dataset
from slimkit.demo import run_demo
from slimkit.models import TASKS, list_models
from slimkit.models.external import load_weights, register_model_def
from slimkit.prune import CRITERIA, merge_sensitivities
from slimkit.quant.config import ALGOS
from slimkit.tasks.base import BaseTask
from slimkit.tasks.budget import PRUNE_MODES
from slimkit.tasks.distributed import is_main
from slimkit.tasks.factory import create_task, open_split, task_of
from slimkit.tasks.loading import load_model
from slimkit.tasks.modeldir import read_model_yml

USER_ERRORS = (ValueError, OSError, MemoryError)


def _message(error: BaseException) -> str:
    """One line for a user error (an OSError names the file and the reason)."""
    if isinstance(error, OSError) and error.strerror:
        names = " -> ".join(repr(str(f)) for f in (error.filename, error.filename2) if f)
        text = f"{error.strerror}: {names}" if names else error.strerror
    elif isinstance(error, MemoryError):
        text = f"out of memory{': ' + str(error) if str(error) else ''}; use smaller inputs"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


# -- flag types: a bad value is a one-line argparse error naming the flag -----------------------
def _flag(
    convert: Callable[[str], Any], check: Callable[..., Any], *bounds: Any, **kw: Any
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then ``check`` the value against the bounds."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value, "the value", *bounds, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = convert.__name__
    return parse


def _int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    return _flag(int, check_int, low, high)


def _float(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    return _flag(float, check_float, low, high, low_open=low_open, high_open=high_open)


_POSITIVE = _int(1)
_FRACTION = _float(0.0, 1.0, low_open=True, high_open=True)


def _ratios_arg(text: str) -> float | dict[str, float]:
    """``0.5`` (uniform) or a JSON file of ``{group: ratio}``."""
    try:
        uniform = float(text)
    except ValueError:
        uniform = None
    if uniform is not None:
        return check_float(uniform, "--ratios", 0.0, 1.0, high_open=True)
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"--ratios must be a number or a JSON file of {{group: ratio}}; {text!r} is neither"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{text!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{text!r} must hold a JSON object {{group: ratio}}")
    try:
        return {
            str(k): check_float(v, f"{text!r}: the ratio of {k!r}", 0.0, 1.0, high_open=True)
            for k, v in data.items()
        }
    except TypeError as e:  # a string or a list where a ratio is due: the file's content
        raise ValueError(str(e)) from None


def _shard_arg(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return (i, n)


def _list_arg(text: str | None) -> list[str] | None:
    """A comma-separated flag as a list (None when the flag is absent)."""
    return [t for t in text.split(",") if t] if text else None


# -- commands --------------------------------------------------------------------------------------
def cmd_datasets_make(a: argparse.Namespace) -> None:
    paths = make_dataset(
        a.task,
        a.dir,
        num_train=a.num_train,
        num_val=a.num_val,
        image_size=a.image_size,
        seed=a.seed,
        overwrite=a.overwrite,
        classes=a.classes.split(",") if a.classes else None,
    )
    print(f"wrote the built-in {a.task} dataset to {a.dir}")
    for k, v in paths.items():
        print(f"  {k}: {v}")


def cmd_train(a: argparse.Namespace) -> None:
    task = task_of(a.model)
    train_ds = open_split(task, a.data, "train")
    eval_ds = open_split(task, a.data, "val")
    kwargs = {}
    if a.width_mult is not None:
        kwargs["width_mult"] = a.width_mult
    if a.base_channels is not None:
        kwargs["base_channels"] = a.base_channels
    model = create_task(
        a.model, train_ds.num_classes, a.input_size, labels=train_ds.labels, **kwargs
    )
    best = model.train(
        num_epochs=a.epochs,
        train_dataset=train_ds,
        train_batch_size=a.batch_size,
        eval_dataset=eval_ds,
        learning_rate=a.lr,
        optimizer=a.optimizer,
        warmup_steps=a.warmup_steps,
        save_dir=a.save_dir,
        pretrain_weights=a.pretrain,
        sensitivities_file=a.sensitivities,
        eval_metric_loss=a.eval_metric_loss,
        prune_mode=a.prune_mode,
        pruned_flops=a.pruned_flops,
        prune_round_to=a.round_to or None,
        save_interval_epochs=a.save_interval,
        overwrite=a.overwrite,
    )
    if is_main():  # under torchrun, rank 0 speaks for the job
        print(f"best model: {Path(a.save_dir) / 'best_model'} " + json.dumps(best))


def cmd_evaluate(a: argparse.Namespace) -> None:
    model = _load(a, a.model_dir)
    ds = open_split(model.task, a.data, a.split)
    print(json.dumps(model.evaluate(ds, batch_size=a.batch_size, progress=True)))


def cmd_predict(a: argparse.Namespace) -> None:
    model = _load(a, a.model_dir)
    for image in a.images:
        result = model.predict(image)
        if model.task == "seg":
            label_map = result["label_map"]
            counts = {
                model.labels[int(c)]: int((label_map == c).sum()) for c in set(label_map.flat)
            }
            result = {"pixels_per_class": counts}
        elif model.task == "det":
            result = [r for r in result if r["score"] >= a.threshold]
        print(json.dumps({"image": str(image), "result": result}))


def _trust_model_def(a: argparse.Namespace, model_dirs: list[str]) -> None:
    """``--model-def`` next to model directories: the user trusts that definition, so the
    directories saved from it may import it (``load_model`` refuses untrusted ones)."""
    trusted = getattr(a, "model_def", None)
    if trusted is None:
        return
    for model_dir in model_dirs:
        info = read_model_yml(Path(model_dir))
        if info["architecture"] == trusted:
            register_model_def(trusted, info["task"], info["input_size"])
            return
    raise ValueError(f"--model-def {trusted}: none of {model_dirs} was saved from it")


def _load(a: argparse.Namespace, model_dir: str) -> BaseTask:
    _trust_model_def(a, [model_dir])
    return load_model(model_dir)


def _open_model(a: argparse.Namespace) -> tuple[BaseTask, Any]:
    """The model of a command (a model directory, or ``--model-def`` + ``--weights``) and, when
    the command has ``--data``, the dataset split it reads."""
    if a.model_dir is None and a.model_def is None:
        raise ValueError("give a model directory or --model-def MODULE:FACTORY")
    data = getattr(a, "data", None)
    if a.model_dir is not None:
        if a.weights is not None:
            raise ValueError("--weights goes with --model-def; a model directory has its own")
        model = _load(a, a.model_dir)
        return model, None if data is None else open_split(model.task, data, a.split)
    name = register_model_def(a.model_def, a.task, a.input_size)
    ds = None if data is None else open_split(a.task, data, a.split)
    num_classes = a.num_classes if a.num_classes is not None else getattr(ds, "num_classes", None)
    if num_classes is None:
        raise ValueError("--model-def needs --num-classes (or --data to read it from)")
    labels = getattr(ds, "labels", None) if a.num_classes is None else None
    model = create_task(name, num_classes, a.input_size, labels=labels)
    if a.weights is not None:
        assert model.net is not None
        load_weights(model.net, a.weights)
    else:
        print(f"note: no --weights: {a.model_def} keeps its factory's weights", file=sys.stderr)
    return model, ds


def cmd_prune(a: argparse.Namespace) -> None:
    plain_dir = a.model_def is None and a.model_dir is not None and a.weights is None
    target = a.model_dir if plain_dir else _open_model(a)[0]  # slim.prune checks --save-dir
    slim.prune(
        target,
        _ratios_arg(a.ratios),
        a.save_dir,
        criterion=a.criterion,
        round_to=a.round_to or None,
        overwrite=a.overwrite,
        verify=a.verify,
    )
    print(f"pruned model written to {a.save_dir}")


def cmd_analyze(a: argparse.Namespace) -> None:
    model, ds = _open_model(a)
    slim.analysis(
        model,
        ds,
        batch_size=a.batch_size,
        save_file=a.save_file,
        groups=_list_arg(a.groups),
        shard=_shard_arg(a.shard),
        loss_cap=a.loss_cap,
        restart=a.restart,
        criterion=a.criterion,
        exact=a.exact,
    )
    if is_main():
        print(f"sensitivities written to {a.save_file}")


def _not_sensitivities(path: Path) -> list[str]:
    """``[path.name]`` unless ``path`` is a JSON file that ``slimkit analyze`` or ``merge`` wrote."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [path.name]
    ours = isinstance(record, dict) and "sensitivities" in record and "metric" in record
    return [] if ours else [path.name]


def cmd_merge(a: argparse.Namespace) -> None:
    check_target(
        a.output, "file", overwrite=a.overwrite, sources=a.files, foreign=_not_sensitivities
    )
    merged = merge_sensitivities(a.files, save_file=a.output)
    print(f"merged {len(a.files)} files ({len(merged['sensitivities'])} groups) into {a.output}")


def cmd_visualize(a: argparse.Namespace) -> None:
    paths = slim.visualize(
        _load(a, a.model_dir),
        a.sensitivities,
        a.save_dir,
        eval_metric_loss=a.eval_metric_loss,
        overwrite=a.overwrite,
    )
    for p in paths:
        print(f"wrote {p}")


def cmd_quantize(a: argparse.Namespace) -> None:
    model, ds = _open_model(a)
    slim.export_quant_model(
        model,
        ds,
        batch_size=a.batch_size,
        batch_num=a.batch_num,
        save_dir=a.save_dir,
        cache_dir=a.cache_dir,
        algo=a.algo,
        max_metric_drop=a.max_metric_drop,
        exclude=tuple(_list_arg(a.exclude) or ()),
        overwrite=a.overwrite,
    )
    print(f"INT8 model written to {a.save_dir}")


def cmd_bench(a: argparse.Namespace) -> None:
    _trust_model_def(a, a.model_dirs)
    run_bench(
        a.model_dirs,
        a.data,
        a.out,
        split=a.split,
        threads=a.threads,
        runs=a.runs,
        names=_list_arg(a.names),
        overwrite=a.overwrite,
    )


def cmd_demo(a: argparse.Namespace) -> None:
    run_demo(a.out, quick=a.quick, tasks=a.tasks.split(","), eval_metric_loss=a.eval_metric_loss)


# -- parser ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``slimkit: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("slimkit").strip()
        self.exit(2, f"slimkit: error: {command + ': ' if command else ''}{message}\n")


if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[_Parser]


def _add(
    sub: Subparsers, name: str, func: Callable[[argparse.Namespace], None], help: str
) -> _Parser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(func=func)
    return parser


def _add_overwrite(parser: _Parser, what: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} (never the inputs, never files slimkit did not write)",
    )


def _add_datasets(sub: Subparsers) -> None:
    ds = sub.add_parser("datasets", help="built-in datasets")
    mk = _add(
        ds.add_subparsers(dest="action", required=True),
        "make",
        cmd_datasets_make,
        "write a built-in dataset in the standard on-disk format",
    )
    mk.add_argument("--task", choices=TASKS, required=True)
    mk.add_argument("dir")
    mk.add_argument("--num-train", type=_POSITIVE)
    mk.add_argument("--num-val", type=_POSITIVE)
    mk.add_argument("--image-size", type=_int(32, MAX_INPUT_SIDE))
    mk.add_argument("--seed", type=_int(0), default=0)
    _add_overwrite(mk, "a dataset generated before in DIR")
    mk.add_argument(
        "--classes", help="comma-separated shape kinds (default: the task's; see PRETRAIN_CLASSES)"
    )


def _add_train(sub: Subparsers) -> None:
    tr = _add(sub, "train", cmd_train, "train (or prune + fine-tune) a zoo model")
    tr.add_argument("--model", required=True, choices=[m for t in TASKS for m in list_models(t)])
    tr.add_argument("--data", required=True, help="dataset directory with train/val lists")
    tr.add_argument("--epochs", type=_int(0), default=10)
    tr.add_argument("--batch-size", type=_POSITIVE, default=32)
    tr.add_argument(
        "--lr",
        type=_float(0.0, low_open=True),
        help="peak learning rate (default: 2e-3 for adam, 0.025 for sgd)",
    )
    tr.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    tr.add_argument(
        "--warmup-steps", type=_int(0), default=0, help="linear learning-rate warm-up steps"
    )
    tr.add_argument("--input-size", type=_int(1, MAX_INPUT_SIDE), default=224)
    tr.add_argument("--width-mult", type=_float(0.0, 16.0, low_open=True))
    tr.add_argument("--base-channels", type=_int(1, 4096))
    tr.add_argument("--save-dir", default="output")
    tr.add_argument("--save-interval", type=_POSITIVE, default=1)
    tr.add_argument(
        "--pretrain",
        help="model directory whose weights initialise training, or BUILTIN (slimkit's own "
        "pretrained weights for the model and width, heads excluded)",
    )
    tr.add_argument("--sensitivities", help="sensitivity file (method 1) or DEFAULT (method 2)")
    tr.add_argument("--eval-metric-loss", type=_FRACTION, default=0.05)
    tr.add_argument(
        "--prune-mode",
        choices=PRUNE_MODES,
        default="budget",
        help="budget: back the ratios off until the pruned model is within the budget "
        "(default); per_group: PaddleX's per-group choice",
    )
    tr.add_argument(
        "--pruned-flops",
        type=float,  # checked by the library (budget.check_prune_options), NaN included
        help="instead of --eval-metric-loss, remove this fraction of the FLOPs (0.4 keeps 60%%)",
    )
    tr.add_argument(
        "--round-to", type=_int(0), default=8, help="kept channels a multiple of (0: off)"
    )
    _add_overwrite(tr, "model directories at SAVE_DIR/best_model and SAVE_DIR/epoch_N")


def _add_model_commands(sub: Subparsers) -> None:
    ev = _add(sub, "evaluate", cmd_evaluate, "evaluate a model directory")
    ev.add_argument("model_dir")
    _add_trust(ev)
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="val")
    ev.add_argument("--batch-size", type=_POSITIVE, default=8)

    pr = _add(sub, "predict", cmd_predict, "predict images with a model directory")
    pr.add_argument("model_dir")
    _add_trust(pr)
    pr.add_argument("images", nargs="+")
    pr.add_argument(
        "--threshold", type=_float(0.0, 1.0), default=0.3, help="det: minimum score shown"
    )


def _add_trust(parser: _Parser) -> None:
    parser.add_argument(
        "--model-def",
        metavar="MODULE:FACTORY",
        help="a directory saved from a model defined outside slimkit: import (trust) its code",
    )


def _add_model_def(parser: _Parser) -> None:
    """``MODEL_DIR`` or a model defined outside slimkit (``--model-def`` and friends)."""
    parser.add_argument("model_dir", nargs="?", help="a model directory (or use --model-def)")
    own = parser.add_argument_group("a model defined outside slimkit (instead of MODEL_DIR)")
    own.add_argument(
        "--model-def",
        metavar="MODULE:FACTORY",
        help="pkg.module:fn or file.py:fn (with MODEL_DIR: trust the code it was saved from)",
    )
    own.add_argument("--weights", help="its weights: .safetensors or a torch.save'd state dict")
    own.add_argument("--task", choices=TASKS, default="cls", help="what its outputs are")
    own.add_argument("--input-size", type=_int(1, MAX_INPUT_SIDE), default=224)
    own.add_argument("--num-classes", type=_int(1, MAX_CLASSES), help="default: from --data")


def _add_pruning(sub: Subparsers) -> None:
    pn = _add(sub, "prune", cmd_prune, "prune a model by a uniform ratio or a {group: ratio} JSON")
    _add_model_def(pn)
    pn.add_argument("--ratios", required=True, help="a float (uniform) or a JSON file")
    pn.add_argument("--save-dir", required=True)
    pn.add_argument("--criterion", choices=list(CRITERIA), default="l1")
    pn.add_argument(
        "--round-to", type=_int(0), default=8, help="kept channels a multiple of (0: off)"
    )
    pn.add_argument(
        "--verify", action="store_true", help="fail if pruned != original with channels zeroed"
    )
    _add_overwrite(pn, "a model directory at SAVE_DIR")

    an = _add(sub, "analyze", cmd_analyze, "sensitivity analysis on the validation set")
    _add_model_def(an)
    an.add_argument("--data", required=True)
    an.add_argument("--split", default="val")
    an.add_argument("--save-file", required=True)
    an.add_argument("--batch-size", type=_POSITIVE, default=8)
    an.add_argument("--groups", help="comma-separated group names (a worker's share)")
    an.add_argument("--shard", help="i/n: this worker's deterministic share of the groups")
    an.add_argument("--loss-cap", type=_float(0.0, low_open=True), default=1.0)
    an.add_argument("--criterion", choices=list(CRITERIA), default="l1")
    an.add_argument("--restart", action="store_true", help="discard a mismatching save file")
    an.add_argument(
        "--exact",
        action="store_true",
        help="numbers bit for bit the reference loop's (no channels-last batches)",
    )

    mg = _add(sub, "merge", cmd_merge, "merge sensitivity files computed on disjoint groups")
    mg.add_argument("files", nargs="+")
    mg.add_argument("-o", "--output", required=True)
    _add_overwrite(mg, "a sensitivity file at OUTPUT")

    vi = _add(sub, "visualize", cmd_visualize, "plot sensitivities (budget and per-group curves)")
    vi.add_argument("model_dir")
    _add_trust(vi)
    vi.add_argument("sensitivities")
    vi.add_argument("--save-dir", default=".")
    vi.add_argument("--eval-metric-loss", type=_FRACTION, default=0.05)
    _add_overwrite(vi, "the plots in SAVE_DIR")


def _add_quantize(sub: Subparsers) -> None:
    qu = _add(sub, "quantize", cmd_quantize, "post-training INT8 quantization to ONNX")
    _add_model_def(qu)
    qu.add_argument("--data", required=True)
    qu.add_argument("--split", default="val")
    qu.add_argument("--batch-size", type=_POSITIVE, default=1)
    qu.add_argument("--batch-num", type=_POSITIVE, default=10)
    qu.add_argument("--algo", default="KL", type=_algo_arg, choices=ALGOS)
    qu.add_argument("--save-dir", required=True)
    qu.add_argument("--cache-dir")
    qu.add_argument("--max-metric-drop", type=_float(0.0))
    qu.add_argument("--exclude", help="comma-separated ONNX node names kept in FP32")
    _add_overwrite(qu, "a model directory at SAVE_DIR")


def _algo_arg(text: str) -> str:
    """``--algo`` is case-insensitive (``kl`` → ``KL``), as ``QuantConfig`` is."""
    return {a.lower(): a for a in ALGOS}.get(text.lower(), text)


def _add_bench_demo(sub: Subparsers) -> None:
    be = _add(sub, "bench", cmd_bench, "size, metric and latency table for model directories")
    be.add_argument("model_dirs", nargs="+")
    _add_trust(be)
    be.add_argument("--data", required=True)
    be.add_argument("--split", default="val")
    be.add_argument("--names", help="comma-separated row names (default: directory names)")
    be.add_argument("--out", default="bench_output")
    be.add_argument("--threads", type=_POSITIVE, default=1)
    be.add_argument("--runs", type=_POSITIVE, default=20)
    _add_overwrite(be, "the report files in OUT")

    de = _add(sub, "demo", cmd_demo, "the end-to-end workflow on the built-in data")
    de.add_argument("--out", default="demo_output")
    de.add_argument("--quick", action="store_true", help="tiny sizes and few steps (used by tests)")
    de.add_argument("--tasks", default="cls,det,seg")
    de.add_argument(
        "--eval-metric-loss",
        type=float,
        help="pruning budget of methods 1 and 2 (default 0.10); another budget reuses the "
        "originals and writes method1_loss<budget>, ... beside them",
    )


def _parser() -> _Parser:
    p = _Parser(prog="slimkit", description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_datasets,
        _add_train,
        _add_model_commands,
        _add_pruning,
        _add_quantize,
        _add_bench_demo,
    ):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimkit`` console script."""
    args = _parser().parse_args(argv)  # a bad flag exits 2 with one line (_Parser.error)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"slimkit: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
