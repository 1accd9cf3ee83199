"""``ignore=`` as users pass it: module objects of their model, qualified names, module types,
one of them or a list, to prunable_groups and prune_model (which prunes a deep copy)."""

from __future__ import annotations

import pytest
import torch
from coupling_check import randomize_norms
from pattern_models import MobileNetV3Like, SqueezeExcite
from torch import nn

from slimkit.prune import prunable_groups, prune_model, resolve_ignore

X = torch.randn(2, 3, 16, 16)
ALL = ["conv_stem", "pw", "se.conv_reduce", "head"]


def forms(model: nn.Module) -> dict[str, object]:
    return {
        "names": ["head"],
        "modules": [model.head],
        "one name": "head",
        "one module": model.head,
        "tuple": (model.head,),
        "mixed": [model.head, "pw"],
        "type": SqueezeExcite,
        "types": [SqueezeExcite, nn.Hardswish],
        "container": model.se,
    }


EXPECTED = {
    "names": ["conv_stem", "pw", "se.conv_reduce"],
    "modules": ["conv_stem", "pw", "se.conv_reduce"],
    "one name": ["conv_stem", "pw", "se.conv_reduce"],
    "one module": ["conv_stem", "pw", "se.conv_reduce"],
    "tuple": ["conv_stem", "pw", "se.conv_reduce"],
    "mixed": ["conv_stem", "se.conv_reduce"],
    "type": ["conv_stem", "head"],  # "pw" is coupled with the ignored se.conv_expand's outputs
    "types": ["conv_stem", "head"],
    "container": ["conv_stem", "head"],
}


@pytest.mark.parametrize("form", list(EXPECTED))
def test_ignore_forms(form: str) -> None:
    model = randomize_norms(MobileNetV3Like())
    ignore = forms(model)[form]
    assert prunable_groups(model, X) == ALL
    assert prunable_groups(model, X, ignore=ignore) == EXPECTED[form]
    pruned, plan = prune_model(model, 0.5, X, ignore=ignore, return_plan=True)
    assert [e.name for e in plan.groups] == EXPECTED[form]
    for name in set(ALL) - set(EXPECTED[form]):  # ignored roots keep their output channels
        assert pruned.get_submodule(name).out_channels == model.get_submodule(name).out_channels


def test_ignore_by_type_ignores_every_instance() -> None:
    model = randomize_norms(MobileNetV3Like())
    assert prunable_groups(model, X, ignore=nn.Conv2d) == []
    assert resolve_ignore(model, nn.Linear) == ("classifier",)


def test_bad_ignore_items_say_what_is_wrong() -> None:
    model = MobileNetV3Like()
    with pytest.raises(ValueError, match="no module 'haed'.*Did you mean 'head'"):
        prune_model(model, 0.5, X, ignore="haed")
    with pytest.raises(ValueError, match="Conv2d that is not part of the model"):
        prune_model(model, 0.5, X, ignore=[MobileNetV3Like().head])  # another instance's layer
    with pytest.raises(TypeError, match="ignore takes modules, qualified names or module types"):
        prunable_groups(model, X, ignore=[3])


def test_prune_ignore_attribute_adds_to_ignore() -> None:
    model = MobileNetV3Like()
    model.prune_ignore = ("pw",)
    assert resolve_ignore(model, model.head) == ("head", "pw")
    assert prunable_groups(model, X, ignore="head") == ["conv_stem", "se.conv_reduce"]
