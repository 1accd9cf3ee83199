"""Networks in the styles of timm, torchvision and onnx2torch (tests/prune/pattern_models.py):
every group slimkit lists prunes to exactly the masked original, and what it cannot prove is left
unpruned with a reason that names the cause, never failing the whole model."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from coupling_check import check_model, outputs, randomize_norms
from pattern_models import (
    PATTERN_MODELS,
    ConstantBuffers,
    ConvNeXtLike,
    DPNLike,
    FixedShapeHead,
    FunctionalNorms,
    GhostNetLike,
    MobileNetV3Like,
    RexNetLike,
    ShuffleNetV1Like,
    ShuffleNetV2Like,
    SplitSizes,
)
from torch import nn

from slimkit.prune import (
    UnprunedGroupsWarning,
    apply_plan,
    channel_groups,
    find_groups,
    prunable_groups,
    prune_model,
)
from slimkit.prune.criteria import l1_importance
from slimkit.prune.groups import GroupSet
from slimkit.prune.plan import GroupPlan, PrunePlan
from slimkit.prune.pruner import select_channels

X = torch.randn(2, 3, 16, 16)


def groups_of(model: nn.Module) -> dict[str, object]:
    return {g.name: g for g in channel_groups(model, X)}


@pytest.mark.parametrize("cls", PATTERN_MODELS, ids=lambda c: c.__name__)
def test_pattern_model_pruning_equals_masking(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    check_model(randomize_norms(cls()), X, all_ratios=2)


def test_batchnorm_subclass_with_functional_batch_norm() -> None:
    model = randomize_norms(MobileNetV3Like())
    groups = groups_of(model)
    assert list(groups) == ["conv_stem", "pw", "se.conv_reduce", "head"]
    members = {m.name for m in groups["conv_stem"].members}
    assert {"bn1", "pwl", "bn_pwl", "pw", "head"} <= members  # residual add partner and readers
    assert groups["pw"].root_bn is model.bn_pw  # found through F.batch_norm: bn_scale works
    pruned = prune_model(model, {"pw": 0.5}, X, criterion="bn_scale")
    assert pruned.bn_pw.num_features == pruned.dw.out_channels == 16
    assert pruned.se.conv_expand.out_channels == pruned.se.conv_reduce.in_channels == 16
    kept = model.bn_pw.weight.abs().argsort(descending=True)[:16].sort().values
    torch.testing.assert_close(pruned.bn_pw.weight, model.bn_pw.weight[kept])


def test_functional_norms_and_groupnorm_ties() -> None:
    model = randomize_norms(FunctionalNorms())
    groups = groups_of(model)
    assert list(groups) == ["conv1", "conv2", "conv3", "conv4"]
    assert {len(t) for t in groups["conv3"].ties} == {4}  # GroupNorm(4, 16): a position per group
    assert {len(t) for t in groups["conv4"].ties} == {3}  # F.group_norm(x, 3, weight)
    pruned = prune_model(model, 0.5, X)
    assert pruned.norm1.running_mean.shape == pruned.norm1.weight.shape == (8,)  # own buffers
    assert pruned.norm2.normalized_shape == (8,) and pruned.gn_weight.shape == (6,)
    assert pruned.norm3.num_channels == 8 and pruned.norm3.num_groups == 4


def test_convnext_permute_layernorm_linear_and_gamma() -> None:
    model = randomize_norms(ConvNeXtLike())
    groups = groups_of(model)
    assert list(groups) == ["stem.0", "block1.fc1", "down.1", "block2.fc1"]
    names = {m.name for m in groups["stem.0"].members}
    assert {"stem.1", "block1.conv_dw", "block1.norm", "block1.fc1", "block1.fc2"} <= names
    assert "block1.gamma" in names and "down.0" in names
    pruned = prune_model(model, 0.5, X)
    assert pruned.block1.gamma.shape == (8,) and pruned.block1.fc1.in_features == 8
    assert pruned.block2.fc1.out_features == 48 and pruned.norm.normalized_shape == (12,)


def test_ghost_module_ties_primary_and_cheap_channels() -> None:
    model = randomize_norms(GhostNetLike())
    report = find_groups(model, X)
    group = {g.name: g for g in report.groups}["stem.0"]
    # stem channel j is added to the primary conv's channel j and to the cheap conv's (8 + j),
    # which reads primary channel j: j and 8 + j go together.
    assert sorted(group.ties) == [(j, j + 8) for j in range(8)]
    assert [g.name for g in report.groups] == ["stem.0", "ghost2.primary_conv.0", "mix.0"]
    pruned = prune_model(model, {"ghost2.primary_conv.0": 0.5}, X)
    assert pruned.ghost2.out_chs == pruned.mix[0].in_channels < 11  # out[:, :self.out_chs]


def test_slices_and_inplace_slice_writes_fix_the_channels_they_bound() -> None:
    model = randomize_norms(RexNetLike())
    report = find_groups(model, X)
    groups = {g.name: g for g in report.groups}
    assert groups["widen.0"].fixed == tuple(range(12))  # z[:, 0:12] += y reads them
    assert "add_" in report.unpruned["conv.0"] and "0:12" in report.unpruned["conv.0"]
    pruned = prune_model(model, 0.5, X)
    assert pruned.widen[0].out_channels == 14  # half of the 4 free channels
    assert pruned.expand[0].out_channels == 8


def test_dual_path_slices_at_attribute_bounds_follow_the_pruning() -> None:
    model = randomize_norms(DPNLike())
    groups = groups_of(model)
    proj = groups["proj"]  # residual channels (0-23, added in each block) and dense ones
    assert {"block1.c1x1_c", "block2.c1x1_c"} <= {m.name for m in proj.members if m.kind == "out"}
    assert proj.fixed == (0, 24)  # the first channel of each slice stays
    assert groups["block1.c1x1_c"].free == [25, 26, 27]  # 0-23 are in proj's group, 24 stays
    pruned, plan = prune_model(model, 0.5, X, return_plan=True)
    kept = {e.name: e.kept for e in plan.groups}["proj"]
    residual = sum(k < 24 for k in kept)
    assert 1 <= residual < 24 and len(kept) == 17
    assert pruned.num_1x1_c == pruned.block1.num_1x1_c == pruned.block2.num_1x1_c == residual


def test_channel_shuffles() -> None:
    v1 = groups_of(randomize_norms(ShuffleNetV1Like()))
    assert list(v1) == ["stem.0", "gconv1.0"]
    v2 = groups_of(randomize_norms(ShuffleNetV2Like()))
    assert list(v2) == ["stem.0", "branch_a.0.0", "branch_b.0.0"]
    members = {m.name for m in v2["stem.0"].members if m.kind == "out"}
    assert {"branch_a.2.0", "branch_b.2.0"} <= members  # shuffled in with the stem's channels
    assert {len(t) for t in v2["stem.0"].ties} == {4}


def test_buffers_added_or_multiplied_per_channel_are_pruned_with_them() -> None:
    model = randomize_norms(ConstantBuffers())
    with pytest.warns(UnprunedGroupsWarning, match="conv3.*made during the forward pass"):
        assert prunable_groups(model, X) == ["conv1", "conv2"]
    pruned = prune_model(model, {"conv1": 0.5, "conv2": 0.25}, X)
    assert pruned.bias1.shape == (1, 4, 1, 1) and pruned.scale2.shape == (6,)
    assert "bias1" in dict(pruned.named_buffers())  # still a buffer (saved in the state dict)


def test_fixed_shape_reshape_head_is_never_listed() -> None:
    model = randomize_norms(FixedShapeHead())
    with pytest.warns(UnprunedGroupsWarning, match="conv2.0.*breaks the model"):
        assert prunable_groups(model, X) == ["conv1.0"]
    with pytest.warns(UnprunedGroupsWarning, match="conv2.0"):
        pruned, plan = prune_model(model, 0.5, X, return_plan=True)
    assert [e.name for e in plan.groups] == ["conv1.0"] and "conv2.0" in plan.unpruned
    assert outputs(pruned, X)[0].shape == (2, 5)
    with pytest.raises(ValueError, match="conv2.0"):
        prune_model(model, {"conv2.0": 0.5}, X)


def test_splits_by_sizes_held_in_attributes_are_resized() -> None:
    model = randomize_norms(SplitSizes())
    report = find_groups(model, X)
    groups = {g.name: g for g in report.groups}
    assert list(groups) == ["conv1.0", "conv2.0", "left.0", "c2f.cv1.0", "c2f.m.0", "conv3.0"]
    assert groups["conv1.0"].fixed == (0, 6, 8)  # the MixedConv2d parts keep a channel each
    assert sorted(groups["conv2.0"].ties) == [(j, j + 8) for j in range(8)]  # equal halves
    assert sorted(groups["conv3.0"].ties) == [(j, j + 4) for j in range(4)]  # chunk(2)
    assert "fixed sizes [5, 7]" in report.unpruned["c2f.cv2.0"]  # literal sizes: nothing to update
    ratios = {"conv1.0": 0.5, "conv2.0": 0.5, "c2f.cv1.0": 0.5}
    pruned, plan = prune_model(model, ratios, X, return_plan=True)
    kept = {e.name: e.kept for e in plan.groups}["conv1.0"]
    assert pruned.mixed.splits == [sum(k < 8 for k in kept), sum(k >= 8 for k in kept)]
    assert pruned.mixed_even.splits == [sum(k < 6 for k in kept), sum(k >= 6 for k in kept)]
    assert isinstance(pruned.mixed.splits, list) and model.mixed.splits == [8, 4]
    assert (pruned.expand_chs, pruned.c2f.c, model.c2f.c) == (8, 3, 6)  # CSPNet, YOLOv8 C2f


def test_no_whole_model_failure_and_one_warning() -> None:
    for cls in PATTERN_MODELS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prune_model(randomize_norms(cls()), 0.4, X)
        assert sum(issubclass(w.category, UnprunedGroupsWarning) for w in caught) <= 1


@pytest.mark.parametrize(
    "cls",
    [ConvNeXtLike, ConstantBuffers, SplitSizes, DPNLike, GhostNetLike],
    ids=lambda c: c.__name__,
)
def test_groupset_pruned_in_place_equals_apply_plan_and_restores(cls: type[nn.Module]) -> None:
    """The sensitivity analysis prunes one traced copy in place per point (GroupSet.pruned)."""
    model = randomize_norms(cls())
    reference = outputs(model, X)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    work = copy.deepcopy(model)
    found = GroupSet(work, X)
    for group in found.groups.values():
        kept = tuple(select_channels(l1_importance(group), 0.5, group.ties, None, group.fixed))
        drop = [i for i in range(group.num_channels) if i not in kept]
        plan = PrunePlan("test", (GroupPlan(group.name, group.num_channels, kept),))
        want = outputs(apply_plan(model, plan, X), X)
        for _ in range(2):  # the same variant twice: the restore is complete
            with found.pruned(group.name, drop) as pruned:
                got = outputs(pruned, X)
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(outputs(work, X), reference)
    assert all(torch.equal(v, work.state_dict()[k]) for k, v in before.items())
