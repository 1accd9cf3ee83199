"""Sensitivity analysis: the fast (cached) path equals the naive loop; files resume, merge, fail."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from sensitivity_models import (
    RATIOS,
    CountedConv,
    TinyClassifier,
    TinyDetector,
    TinyTricky,
    TinyUNet,
    analyze,
    assert_same,
    closeness,
    make_data,
    randomize_bn,
)
from torch import nn

from slimkit.prune import UnprunedGroupsWarning
from slimkit.prune.ratios import get_ratios_by_loss
from slimkit.prune.sensitivity import analyze_sensitivity
from slimkit.prune.sensitivity_file import load_sensitivities, merge_sensitivities


@pytest.mark.parametrize("make", [TinyClassifier, TinyDetector, TinyUNet, TinyTricky])
def test_fast_equals_naive(make) -> None:
    model = randomize_bn(make())
    data = make_data(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # TinyTricky's `side` conv reads `a` but only its shape reaches the output: the graph never
    # sees that consumer, so pruning `a.0` breaks the model; discovery leaves it out, loudly
    unproven = pytest.warns(UnprunedGroupsWarning, match="a.0: pruning it breaks the model")
    with unproven if make is TinyTricky else contextlib.nullcontext():
        fast = analyze(model, data)
    with unproven if make is TinyTricky else contextlib.nullcontext():
        naive = analyze(model, data, fast=False)
    assert_same(fast, naive)
    assert len(fast) >= (1 if make is TinyTricky else 3)
    losses = [v for g in fast.values() for v in g.values()]
    assert all(v is not None and v > 0 for v in losses)  # the metric sees every pruning
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training


def test_fast_path_skips_the_shared_prefix(even_clock: None) -> None:
    from slimkit.prune import prunable_groups

    model = randomize_bn(TinyClassifier())
    data = make_data(model, batches=8)
    later = [g for g in prunable_groups(model, data[0][0]) if not g.startswith("stem")]
    assert later
    CountedConv.calls = 0
    fast = analyze(model, data, groups=later)
    fast_calls = CountedConv.calls
    CountedConv.calls = 0
    naive = analyze(model, data, groups=later, fast=False)
    assert CountedConv.calls == 8 + 8 * len(RATIOS) * len(later)  # baseline + every point
    # the stem runs for the baseline, on the small probe (twice), once more to fill the cache,
    # and on one checked batch per group, plus 3 for the channels-last check (batch 0 twice,
    # the small probe again); never for the points themselves
    assert fast_calls <= 8 + 2 + 8 + len(later) + 3, fast_calls
    assert_same(fast, naive)


@pytest.mark.parametrize("cap_mb", [0, 0.004])
def test_cache_memory_cap_keeps_numbers(cap_mb: float) -> None:
    model = randomize_bn(TinyDetector())
    data = make_data(model, batches=4)
    assert_same(analyze(model, data, cache_memory_mb=cap_mb), analyze(model, data, fast=False))


def test_zoo_models_fast_equals_naive() -> None:
    from slimkit.models import create_model

    models = [
        (create_model("mobilenetv2", num_classes=3, width_mult=0.25), 32),
        (
            create_model("yolov3_mobilenetv1", num_classes=2, width_mult=0.25, input_size=(64, 64)),
            64,
        ),
        (create_model("unet", num_classes=2, base_channels=4, depth=2), 16),
    ]
    from slimkit.prune import prunable_groups

    for model, size in models:
        model = randomize_bn(model)
        data = make_data(model, batches=2, size=size)
        found = sorted(prunable_groups(model, data[0][0]))
        some = found[:: max(1, len(found) // 4)][:4] + found[-1:]
        kw = {"groups": some, "ratios": (0.5,)}
        assert_same(analyze(model, data, **kw), analyze(model, data, fast=False, **kw))


def test_eval_fn_matches_data_and_metric() -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)

    def eval_fn(m: nn.Module) -> float:
        return closeness([m(x) for x, _ in data], [t for _, t in data])

    opaque = analyze_sensitivity(
        model, eval_fn=eval_fn, example_inputs=data[0][0], ratios=RATIOS, progress=False
    )
    assert_same(opaque, analyze(model, data))


def test_file_contents_and_resume_after_interruption(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "model.sensi.json"
    calls = {"n": 0}

    def flaky(outputs: list, targets: list) -> float:
        calls["n"] += 1
        if calls["n"] == 6:  # baseline + 4 points, then the 5th point fails
            raise KeyboardInterrupt
        return closeness(outputs, targets)

    with pytest.raises(KeyboardInterrupt):
        analyze_sensitivity(model, data, flaky, ratios=RATIOS, save_file=path, progress=False)
    partial = json.loads(path.read_text())
    assert sum(len(v) for v in partial["sensitivities"].values()) == 4
    assert partial["format"] == "slimkit.sensitivity" and partial["metric"] == "metric"
    assert partial["architecture"] == "TinyClassifier" and partial["baseline"] == 1.0
    assert partial["fingerprint"].startswith("sha256:") and partial["criterion"] == "l1"
    assert all(set(v) <= {"0.25", "0.5", "0.75"} for v in partial["sensitivities"].values())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    def counting(outputs: list, targets: list) -> float:
        calls["n"] += 1
        return closeness(outputs, targets)

    calls["n"] = 0
    resumed = analyze_sensitivity(
        model, data, counting, ratios=RATIOS, save_file=path, progress=False
    )
    total = sum(len(v) for v in resumed.values())
    assert calls["n"] == 1 + total - 4  # baseline, then only the missing points
    assert_same(resumed, analyze(model, data))
    on_disk = load_sensitivities(path)["sensitivities"]
    assert_same(on_disk, resumed)
    calls["n"] = 0
    analyze_sensitivity(model, data, counting, ratios=RATIOS, save_file=path, progress=False)
    assert calls["n"] == 1  # all done: only the baseline check


def test_shards_merge_to_one_run(tmp_path: Path) -> None:
    model = randomize_bn(TinyDetector())
    data = make_data(model)
    whole = analyze(model, data)
    files = [tmp_path / f"shard{i}.json" for i in range(3)]
    parts = [analyze(model, data, shard=(i, 3), save_file=f) for i, f in enumerate(files)]
    assert sorted(g for p in parts for g in p) == sorted(whole)
    merged = merge_sensitivities(files, save_file=tmp_path / "all.json")
    assert_same(merged["sensitivities"], whole)
    assert_same(load_sensitivities(tmp_path / "all.json")["sensitivities"], whole)
    one = analyze(model, data, groups=[sorted(whole)[0]])
    assert list(one) == [sorted(whole)[0]]


def test_merge_rejects_conflicts_and_other_models(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    analyze(model, data, save_file=a)
    raw = json.loads(a.read_text())
    group = sorted(raw["sensitivities"])[0]
    raw["sensitivities"][group]["0.5"] += 0.1
    b.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="disagree on group"):
        merge_sensitivities([a, b])
    raw = json.loads(a.read_text())
    raw["fingerprint"] = "sha256:0"
    b.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="fingerprint"):
        merge_sensitivities([a, b])
    with pytest.raises(ValueError, match="at least one"):
        merge_sensitivities([])


def test_bad_files_fail_clearly_and_restart_overwrites(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    path = tmp_path / "s.json"
    other = tmp_path / "keep.txt"
    other.write_text("unrelated")
    path.write_text("{not json")  # not ours: never replaced, not even by restart=True
    for restart in (False, True):
        with pytest.raises(ValueError, match=r"s\.json.*not a slimkit sensitivity file"):
            analyze(model, data, save_file=path, restart=restart)
    assert path.read_text() == "{not json"
    with pytest.raises(ValueError, match="is a directory"):
        analyze(model, data, save_file=tmp_path)
    path.write_text(json.dumps({"format": "slimkit.sensitivity", "version": 1}))  # damaged
    with pytest.raises(ValueError, match=r"s\.json.*corrupt.*restart=True"):
        analyze(model, data, save_file=path)
    result = analyze(model, data, save_file=path, restart=True)
    assert load_sensitivities(path)["sensitivities"].keys() == result.keys()
    assert other.read_text() == "unrelated"
    with pytest.raises(
        ValueError, match=r"metric 'metric' in the file vs 'acc1' in this run.*restart=True"
    ):
        analyze(model, data, save_file=path, metric_name="acc1")
    changed = randomize_bn(TinyClassifier())  # other weights
    with pytest.raises(ValueError, match="fingerprint"):
        analyze(changed, data, save_file=path)
    with pytest.raises(ValueError, match="architecture"):
        analyze(model, data, save_file=path, architecture="ResNet")
    raw = json.loads(path.read_text())
    raw["criterion"] = "l2"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="criterion"):
        analyze(model, data, save_file=path)
    raw["criterion"], raw["baseline"] = "l1", 0.5
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="baseline.*data or metric differ"):
        analyze(model, data, save_file=path)
    path.write_text(json.dumps({"format": "slimkit.sensitivity", "version": 1}))
    with pytest.raises(ValueError, match="field 'architecture'"):
        load_sensitivities(path)
    with pytest.raises(ValueError, match="not found"):
        load_sensitivities(tmp_path / "missing.json")


def test_zero_baseline_and_bad_arguments() -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    with pytest.raises(ValueError, match="positive"):
        analyze_sensitivity(model, data, lambda o, t: 0.0, progress=False)
    with pytest.raises(ValueError, match="example_inputs"):
        analyze_sensitivity(model, eval_fn=lambda m: 1.0, progress=False)
    with pytest.raises(ValueError, match="either eval_fn"):
        analyze_sensitivity(model, data, closeness, eval_fn=lambda m: 1.0, progress=False)
    with pytest.raises(ValueError, match="unknown groups"):
        analyze(model, data, groups=["nope"])
    with pytest.raises(ValueError, match="shard"):
        analyze(model, data, shard=(2, 2))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        analyze(model, data, ratios=(0.5, 1.0))
    with pytest.raises(TypeError, match="iterator"):
        analyze_sensitivity(model, iter(data), closeness, progress=False)


def test_loss_cap_skips_points_and_counts_them_over_budget(tmp_path: Path) -> None:
    model = randomize_bn(TinyClassifier())
    data = make_data(model)
    full = analyze(model, data, ratios=(0.25, 0.5, 0.75))
    cap = sorted(v for g in full.values() for v in g.values())[len(full)]  # some groups pass it
    path = tmp_path / "capped.json"
    capped = analyze(model, data, ratios=(0.25, 0.5, 0.75), loss_cap=cap, save_file=path)
    skipped = [(g, r) for g, v in capped.items() for r, loss in v.items() if loss is None]
    assert skipped
    for g, r in skipped:
        assert any(loss is not None and loss > cap for q, loss in capped[g].items() if q < r)
    for g, v in capped.items():
        for r, loss in v.items():
            assert loss is None or math.isclose(loss, full[g][r], abs_tol=1e-6)
    assert (
        json.loads(path.read_text())["sensitivities"][skipped[0][0]][f"{skipped[0][1]:g}"] is None
    )
    budget = max(v for g in full.values() for v in g.values()) + 1
    chosen = get_ratios_by_loss(capped, budget)
    for g, r in skipped:
        assert chosen[g] < r  # a skipped point is never within budget
    resumed = analyze(model, data, ratios=(0.25, 0.5, 0.75), save_file=path)  # cap off: filled in
    assert_same(resumed, full)


def test_training_flags_restored_and_weights_untouched() -> None:
    model = randomize_bn(TinyDetector())
    data = make_data(model)
    model.train()
    model.c1[1].eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, data, ratios=(0.5,))
    assert model.training and not model.c1[1].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_other_criterion_is_used_and_stored(tmp_path: Path) -> None:
    model = randomize_bn(TinyUNet())
    data = make_data(model)
    path = tmp_path / "fpgm.json"
    fpgm = analyze(model, data, criterion="fpgm", ratios=(0.5,), save_file=path)
    assert_same(fpgm, analyze(model, data, criterion="fpgm", ratios=(0.5,), fast=False))
    assert load_sensitivities(path)["criterion"] == "fpgm"
    l1 = analyze(model, data, ratios=(0.5,))
    assert any(abs(fpgm[g][0.5] - l1[g][0.5]) > 1e-9 for g in l1)  # other channels went
    with pytest.raises(ValueError, match="criterion"):
        analyze(model, data, criterion="l3")


@pytest.fixture
def always_merge(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Merge batches whenever it is exact (not only when the timing says it is faster)."""
    from slimkit.prune import _cache

    merges: list[int] = []
    merge_chunks = _cache.ActivationCache._merge_chunks

    def spy(self: _cache.ActivationCache, k: int) -> None:
        merges.append(k)
        merge_chunks(self, k)

    monkeypatch.setattr(_cache, "MERGE_CHECK_SHARE", math.inf)
    monkeypatch.setattr(_cache, "MERGE_MIN_SPEEDUP", math.inf)
    monkeypatch.setattr(_cache.ActivationCache, "_merge_chunks", spy)
    return merges


