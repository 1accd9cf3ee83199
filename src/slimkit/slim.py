"""PaddleX-style façade for zoo models: ``analysis``, ``visualize``, ``prune``, ``export_quant_model``.

Each function adapts a task object (``slimkit.cls.MobileNetV2(...)``, ``slimkit.load_model(dir)``) to
the model-agnostic libraries in ``slimkit.prune`` and ``slimkit.quant``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._checks import check_float, check_int
from slimkit._outputs import check_sources, check_target
from slimkit.quant import QuantConfig, QuantResult, export_onnx, quantize
from slimkit.tasks import modeldir
from slimkit.tasks.base import BaseTask
from slimkit.tasks.checks import check_dataset, dataset_dirs
from slimkit.tasks.loading import load_model
from slimkit.tasks.logging import log
from slimkit.tasks.pruning import resolve_sensitivities

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _require_net(model: BaseTask, what: str) -> nn.Module:
    if not isinstance(model, BaseTask):
        raise TypeError(
            f"{what} takes a slimkit model (e.g. slimkit.cls.MobileNetV2 or slimkit.load_model(dir)), "
            f"got {type(model).__name__}; for a plain nn.Module use slimkit.prune / slimkit.quant"
        )
    if model.net is None:
        raise ValueError(f"{what} needs an FP32 model; this one is {model.status}")
    return model.net


def analysis(
    model: BaseTask,
    dataset: Any,
    batch_size: int = 8,
    save_file: str | os.PathLike = "model.sensi.json",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    groups: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    loss_cap: float = 1.0,
    restart: bool = False,
    criterion: str = "l1",
    progress: bool = True,
    exact: bool = False,
) -> dict[str, dict[float, float | None]]:
    """Sensitivity of every prunable group of a trained zoo model on ``dataset`` (its eval metric).

    Writes ``save_file`` after every point; re-running resumes it. Returns ``{group: {ratio: loss}}``.
    ``exact=True`` keeps the numbers bit for bit those of the reference loop (see
    `slimkit.prune.analyze_sensitivity`).
    """
    # torch-pruning is heavy: slimkit.prune loads when a slim function runs, not on `import slimkit`
    from slimkit.prune import analyze_sensitivity

    net = _require_net(model, "slim.analysis").cpu().eval()
    check_int(batch_size, "batch_size", 1)
    if save_file is not None:
        check_target(save_file, "resume", sources=[model.source_dir, *dataset_dirs(dataset)])
    data = model.eval_batches(dataset, batch_size)
    return analyze_sensitivity(
        net,
        data,
        model.metric_fn,
        ratios=tuple(ratios),
        save_file=save_file,
        groups=groups,
        shard=shard,
        loss_cap=loss_cap,
        restart=restart,
        criterion=criterion,
        progress=progress,
        exact=exact,
        metric_name=model.metric_name,
        architecture=model.sensitivity_key,
        example_inputs=model.example_inputs(),
    )


def visualize(
    model: BaseTask,
    sensitivities_file: str | os.PathLike,
    save_dir: str | os.PathLike = "./",
    eval_metric_loss: float = 0.05,
    overwrite: bool = False,
) -> list[Path]:
    """Write the PaddleX-style sensitivity plots for a model; returns the PNG paths.

    ``sensi_budget.png``: eval_metric_loss (x) vs the fraction of params and FLOPs pruned (y);
    ``sensi_groups.png``: every group's loss-vs-ratio curve with the ratio chosen at the budget.
    Existing plots of these names are replaced only with ``overwrite=True``.
    """
    from slimkit.prune import load_sensitivities  # heavy (torch-pruning, matplotlib), see above
    from slimkit.prune.plots import plot_budget_curve, plot_group_curves

    net = _require_net(model, "slim.visualize")
    check_float(eval_metric_loss, "eval_metric_loss", 0.0, 1.0, low_open=True, high_open=True)
    path = resolve_sensitivities(model.sensitivity_key, sensitivities_file)
    save_dir = Path(save_dir)
    budget, groups = save_dir / "sensi_budget.png", save_dir / "sensi_groups.png"
    for target in (budget, groups):
        check_target(target, "file", overwrite=overwrite, sources=[path, model.source_dir])
    sens = load_sensitivities(path)
    save_dir.mkdir(parents=True, exist_ok=True)
    plot_budget_curve(sens, net.cpu().eval(), model.example_inputs(), budget)
    plot_group_curves(sens, groups, eval_metric_loss=eval_metric_loss)
    return [budget, groups]


def prune(
    model_dir: str | os.PathLike[str] | BaseTask,
    ratios: float | dict[str, float],
    save_dir: str | os.PathLike,
    criterion: str = "l1",
    round_to: int | None = 8,
    overwrite: bool = False,
    verify: bool = False,
) -> BaseTask:
    """Prune a saved model (uniform ratio or ``{group: ratio}``), log params/FLOPs, save it.

    ``model_dir`` may also be a task object (e.g. a model defined outside slimkit, see
    :mod:`slimkit.models.external`). The same path as ``train(sensitivities_file=...)``:
    :meth:`BaseTask.prune`; ``verify=True`` fails on a mismatch with the masked original.
    ``save_dir`` must be new or empty, or (with ``overwrite=True``) a model directory other than
    the input.
    """
    ratios = _ratios(ratios)
    if round_to is not None:
        check_int(round_to, "round_to", 1)
    model = model_dir if isinstance(model_dir, BaseTask) else load_model(model_dir)
    _require_net(model, "prune")
    modeldir.check_model_target(save_dir, overwrite, sources=[model.source_dir])
    model.prune(ratios, criterion=criterion, round_to=round_to, verify=verify)
    model.save(save_dir, overwrite=overwrite)
    return model


def _names(value: Any, name: str) -> tuple[str, ...]:
    """Names or patterns: one string is one name (never split into characters)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(v, str) for v in value
    ):
        raise TypeError(f"{name} must be a string or a list of strings, got {value!r}")
    return tuple(value)


