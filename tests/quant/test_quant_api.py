"""`quantize` and `QuantConfig`: validation, cache reuse, accuracy-aware fallback, light import."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import slimkit.quant.observers as observers
from slimkit.quant import OrtModel, QuantConfig, export_onnx, quantize
from slimkit.quant.qdq import int8_kernel_ops


def test_config_round_trip_and_normalisation():
    config = QuantConfig(algo="kl", exclude=["/fc/Gemm"], max_metric_drop=0.01)
    assert config.algo == "KL" and config.exclude == ("/fc/Gemm",)
    data = json.loads(json.dumps(config.to_dict()))
    assert QuantConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"algo": "mse"}, "unknown algo"),
        ({"batch_num": 0}, "batch_num"),
        ({"num_bins": 1000}, "power of two"),
        ({"num_bins": 64}, "power of two >= num_levels"),
        ({"percentile": 0}, "percentile"),
        ({"activation_type": "int4"}, "activation_type"),
        ({"max_metric_drop": -1}, "max_metric_drop"),
        ({"exclude": [""]}, "exclude"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown QuantConfig keys"):
        QuantConfig.from_dict({"algo": "KL", "bits": 4})


def test_bad_inputs_fail_clearly(tmp_path, tiny_net, calib_batches):
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="calib_batches is empty"):
        quantize(tiny_net, [], out)
    with pytest.raises(ValueError, match="calib_batches is empty"):
        quantize(tiny_net, iter(()), out)
    with pytest.raises(TypeError, match="iterable of batches"):
        quantize(tiny_net, "images/", out)
    with pytest.raises(ValueError, match="batch_num"):
        quantize(tiny_net, calib_batches, out, {"batch_num": 0})
    with pytest.raises(ValueError, match="unknown algo"):
        quantize(tiny_net, calib_batches, out, {"algo": "entropy2"})
    with pytest.raises(ValueError, match="needs eval_fn"):
        quantize(tiny_net, calib_batches, out, QuantConfig(max_metric_drop=0.1))
    with pytest.raises(FileNotFoundError):
        quantize(tmp_path / "missing.onnx", calib_batches, out)
    with pytest.raises(TypeError, match="nn.Module or an .onnx path"):
        quantize(42, calib_batches, out)


def test_only_batch_num_batches_are_read(tmp_path, tiny_net):
    pulled = []

    def stream():
        for k in range(100):
            pulled.append(k)
            yield torch.randn(2, 3, 32, 32)

    result = quantize(tiny_net, stream(), tmp_path / "m.onnx", QuantConfig(batch_num=3))
    assert pulled == [0, 1, 2] and result.calibration_batches == 3


def test_cache_dir_reuse_skips_the_model_run(tmp_path, tiny_net, calib_batches, monkeypatch):
    calls = []
    real = observers.collect_histograms
    monkeypatch.setattr(
        observers, "collect_histograms", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cache = tmp_path / "cache"
    kl = quantize(tiny_net, calib_batches, tmp_path / "kl.onnx", {"batch_num": 4}, cache)
    assert len(calls) == 1 and not kl.calibration_cached and kl.calibration_batches == 4
    assert len(list(cache.glob("calib_*.npz"))) == 1
    meta = json.loads(next(cache.glob("calib_*.json")).read_text())
    assert meta["settings"]["num_bins"] == 2048 and "fingerprint" in meta
    mm = quantize(
        tiny_net, calib_batches, tmp_path / "mm.onnx", {"batch_num": 4, "algo": "minmax"}, cache
    )
    assert len(calls) == 1 and mm.calibration_cached and mm.calibration_batches == 0
    # same histograms: minmax ranges hold the KL ones (except known bounds), equal on the outputs
    searched = [k for k in kl.ranges if kl.range_methods[k] != "bound"]
    assert all(mm.ranges[k][1] >= kl.ranges[k][1] for k in searched)
    assert all(mm.ranges[k][0] <= kl.ranges[k][0] for k in searched)
    bounded = [k for k in kl.ranges if kl.range_methods[k] == "bound"]
    assert bounded and all(kl.ranges[k] == mm.ranges[k] for k in bounded)  # ReLU6: unsearched
    assert mm.ranges["output"] == kl.ranges["output"]
    other = quantize(tiny_net, calib_batches[:2], tmp_path / "o.onnx", {"batch_num": 2}, cache)
    assert len(calls) == 2 and not other.calibration_cached  # other settings: recalibrated


def test_onnx_path_input_and_batch_splitting(tmp_path, tiny_net, calib_batches):
    src = export_onnx(tiny_net, (1, 3, 32, 32), tmp_path / "net.onnx")
    batches = [(torch.from_numpy(b), torch.zeros(2)) for b in calib_batches]  # (images, targets)
    result = quantize(src, batches, tmp_path / "q" / "model.onnx", QuantConfig(batch_num=2))
    assert result.fp32_path == tmp_path / "q" / "model.fp32.onnx"
    report = json.loads(result.report_path.read_text())
    assert report["config"]["batch_num"] == 2 and report["quantized_nodes"]
    model = OrtModel(result.model_path, threads=1)
    assert model.input_shape == [1, 3, 32, 32] and model.output_names == ["output"]
    assert model(torch.from_numpy(calib_batches[0][:1]))[0].shape == (1, 4)
    in_place = quantize(src, batches, tmp_path / "model.onnx", {"batch_num": 1}, fp32_path=src)
    assert in_place.fp32_path == src and not (tmp_path / "model.fp32.onnx").exists()
    assert onnx.load(str(src)).metadata_props  # replaced by its pre-processed version
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_ort_entropy_algo_for_comparison(tmp_path, tiny_net, calib_batches):
    result = quantize(tiny_net, calib_batches, tmp_path / "m.onnx", {"algo": "ort_entropy"})
    assert result.ranges["input"][0] < 0 < result.ranges["input"][1]
    assert int8_kernel_ops(result.model_path)["QLinearConv"] == 3


def test_ort_entropy_defaults_are_min_max_and_2048_bins_search(tmp_path, tiny_net, calib_batches):
    # onnxruntime's Entropy at its defaults (128 bins for 128 quantized bins) has one candidate
    # threshold: the whole range. The benchmark's "ORT Entropy" column is then min-max; 2048 bins
    # (TensorRT's setting) make it search
    ranges = {
        algo: quantize(tiny_net, calib_batches, tmp_path / f"{algo}.onnx", {"algo": algo}).ranges
        for algo in ("ort_minmax", "ort_entropy", "ort_entropy2048")
    }
    for name, pair in ranges["ort_minmax"].items():
        assert ranges["ort_entropy"][name] == pytest.approx(pair)
    narrower = 0
    for name, (lo, hi) in ranges["ort_entropy2048"].items():
        mm_lo, mm_hi = ranges["ort_minmax"][name]
        assert max(-lo, hi) <= max(-mm_lo, mm_hi) * (1 + 1e-6)
        narrower += max(-lo, hi) < 0.99 * max(-mm_lo, mm_hi)
    assert narrower >= 1


def test_eval_fn_reports_both_metrics(tmp_path, tiny_net, calib_batches):
    seen = []

    def eval_fn(path: str) -> float:
        seen.append(path)
        return 1.0

    result = quantize(tiny_net, calib_batches, tmp_path / "m.onnx", eval_fn=eval_fn)
    assert seen == [str(result.fp32_path), str(result.model_path)]
    assert result.metric_fp32 == result.metric_int8 == 1.0 and result.within_budget is None


def _runs_float(path: str, node: str) -> bool:
    """True when `node` reads no dequantized tensor produced for it alone (it is an FP32 island)."""
    model = onnx.load(path)
    target = next(n for n in model.graph.node if n.name == node)
    weight_producer = next((n for n in model.graph.node if target.input[1] in n.output), None)
    return weight_producer is None  # quantized convs read their weight from a DequantizeLinear


def test_accuracy_aware_search_keeps_the_harmful_node_fp32(
    tmp_path, tiny_net, calib_batches, monkeypatch
):
    import slimkit.quant.accuracy as accuracy

    bad = "/pw/Conv"
    real_rank = accuracy.rank_nodes

    def rank_bad_second(*args, **kwargs):  # the real ranking, with the bad node moved to 2nd
        ranking = [item for item in real_rank(*args, **kwargs) if item[0] != bad]
        return [ranking[0], (bad, 0.0), *ranking[1:]]

    monkeypatch.setattr(accuracy, "rank_nodes", rank_bad_second)

    def eval_fn(path: str) -> float:  # the metric collapses while /pw/Conv is quantized
        return 1.0 if _runs_float(path, bad) else 0.2

    config = QuantConfig(max_metric_drop=0.05, batch_num=2)
    result = quantize(tiny_net, calib_batches, tmp_path / "m.onnx", config, eval_fn=eval_fn)
    assert bad in result.fp32_nodes and bad in result.searched_fp32_nodes
    assert result.within_budget and result.metric_int8 == 1.0 and result.metric_fp32 == 1.0
    assert bad not in result.quantized_nodes and result.quantized_nodes
    ops = int8_kernel_ops(result.model_path)
    assert ops["QLinearConv"] == 2 and ops["FusedConv"] == 1  # float Conv+ReLU at run time
    report = json.loads(result.report_path.read_text())
    assert bad in report["fp32_nodes"]


def test_accuracy_search_respects_the_node_cap(tmp_path, tiny_net, calib_batches):
    config = QuantConfig(max_metric_drop=0.0, max_fp32_nodes=1, batch_num=2)
    result = quantize(
        tiny_net,
        calib_batches,
        tmp_path / "m.onnx",
        config,
        eval_fn=lambda p: -1.0 if "fp32" not in p else 0.0,
    )
    assert len(result.searched_fp32_nodes) == 1 and result.within_budget is False


def test_importing_slimkit_is_light():
    # torch is slimkit's base (the package re-exports the task classes); the heavy libraries load
    # only when a function needs them (torch-pruning when slimkit.prune itself is imported).
    heavy = ("onnx", "onnxruntime", "onnxscript", "matplotlib", "pycocotools", "torch_pruning")
    code = (
        "import sys, slimkit, slimkit.quant, slimkit.bench; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_streamed_histograms_do_not_keep_batches(tmp_path, tiny_net):
    rng = np.random.default_rng(1)
    batches = (rng.normal(size=(1, 3, 32, 32)).astype(np.float32) for _ in range(12))
    result = quantize(tiny_net, batches, tmp_path / "m.onnx", {"batch_num": 12}, tmp_path / "c")
    with np.load(next((tmp_path / "c").glob("*.npz"))) as data:
        assert data["hist"].shape == (len(result.ranges), 2048)
