"""benchmarks/quant_speed.py: the per-draw means and the gap to the best peer tool.

The numbers below are the det rows measured on the demo's detectors (val head and three train-split
draws); the expected means and gaps are worked out by hand.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "quant_speed.py"


@pytest.fixture(scope="module")
def qs():
    spec = importlib.util.spec_from_file_location("quant_speed_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _case(qs, results):
    case = qs.Case("det yolo 128x128", "mAP", Path("m.onnx"), {}, lambda p: 0.0, 500)
    case.results = results
    return case


def test_one_draw_gap_is_val_head_gap(qs):
    row = {"KL": 0.9633, "minmax": 0.9633, "ort_minmax": 0.9633, "nncf": 0.9711}
    case = _case(qs, {"val head": row, "FP32": {"FP32": 0.9637}})
    assert qs.best_gap(row) == pytest.approx(-0.78)
    assert qs.draw_means(case) == pytest.approx(row)


def test_mean_over_draws_and_its_gap(qs):
    results = {
        "val head": {"KL": 0.9633, "ort_minmax": 0.9633, "nncf": 0.9711},
        "train seed 1": {"KL": 0.9637, "ort_minmax": 0.9637, "nncf": 0.9590},
        "train seed 2": {"KL": 0.9631, "ort_minmax": 0.9631, "nncf": 0.9637},
        "train seed 3": {"KL": 0.9629, "ort_minmax": 0.9629, "nncf": 0.9605},
        "FP32": {"FP32": 0.9637},
    }
    means = qs.draw_means(_case(qs, results))
    # (0.9633 + 0.9637 + 0.9631 + 0.9629) / 4 = 0.96325; NNCF (0.9711 + 0.9590 + 0.9637 + 0.9605) / 4
    assert means["KL"] == pytest.approx(0.96325)
    assert means["nncf"] == pytest.approx(0.963575)
    assert "FP32" not in means
    assert qs.best_gap(means) == pytest.approx(-0.0325)


def test_column_missing_in_one_draw_is_left_out(qs):
    results = {
        "val head": {"KL": 0.5, "nncf": 0.6},
        "train seed 1": {"KL": 0.7},  # NNCF failed on this draw
        "FP32": {"FP32": 0.6},
    }
    means = qs.draw_means(_case(qs, results))
    assert means == pytest.approx({"KL": 0.6})
    assert math.isnan(qs.best_gap(means))  # no peer measured on every draw
