"""prune_model's contract: ratios, round_to, criteria, the input left untouched, ONNX export."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from coupling_check import num_params, outputs, randomize_norms
from torch import nn

from slimkit.models import create_model
from slimkit.prune import ChannelGroup, channel_groups, prunable_groups, prune_model
from slimkit.prune.criteria import bn_scale_importance, fpgm_importance, l1_importance

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return randomize_norms(create_model("mobilenetv2", num_classes=4, width_mult=0.25))


class Plain(nn.Module):
    """conv (8 filters, no BN) -> conv -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.mid(torch.relu(self.conv(x))))))


def test_input_module_is_untouched(model: nn.Module) -> None:
    model.train()
    before = copy.deepcopy(model.state_dict())
    pruned = prune_model(model, 0.5, X)
    assert pruned is not model and model.training and pruned.training
    assert num_params(pruned) < num_params(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "0.5", True])
def test_bad_ratio_raises(model: nn.Module, ratio: object) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_model(model, ratio, X)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_model(model, {"stem.conv": ratio}, X)


def test_unknown_group_lists_valid_names(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown group 'stem'.*Valid groups: stem.conv, "):
        prune_model(model, {"stem": 0.5}, X)


def test_at_least_one_channel_is_kept(model: nn.Module) -> None:
    pruned, plan = prune_model(model, 0.99, X, return_plan=True)
    assert all(
        len(g.kept) == max(1, g.num_channels - round(g.num_channels * 0.99)) for g in plan.groups
    )
    assert sum(len(g.kept) == 1 for g in plan.groups) >= 10
    assert pruned.stem.conv.out_channels == 1
    assert [o.shape for o in outputs(pruned, X)] == [o.shape for o in outputs(model, X)]


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.7])
def test_round_to_keeps_multiples(model: nn.Module, ratio: float) -> None:
    _, plan = prune_model(model, ratio, X, round_to=8, return_plan=True)
    for g in plan.groups:
        assert len(g.kept) % 8 == 0 and len(g.kept) <= g.num_channels
        assert len(g.kept) >= g.num_channels - round(g.num_channels * ratio) - 7
    with pytest.raises(ValueError, match="round_to"):
        prune_model(model, 0.5, X, round_to=0)


def test_example_inputs_as_tuple_or_dict() -> None:
    class TwoInputs(Plain):
        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return super().forward(x * scale)

    names = prunable_groups(TwoInputs(), (X, 2.0))
    assert names == prunable_groups(TwoInputs(), {"x": X, "scale": 2.0}) == ["conv", "mid"]
    with pytest.raises(TypeError, match="example_inputs"):
        prunable_groups(TwoInputs(), X.numpy())


def test_criteria_rank_channels_as_documented() -> None:
    model = Plain().eval()
    with torch.no_grad():
        model.conv.weight.copy_(torch.arange(1, 9, dtype=torch.float).view(8, 1, 1, 1))
        model.bn.weight.copy_(torch.tensor([5.0, -4, 3, 2, -1, 6, 7, 0.5]))
        model.mid.weight.normal_()
    groups = {g.name: g for g in channel_groups(model, X)}
    assert l1_importance(groups["conv"]).argsort().tolist() == list(range(8))
    assert bn_scale_importance(groups["mid"]).argsort()[:2].tolist() == [7, 4]
    _, plan = prune_model(model, {"mid": 0.25}, X, criterion="bn_scale", return_plan=True)
    assert plan.groups[0].kept == (0, 1, 2, 3, 5, 6)
    # FPGM drops the filters closest to all others: the middle of a 1-D line of filters.
    assert set(fpgm_importance(groups["conv"]).argsort()[:2].tolist()) == {3, 4}
    with pytest.raises(ValueError, match="needs an affine BatchNorm right after 'conv'"):
        prune_model(model, {"conv": 0.5}, X, criterion="bn_scale")
    with pytest.raises(ValueError, match="Did you mean 'fpgm'"):
        prune_model(model, 0.5, X, criterion="fpmg")


def test_custom_criterion_callable() -> None:
    def last_first(group: ChannelGroup) -> torch.Tensor:
        return -torch.arange(group.num_channels, dtype=torch.float)

    _, plan = prune_model(Plain(), {"conv": 0.5}, X, criterion=last_first, return_plan=True)
    assert plan.criterion == "last_first" and plan.groups[0].kept == (0, 1, 2, 3)


def test_pruned_model_exports_to_onnx_and_matches(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = randomize_norms(create_model("unet", num_classes=3, base_channels=8, depth=2))
    pruned = prune_model(model, 0.5, X).eval()
    path = tmp_path / "pruned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            pruned, (X,), str(path), opset_version=17, dynamo=False, input_names=["x"]
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": X.numpy()})
    np.testing.assert_allclose(got, outputs(pruned, X)[0].numpy(), atol=1e-4, rtol=1e-4)
