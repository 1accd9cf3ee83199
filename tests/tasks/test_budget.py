"""Budget-true pruning (train(..., prune_mode=...)) and the FLOPs target, on a tiny UNet.

The metric is one we control: a product over the convolutions of (kept / original output
channels) ** alpha, with alpha different for each conv (some groups matter more than others).
Pruned alone, every group costs little; pruned together, the losses multiply, so PaddleX's
per-group choice overshoots the budget by construction. The sensitivity file is
measured with the real analysis on that same metric.
"""

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.data.generate import make_dataset
from slimkit.prune import analyze_sensitivity
from slimkit.prune.counting import count_flops
from slimkit.tasks import budget
from slimkit.tasks.budget import BudgetWarning
from slimkit.tasks.factory import open_split
from slimkit.tasks.pruning import loss_at, predicted_losses, relative_loss

ALPHA = math.log(0.95) / math.log(0.5)  # one group pruned at 0.5 alone loses exactly 5 %
BUDGET = 0.05


def _unet() -> slimkit.tasks.BaseTask:
    return slimkit.seg.UNet(num_classes=4, input_size=32, base_channels=8, depth=2)  # built-in seg


def _channels(net: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}


ORIGINAL = _channels(_unet().net)
# from 1/4 to 4 times ALPHA: the least sensitive group loses 5 % at ratio 0.5 ** 4
WEIGHTS = {n: ALPHA * 4 ** (2 * i / (len(ORIGINAL) - 1) - 1) for i, n in enumerate(ORIGINAL)}