@pytest.mark.parametrize("make", [TinyClassifier, TinyDetector, TinyTricky])
def test_merged_batches_give_the_same_numbers(make, always_merge: list[int]) -> None:
    """Merged where that is bit for bit what the separate batches give, and the same numbers."""
    model = randomize_bn(make())
    data = make_data(model, batches=5)  # 4 samples each: merged into one batch of 20
    assert_same(analyze(model, data), analyze(model, data, fast=False))
    # merging is refused where oneDNN picks kernels by batch size; which kernels it picks depends
    # on the CPU and the thread count (TinyDetector: 1e-8 apart with 1 thread, equal with 2), so
    # only the plain models are required to merge
    if make is not TinyDetector:
        assert always_merge


class BatchMixer(TinyClassifier):
    """Subtracts the batch mean after layer1: each output depends on the other samples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = x - x.mean(0, keepdim=True)
        x = x + self.layer2(x)
        return self.fc(self.layer3(x).mean((2, 3)))


def test_batch_dependent_models_are_not_merged(always_merge: list[int]) -> None:
    model = randomize_bn(BatchMixer())
    data = make_data(model, batches=4)
    kw = {"ignore": ["layer1.0"]}  # its channels pass the batch mean: not prunable
    assert_same(analyze(model, data, **kw), analyze(model, data, fast=False, **kw))
    assert not always_merge


def test_cache_levels_are_built_only_when_they_pay(
    monkeypatch: pytest.MonkeyPatch, even_clock: None
) -> None:
    from slimkit.prune import _cache

    calls: list[str] = []
    needed = _cache.ActivationCache._needed

    def spy(self: _cache.ActivationCache, names: list[str], stop: str, *base: object) -> object:
        calls.append(stop)
        return needed(self, names, stop, *base)

    monkeypatch.setattr(_cache.ActivationCache, "_needed", spy)
    model = randomize_bn(TinyClassifier())
    one_batch = make_data(model, batches=1)
    assert_same(
        analyze(model, one_batch, ratios=(0.5,)),
        analyze(model, one_batch, ratios=(0.5,), fast=False),
    )
    assert calls == []  # one evaluation per level cannot repay building it
    analyze(model, make_data(model, batches=8))
    assert calls  # 8 batches x 3 ratios do


class FixedWidth(nn.Module):
    """A head that only runs with the channel count it was built with (a check in Python):
    the one-channel trial of group discovery already fails, so the group is never measured."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 3)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        if y.shape[1] != 16:
            raise RuntimeError(f"expected 16 channels, got {y.shape[1]}")
        return self.fc(y.mean((2, 3)))


