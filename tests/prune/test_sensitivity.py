"""Sensitivity analysis: the fast (cached) path equals the naive loop; files resume, merge, fail."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.prune.ratios import get_ratios_by_loss
from slimkit.prune.sensitivity import analyze_sensitivity
from slimkit.prune.sensitivity_file import load_sensitivities, merge_sensitivities

RATIOS = (0.25, 0.5, 0.75)


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class CountedConv(nn.Conv2d):
    """A conv that counts its evaluation calls (class-wide, so pruned copies count too)."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountedConv.calls += torch.is_inference_mode_enabled()  # not the tracing by the pruner
        return super().forward(x)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(CountedConv(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = cbr(8, 16, 2)
        self.layer2 = nn.Sequential(cbr(16, 16), cbr(16, 16))
        self.layer3 = cbr(16, 24, 2)
        self.fc = nn.Linear(24, 5)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = x + self.layer2(x)  # residual: layer1 and layer2 outputs are coupled
        return self.fc(self.layer3(x).mean((2, 3)))


class TinyDetector(nn.Module):
    """Two feature levels, an upsample + concat neck and a tuple of head outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = cbr(3, 8), cbr(8, 16, 2), cbr(16, 24, 2)
        self.lateral = nn.Conv2d(24, 8, 1)
        self.fuse = cbr(16 + 8, 16)
        self.head_deep = nn.Conv2d(24, 6, 1)
        self.head_fine = nn.Conv2d(16, 6, 1)
        self.prune_ignore = ("head_deep", "head_fine")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.c2(self.c1(x))
        f3 = self.c3(f2)
        deep = self.head_deep(f3)
        up = F.interpolate(self.lateral(f3), size=f2.shape[-2:], mode="nearest")
        return deep, self.head_fine(self.fuse(torch.cat([up, f2], dim=1)))


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = cbr(3, 8), cbr(8, 16, 2), cbr(16, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec = cbr(16, 8)
        self.head = nn.Conv2d(8, 3, 1)
        self.prune_ignore = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        m = self.mid(s2) + s2
        return self.head(self.dec(torch.cat([self.up(m), s1], dim=1)))


class TinyTricky(nn.Module):
    """Tuple inputs, a block called twice, in-place ops on module outputs, a shape-only read."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(8, 8), cbr(8, 16, 2)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(16, 3)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        a.mul_(scale[:, None, None, None])  # in place on a cached output
        b = self.b(a)
        side = self.side(a)  # only its shape is used below
        c = self.c(b + a)
        c = self.shared(self.shared(c).relu_())  # called twice: never replayed
        return self.fc(c.mean((2, 3))) + side.shape[1]


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers trained-looking statistics, so that every channel matters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.rand(n, generator=g) * 0.4 - 0.2
            m.running_mean = torch.rand(n, generator=g) * 0.2 - 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def make_data(model: nn.Module, batches: int = 3, size: int = 16) -> list:
    """Batches whose targets are the unpruned model's outputs."""
    g = torch.Generator().manual_seed(2)
    data = []
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(4, 3, size, size, generator=g)
            if isinstance(model, TinyTricky):
                x = (x, torch.rand(4, generator=g) + 0.5)
                data.append((x, model(*x)))
            else:
                data.append((x, model(x)))
    return data


def closeness(outputs: list, targets: list) -> float:
    """1 / (1 + MSE) against the unpruned outputs: continuous, 1.0 for the unpruned model."""
    err, n = 0.0, 0
    for out, tgt in zip(outputs, targets, strict=True):
        outs = out if isinstance(out, tuple) else (out,)
        tgts = tgt if isinstance(tgt, tuple) else (tgt,)
        for o, t in zip(outs, tgts, strict=True):
            err += float(((o - t) ** 2).sum())
            n += t.numel()
    return 1.0 / (1.0 + err / n)


def analyze(model: nn.Module, data: list, **kw) -> dict:
    kw.setdefault("ratios", RATIOS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path must not fall back to full evaluation
        return analyze_sensitivity(model, data, closeness, progress=False, **kw)


def assert_same(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for g in a:
        assert a[g].keys() == b[g].keys(), g
        for r in a[g]:
            assert (a[g][r] is None) == (b[g][r] is None), (g, r)
            if a[g][r] is not None:
                assert abs(a[g][r] - b[g][r]) <= tol, (g, r, a[g][r], b[g][r])


@pytest.mark.parametrize("make", [TinyClassifier, TinyDetector, TinyUNet, TinyTricky])
def test_fast_equals_naive(make) -> None:
    model = randomize_bn(make())
    data = make_data(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = analyze(model, data)
    naive = analyze(model, data, fast=False)
    assert_same(fast, naive)
    assert len(fast) >= (1 if make is TinyTricky else 3)
    losses = [v for g in fast.values() for v in g.values()]
    assert all(v is not None and v > 0 for v in losses)  # the metric sees every pruning
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training


def test_fast_path_skips_the_shared_prefix() -> None:
    from slimkit.prune.groups import prunable_groups

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
    # the stem runs for the baseline, once more to fill the cache, and on one checked batch per
    # group; never for the points themselves
    assert fast_calls <= 8 + 1 + 8 + len(later), fast_calls
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
    from slimkit.prune.groups import prunable_groups

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
    path.write_text("{not json")
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