def _ratios(ratios: Any) -> float | dict[str, float]:
    """A uniform ratio (a number, or a string holding one) or ``{group: ratio}``, values checked."""
    if isinstance(ratios, str):
        try:
            ratios = float(ratios)
        except ValueError:
            raise ValueError(
                f"ratios must be a number or {{group: ratio}}, got the string {ratios!r}"
            ) from None
    if isinstance(ratios, dict):
        return {
            str(g): check_float(r, f"ratio of {g!r}", 0.0, 1.0, high_open=True)
            for g, r in ratios.items()
        }
    return check_float(ratios, "ratios", 0.0, 1.0, high_open=True)


def export_quant_model(
    model: BaseTask,
    test_dataset: Any,
    batch_size: int = 1,
    batch_num: int = 10,
    save_dir: str | os.PathLike = "./quant_model",
    cache_dir: str | os.PathLike | None = None,
    algo: str = "KL",
    max_metric_drop: float | None = None,
    exclude: Sequence[str] | str = (),
    keep_fp32_if_slower: bool = True,
    overwrite: bool = False,
) -> BaseTask:
    """Post-training INT8 quantization (KL calibration by default) to an ONNX Quant model directory.

    Exports the FP32 net to ONNX (static batch 1), calibrates activation ranges on
    ``batch_size × batch_num`` samples of ``test_dataset``, writes a QDQ INT8 model that ONNX Runtime
    runs on CPU, evaluates FP32 and INT8 on ``test_dataset`` and saves a ``Quant`` model directory.
    With ``max_metric_drop`` (absolute, in metric units) the worst layers stay FP32 until the INT8
    metric is within that drop. Where INT8 runs slower than FP32 on this CPU (tiny nets), the FP32
    model is shipped as ``model.onnx`` with a message (``keep_fp32_if_slower=False``: always INT8);
    ``model.yml``'s ``quant`` section records the choice, both latencies, the INT8 metric, how the
    ranges were chosen and the bias-corrected layers.
    ``exclude`` takes node names or patterns (one string is one pattern). ``save_dir`` must be
    new or empty, or (with ``overwrite=True``) a model directory; never the directory ``model``
    was loaded from. Returns the loaded Quant model.
    """
    _require_net(model, "slim.export_quant_model")
    check_dataset(test_dataset, "test_dataset")
    check_int(batch_size, "batch_size", 1)
    check_int(batch_num, "batch_num", 1)
    if max_metric_drop is not None:
        check_float(max_metric_drop, "max_metric_drop", 0.0)
    if len(test_dataset) == 0:
        raise ValueError("the calibration dataset is empty")
    exclude = _names(exclude, "exclude")
    config = QuantConfig(
        algo=algo, batch_num=batch_num, exclude=exclude, max_metric_drop=max_metric_drop
    )
    sources = [model.source_dir, *dataset_dirs(test_dataset)]
    save_dir = modeldir.check_model_target(save_dir, overwrite, sources)
    if cache_dir is not None:
        check_sources(cache_dir, sources)
    with modeldir.writing(save_dir, overwrite, sources) as tmp:
        info = _quantize_into(
            tmp, model, test_dataset, batch_size, config, cache_dir, keep_fp32_if_slower
        )
        modeldir.write_model_yml(tmp, info)
    int8_metric, fp32_metric = info["quant"]["int8_metric"], info["fp32_metrics"]
    log(
        f"INT8 {model.metric_name} {int8_metric:.4f} "
        f"(FP32 {fp32_metric[model.metric_name]:.4f}; shipped {info['quant']['shipped']}) "
        f"-> {save_dir}"
    )
    return load_model(save_dir)