class NarrowFails(FixedWidth):
    """Runs with one channel fewer (the discovery trial passes) but fails below 12 of 16: the
    analysis itself finds the failure, at ratio 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        if y.shape[1] < 12:
            raise RuntimeError(f"expected 16 channels, got {y.shape[1]}")
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("fast", [True, False])
def test_a_group_discovery_cannot_prove_is_recorded_and_never_measured(
    fast: bool, tmp_path: Path
) -> None:
    model = randomize_bn(FixedWidth())
    data = make_data(model)
    path = tmp_path / "s.json"
    with pytest.warns(UnprunedGroupsWarning, match="b.0: pruning it breaks the model"):
        result = analyze_sensitivity(
            model, data, closeness, ratios=RATIOS, save_file=path, fast=fast, progress=False
        )
    assert list(result) == ["a.0"]
    saved = load_sensitivities(path)
    assert list(saved["sensitivities"]) == ["a.0"]
    assert "16 channels" in saved["unprunable"]["b.0"]
    assert set(get_ratios_by_loss(path, 10.0)) == {"a.0"}


@pytest.mark.parametrize("fast", [True, False])
def test_a_group_whose_pruned_model_fails_is_recorded_and_skipped(
    fast: bool, tmp_path: Path
) -> None:
    model = randomize_bn(NarrowFails())
    data = make_data(model)
    path = tmp_path / "s.json"
    with pytest.warns(UserWarning, match="'b.0' is left out.*unprunable"):
        result = analyze_sensitivity(
            model, data, closeness, ratios=RATIOS, save_file=path, fast=fast, progress=False
        )
    assert list(result) == ["a.0"] and all(v > 0 for v in result["a.0"].values())
    saved = load_sensitivities(path)
    assert list(saved["sensitivities"]) == ["a.0"]
    assert "at ratio 0.5" in saved["unprunable"]["b.0"]
    assert (
        "16 channels" in saved["unprunable"]["b.0"]
        or "no longer runs" in saved["unprunable"]["b.0"]
    )
    assert set(get_ratios_by_loss(path, 10.0)) == {"a.0"}
    calls = {"n": 0}

    def counting(outputs: list, targets: list) -> float:
        calls["n"] += 1
        return closeness(outputs, targets)

    analyze_sensitivity(
        model, data, counting, ratios=RATIOS, save_file=path, fast=fast, progress=False
    )
    assert calls["n"] == 1  # resumed: the baseline only, the failed group is not retried


def test_a_group_s_own_layers_are_replayed_without_its_channels(even_clock: None) -> None:
    """The cut is the group's first consuming layer: the root conv's cached output serves every
    ratio, without the dropped channels."""
    model = randomize_bn(TinyClassifier())
    data = make_data(model, batches=8)
    CountedConv.calls = 0
    fast = analyze(model, data, groups=["stem.0"])
    # the baseline, the small probe (twice: to find what later layers read), filling the cache,
    # and batch 0 in full for the check, plus 3 for the channels-last check (batch 0 twice, the
    # small probe again); never for the 3 ratios (the naive loop: 8 + 3 x 8)
    assert CountedConv.calls == 8 + 2 + 8 + 1 + 3, CountedConv.calls
    assert_same(fast, analyze(model, data, groups=["stem.0"], fast=False))


@pytest.mark.parametrize("make", [TinyClassifier, TinyUNet])
def test_a_first_ratio_that_drops_no_channel(make) -> None:
    """0.05 of 8 channels rounds to none: the unpruned model, loss 0; the next ratio still
    replays its channels right (the channel layout is never learnt from an unpruned model)."""
    model = randomize_bn(make())
    data = make_data(model)
    fast = analyze(model, data, ratios=(0.05, 0.5))
    assert_same(fast, analyze(model, data, ratios=(0.05, 0.5), fast=False))
    assert any(v[0.05] == 0.0 for v in fast.values())


class NanWhenNarrow(FixedWidth):
    """Outputs NaN once ``b`` is pruned (a model that breaks numerically, not by raising)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        out = self.fc(y.mean((2, 3)))
        return out * math.nan if y.shape[1] < 12 else out  # the 1-channel trial passes


def test_a_pruned_model_with_a_nan_metric_is_unprunable(tmp_path: Path) -> None:
    model = randomize_bn(NanWhenNarrow())
    data = make_data(model)
    path = tmp_path / "s.json"
    with pytest.warns(UserWarning, match="'b.0' is left out"):
        result = analyze_sensitivity(
            model, data, closeness, ratios=RATIOS, save_file=path, progress=False
        )
    assert list(result) == ["a.0"]
    assert "metric is nan" in load_sensitivities(path)["unprunable"]["b.0"]


class InPlace(TinyClassifier):
    """Scales layer1's (cached) output in place before later layers read it, and returns a view
    of it."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(x))
        x.mul_(2.0)  # a replayed tensor, written in place
        x = x + self.layer2(x)
        return self.fc(self.layer3(x).mean((2, 3))), x[:, :2]


def test_replayed_tensors_written_in_place_or_returned_are_copies(even_clock: None) -> None:
    model = randomize_bn(InPlace())
    data = make_data(model, batches=6)
    kw: dict = {}
    fast = analyze(model, data, **kw)
    assert_same(fast, analyze(model, data, fast=False, **kw))
    assert_same(fast, analyze(model, data, **kw))  # the cache was not altered either