def shape_metric(net: nn.Module) -> float:
    """Our metric: prod over convs of (kept / original channels) ** alpha (1.0 unpruned)."""
    kept = _channels(net)
    return math.prod((kept[n] / ORIGINAL[n]) ** WEIGHTS[n] for n in ORIGINAL)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    make_dataset("seg", root, num_train=8, num_val=4, image_size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def sens_file(tmp_path_factory) -> Path:
    return _analyze(tmp_path_factory.mktemp("sens") / "unet.sensi.json")


def _analyze(path: Path, **kw) -> Path:
    """The sensitivity file of a fresh `_unet` under `shape_metric` at ratios 0.25/0.5/0.75."""
    model = _unet()
    analyze_sensitivity(
        model.net,
        eval_fn=shape_metric,
        example_inputs=model.example_inputs(),
        ratios=(0.25, 0.5, 0.75),
        save_file=path,
        progress=False,
        metric_name="miou",
        architecture=model.sensitivity_key,
        **kw,
    )
    return path


def _controlled(model: slimkit.tasks.BaseTask) -> slimkit.tasks.BaseTask:
    """The model with ``evaluate`` replaced by the shape metric of whatever net it holds."""
    model.evaluate = lambda dataset, **kw: {"miou": shape_metric(model.net)}
    return model


def _train(seg_data: Path, save_dir: Path, epochs: int = 1, **kwargs) -> slimkit.tasks.BaseTask:
    model = _controlled(_unet())
    model.train(
        num_epochs=epochs,
        train_dataset=open_split("seg", seg_data, "train"),
        eval_dataset=open_split("seg", seg_data, "val"),
        train_batch_size=4,
        save_dir=save_dir,
        eval_metric_loss=BUDGET,
        prune_round_to=None,
        progress=False,
        **kwargs,
    )
    return model


def test_per_group_overshoots_and_budget_true_backs_off(seg_data, sens_file, tmp_path):
    with pytest.warns(BudgetWarning, match="before fine-tuning"):
        per_group = _train(
            seg_data, tmp_path / "pg", sensitivities_file=sens_file, prune_mode="per_group"
        )
    rec = per_group.prune_record
    assert rec.scale == 1 and rec.predicted_max_loss <= BUDGET + 1e-9
    assert rec.measured_loss == pytest.approx(1 - shape_metric(per_group.net))
    assert rec.measured_loss > budget.loss_limit(BUDGET)  # the combination overshoots

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _train(seg_data, tmp_path / "bt", sensitivities_file=sens_file)
    assert not [w for w in caught if "before fine-tuning" in str(w.message)]
    rec = model.prune_record
    assert rec.mode == "budget" and 0 < rec.scale < 1 and model.status == "Prune"
    assert rec.measured_loss == pytest.approx(1 - shape_metric(model.net))
    assert rec.measured_loss <= rec.loss_limit == budget.loss_limit(BUDGET)
    assert budget.loss_limit(BUDGET) == budget.LOSS_FACTOR * BUDGET < budget.LOSS_CAP
    assert rec.evaluations <= 1 + budget.BISECTION_STEPS
    # independent check: the chosen scale is the largest one on the bisection grid whose model
    # (pruned by the public API at the scaled budget) stays within the limit
    from slimkit.prune import get_ratios_by_loss, prune_model

    def loss_at_scale(s: float) -> float:
        ratios = {g: r for g, r in get_ratios_by_loss(sens_file, s * BUDGET).items() if r > 0}
        pruned = prune_model(_unet().net, ratios, torch.zeros(1, 3, 32, 32)) if ratios else None
        return 0.0 if pruned is None else 1 - shape_metric(pruned)

    grid = [j / 2**budget.BISECTION_STEPS for j in range(1, 2**budget.BISECTION_STEPS)]
    passing = [s for s in grid if loss_at_scale(s) <= rec.loss_limit]
    assert rec.scale == max(passing)
    assert loss_at_scale(rec.scale + 1 / 2**budget.BISECTION_STEPS) > rec.loss_limit


def test_final_loss_lands_in_model_yml(seg_data, sens_file, tmp_path):
    model = _train(seg_data, tmp_path, sensitivities_file=sens_file)
    info = yaml.safe_load((tmp_path / "best_model" / "model.yml").read_text())
    rec = info["pruning"]
    loaded = slimkit.load_model(tmp_path / "best_model")
    final = shape_metric(loaded.net)  # the metric of the model the user gets, measured anew
    assert rec["baseline"] == pytest.approx(1.0)
    assert rec["final_metric"] == pytest.approx(final)
    assert rec["final_relative_loss"] == pytest.approx(1 - final, abs=1e-6)
    assert rec["within_budget"] is (1 - final <= BUDGET)
    assert rec["mode"] == "budget" and rec["sensitivities"] == sens_file.name
    assert rec["scale"] == model.prune_record.scale and rec["combine"] == "sum"
    epoch = yaml.safe_load((tmp_path / "epoch_1" / "model.yml").read_text())["pruning"]
    assert epoch["final_relative_loss"] == rec["final_relative_loss"]


def test_broken_promise_warns_after_fine_tuning(seg_data, sens_file, tmp_path):
    with pytest.warns(BudgetWarning, match="breaks its budget"):
        _train(seg_data, tmp_path, 0, sensitivities_file=sens_file, prune_mode="per_group")
    rec = yaml.safe_load((tmp_path / "best_model" / "model.yml").read_text())["pruning"]
    assert rec["within_budget"] is False and rec["final_relative_loss"] > BUDGET


def test_pruned_flops_target(seg_data, sens_file, tmp_path):
    before = count_flops(_unet().net, _unet().example_inputs())
    with pytest.warns(BudgetWarning):  # removing 40 % of the FLOPs costs more than 2 x 0.05
        _train(seg_data, tmp_path, 0, sensitivities_file=sens_file, pruned_flops=0.4)
    loaded = slimkit.load_model(tmp_path / "best_model")
    removed = 1 - count_flops(loaded.net, loaded.example_inputs()) / before
    # the smallest budget that removes at least 0.4 - tolerance; channels come in steps
    assert 0.4 - budget.FLOPS_TOLERANCE <= removed <= 0.45
    rec = yaml.safe_load((tmp_path / "best_model" / "model.yml").read_text())["pruning"]
    assert rec["pruned_flops"] == 0.4 and rec["flops_kept"] == pytest.approx(1 - removed)
    assert rec["measured_loss"] == pytest.approx(1 - shape_metric(loaded.net), abs=1e-6)
    with pytest.raises(ValueError, match="less than pruned_flops=0.95"):
        _controlled(_unet()).prune(
            sensitivities_file=sens_file, pruned_flops=0.95, eval_dataset=[1], round_to=None
        )


def test_nothing_within_the_limit_prunes_nothing(seg_data, sens_file, monkeypatch):
    model = _controlled(_unet())
    monkeypatch.setattr(budget, "LOSS_FACTOR", 1e-9)  # any pruning is over the limit
    with pytest.warns(BudgetWarning, match="fine-tuned unpruned"):
        ratios = model.prune(
            sensitivities_file=sens_file, eval_metric_loss=BUDGET, eval_dataset=[1]
        )
    assert ratios == {} and model.status == "Normal" and _channels(model.net) == ORIGINAL
    assert model.prune_record.scale == 0


def test_options_are_checked_before_any_work(seg_data, sens_file, tmp_path):
    train_ds = open_split("seg", seg_data, "train")
    model = _unet()
    with pytest.raises(ValueError, match="pass eval_dataset=, or prune_mode='per_group'"):
        model.train(1, train_ds, sensitivities_file=sens_file, save_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="prune_mode must be one of"):
        model.prune(sensitivities_file=sens_file, prune_mode="global", eval_dataset=[1])
    with pytest.raises(ValueError, match="fraction of FLOPs to remove"):
        model.prune(sensitivities_file=sens_file, pruned_flops=40, eval_dataset=[1])
    with pytest.raises(ValueError, match="pruned_flops picks ratios from sensitivities_file"):
        model.train(1, train_ds, pruned_flops=0.5, save_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert model.status == "Normal"


def test_per_group_without_eval_set_is_paddlex(seg_data, sens_file, tmp_path):
    model = _unet()
    ratios = model.prune(
        sensitivities_file=sens_file,
        eval_metric_loss=BUDGET,
        prune_mode="per_group",
        round_to=None,
        log_fn=lambda line: None,
    )
    from slimkit.prune import get_ratios_by_loss

    assert ratios == {g: r for g, r in get_ratios_by_loss(sens_file, BUDGET).items() if r > 0}
    assert model.prune_record.measured_loss is None and model.prune_record.baseline is None
    assert model.info()["pruning"]["within_budget"] is None


def test_predicted_loss_interpolates_like_a_hand_computation():
    losses = {0.25: 0.02, 0.5: 0.06, 0.75: None}
    assert loss_at(losses, 0.125) == pytest.approx(0.01)  # from (0, 0)
    assert loss_at(losses, 0.375) == pytest.approx(0.04)
    assert loss_at(losses, 0.9) == pytest.approx(0.06)  # unmeasured beyond: the last loss
    sens = {"sensitivities": {"a": losses, "b": {0.5: 0.03}}}
    assert predicted_losses(sens, {"a": 0.375, "b": 0.5}) == pytest.approx((0.07, 0.04))
    assert relative_loss(0.8, 0.6) == pytest.approx(0.25) and relative_loss(None, 0.5) is None
    assert budget.loss_limit(0.1) == pytest.approx(0.3) and budget.loss_limit(0.3) == 0.5


def test_cli_flags(seg_data, sens_file, tmp_path, capsys):
    from slimkit.cli import main

    base = ["train", "--model", "unet", "--data", str(seg_data), "--input-size", "32"]
    base += ["--base-channels", "8", "--sensitivities", str(sens_file), "--epochs", "0"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--prune-mode", "global"])
    assert exc.value.code == 2
    assert "argument --prune-mode: invalid choice: 'global'" in capsys.readouterr().err
    assert main([*base, "--pruned-flops", "1.5", "--save-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimkit: error: pruned_flops is the fraction of FLOPs to remove")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_adaptive_bn_re_estimates_batchnorm_on_training_images():
    from slimkit.tasks.budget import adaptive_bn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    net.eval()
    weights = net[0].weight.clone()
    batches = [(torch.randn(3, 3, 8, 8) * 2 + 1, None) for _ in range(4)]
    adaptive_bn(iter(batches), images=6)(net)  # reads two batches of three, not four
    with torch.no_grad():  # the average over the batches of each batch's statistics
        feats = [net[0](x).transpose(0, 1).flatten(1) for x, _ in batches[:2]]
    mean = torch.stack([f.mean(1) for f in feats]).mean(0)
    var = torch.stack([f.var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert net[1].momentum == 0.1 and not any(m.training for m in net.modules())
    assert torch.equal(net[0].weight, weights)


def test_sensitivity_file_criterion_is_used_and_checked(tmp_path):
    """A file analysed with fpgm prunes with fpgm by default; asking for l1 is an error."""
    path = _analyze(tmp_path / "fpgm.sensi.json", criterion="fpgm")
    with pytest.raises(ValueError, match="analysed with criterion 'fpgm' but are used with 'l1'"):
        _unet().prune(
            sensitivities_file=path, eval_metric_loss=0.2, prune_mode="per_group", criterion="l1"
        )
    pruned = _unet()
    pruned.prune(sensitivities_file=path, eval_metric_loss=0.2, prune_mode="per_group")
    assert pruned.prune_plan is not None and pruned.prune_plan.criterion == "fpgm"


# ------------------------------------------------------------------ the short fine-tune (probe)
def _recovering(model: slimkit.tasks.BaseTask, kept: float) -> slimkit.tasks.BaseTask:
    """Shape metric, but a net that went through the probe keeps only ``kept`` of its loss."""

    def evaluate(dataset, **kw):
        loss = 1 - shape_metric(model.net)
        return {"miou": 1 - loss * (kept if getattr(model.net, "probed", False) else 1)}

    model.evaluate = evaluate
    return model


def _mark(net: nn.Module) -> None:
    net.probed = True  # stands for the short fine-tune: evaluate() above sees it


def _pruned(sens_file: Path, kept: float, probe) -> slimkit.tasks.BaseTask:
    """The tiny UNet pruned budget-true with ``probe``; the probe keeps ``kept`` of the loss."""
    model = _recovering(_unet(), kept)
    model.prune(
        sensitivities_file=sens_file,
        eval_metric_loss=BUDGET,
        eval_dataset=[1],
        round_to=None,
        log_fn=lambda line: None,
        finetune_probe=probe,
    )
    assert model.prune_record is not None
    return model


def test_short_finetune_rescues_a_candidate_over_the_limit(sens_file):
    rescued = _pruned(sens_file, 0.1, _mark)
    rec = rescued.prune_record
    # the per-group choice, over the limit after BN re-estimation, is kept after the probe
    assert rec.scale == 1 and rec.measured_loss > rec.loss_limit >= rec.probed_loss
    assert rec.probed_loss == pytest.approx(0.1 * rec.measured_loss) and rec.probes == 1
    assert getattr(rescued.net, "probed", False)  # the chosen net keeps its short fine-tune
    assert rescued.info()["pruning"]["probed_loss"] == pytest.approx(rec.probed_loss, abs=1e-6)

    plain = _pruned(sens_file, 1.0, None).prune_record  # judged after BN re-estimation only
    useless = _pruned(sens_file, 1.0, _mark).prune_record  # a probe that wins nothing back
    half = _pruned(sens_file, 0.5, _mark).prune_record
    assert plain.probes == 0 and plain.probed_loss is None and 0 < plain.scale < 1
    assert useless.scale == plain.scale and 1 <= useless.probes < useless.evaluations
    assert plain.scale < half.scale < 1  # the more the probe recovers, the more is pruned
    assert half.probed_loss is None or half.probed_loss <= half.loss_limit


def test_short_finetune_is_the_training_loop_on_a_fixed_draw(tmp_path):
    """The probe against a plain loop written out here: same batches, steps and schedule."""
    import itertools

    from slimkit.tasks.optim import build_optimizer
    from slimkit.tasks.probe import short_finetune

    make_dataset("cls", tmp_path, num_train=40, num_val=2, image_size=32, seed=1)
    train_ds = open_split("cls", tmp_path, "train")
    model = slimkit.cls.MobileNetV2(num_classes=4, input_size=32, width_mult=0.25)
    original, candidate = model.net, copy.deepcopy(model.net)
    reference = copy.deepcopy(candidate)

    state = torch.get_rng_state()
    short_finetune(model, train_ds, 8, "adam", 2e-3, 1e-4, steps=3)(candidate)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    assert model.net is original and not candidate.training

    torch.manual_seed(0)
    opt, sched = build_optimizer(reference, "adam", 2e-3, 1e-4, total_steps=3)
    reference.train()
    for images, targets in itertools.islice(model.make_loader(train_ds, 8, True), 3):
        loss = model.compute_loss(reference(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for a, b in zip(candidate.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(candidate.stem.conv.weight, original.stem.conv.weight)
    # at most one epoch: five batches of eight, whatever steps says
    capped = copy.deepcopy(original)
    calls = []
    model.compute_loss = lambda out, tgt: calls.append(1) or out.sum() * 0
    short_finetune(model, train_ds, 8, "adam", 2e-3, 0.0, steps=100)(capped)
    assert len(calls) == 5