def _quantize_into(
    out: Path,
    model: BaseTask,
    dataset: Any,
    batch_size: int,
    config: QuantConfig,
    cache_dir: str | os.PathLike | None,
    keep_fp32_if_slower: bool = True,
) -> dict[str, Any]:
    """Write the FP32 and INT8 ONNX files of ``model`` into ``out``; returns the ``model.yml`` dict."""
    from slimkit.prune.counting import count_macs, count_params  # heavy, see analysis()

    assert model.net is not None
    fp32, int8 = out / modeldir.ONNX_FP32, out / modeldir.ONNX_INT8
    export_onnx(model.net.cpu().eval(), model.example_inputs(), fp32)

    def eval_fn(onnx_path: str | os.PathLike) -> float:
        with model.using_onnx(onnx_path):
            return float(model.evaluate(dataset)[model.metric_name])

    result = quantize(
        fp32,
        model.make_loader(dataset, batch_size),
        int8,
        config,
        cache_dir=None if cache_dir is None else Path(cache_dir),
        fp32_path=fp32,
        eval_fn=eval_fn if config.max_metric_drop is not None else None,
    )
    fp32_metric, int8_metric = eval_fn(fp32), eval_fn(int8)
    shipped = _ship_faster(result, int8, fp32) if keep_fp32_if_slower else "int8"
    info = model.info()
    info.update(
        status="Quant",
        metrics={model.metric_name: fp32_metric if shipped == "fp32" else int8_metric},
        params=count_params(model.net),
        macs=count_macs(model.net, model.example_inputs()),
        fp32_metrics={model.metric_name: fp32_metric},
        quant={
            "algo": config.algo,
            "batch_size": batch_size,
            "batch_num": config.batch_num,
            "fp32_nodes": list(result.fp32_nodes),
            **_quant_record(result, int8_metric, shipped),
        },
    )
    return info


def _ship_faster(result: QuantResult, int8: Path, fp32: Path) -> str:
    """Keep the INT8 model only where it runs faster than FP32; else ship FP32 as ``model.onnx``."""
    import shutil

    if result.int8_faster is not False:
        return "int8"
    ms = result.latency_ms
    log(
        f"INT8 is slower than FP32 on this CPU ({ms['int8']:.3g} vs {ms['fp32']:.3g} ms, 1 thread):"
        f" {int8.name} holds the FP32 model; the INT8 one is kept as {int8.stem}_int8.onnx"
    )
    os.replace(int8, int8.with_name(int8.stem + "_int8.onnx"))
    shutil.copyfile(fp32, int8)
    return "fp32"


def _quant_record(result: QuantResult, int8_metric: float, shipped: str) -> dict[str, Any]:
    """What ``model.yml`` records of a quantization run (``quant:`` section)."""
    methods: dict[str, int] = {}
    for how in result.range_methods.values():
        methods[how] = methods.get(how, 0) + 1
    return {
        "shipped": shipped,
        "int8_metric": int8_metric,
        "latency_ms": {k: round(v, 4) for k, v in result.latency_ms.items()},
        "opset": result.opset,
        "per_channel": result.per_channel,
        "bias_corrected": len(result.bias_corrected),
        "range_methods": methods,
    }
