"""The fast path's channels-last choice: taken where the outputs agree, never with ``exact=True``,
never where the model cannot take it; the numbers stay the naive loop's to float rounding."""

from __future__ import annotations

import pytest
import torch
from sensitivity_models import TinyUNet, analyze, assert_same, make_data, randomize_bn
from torch import nn


@pytest.fixture
def layouts(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The layout each analysis's cache chose (``True``: channels-last)."""
    from slimkit.prune import _cache

    chosen: list[bool] = []
    choose = _cache.ActivationCache._choose_layout

    def spy(self: _cache.ActivationCache, work: float) -> None:
        choose(self, work)
        chosen.append(self.channels_last)

    monkeypatch.setattr(_cache.ActivationCache, "_choose_layout", spy)
    return chosen


def test_unet_runs_channels_last_within_rounding_of_the_naive_loop(layouts: list[bool]) -> None:
    model = randomize_bn(TinyUNet())
    data = make_data(model, batches=4)
    fast = analyze(model, data)
    assert layouts == [True]
    assert_same(fast, analyze(model, data, fast=False), tol=1e-6)
    assert data[0][0].is_contiguous()  # the user's batches are not converted in place


def test_exact_keeps_the_layout_and_every_bit(layouts: list[bool]) -> None:
    model = randomize_bn(TinyUNet())
    data = make_data(model, batches=4)
    exact = analyze(model, data, exact=True)
    assert layouts == [False]
    assert_same(exact, analyze(model, data, fast=False), tol=0.0)


def test_not_faster_here_keeps_the_layout(
    layouts: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimkit.prune import _cache

    monkeypatch.setattr(_cache, "LAYOUT_MIN_SPEEDUP", 0.0)  # no run is ever fast enough
    model = randomize_bn(TinyUNet())
    data = make_data(model, batches=4)
    assert_same(analyze(model, data), analyze(model, data, fast=False), tol=0.0)
    assert layouts == [False]


class FlatView(nn.Module):
    """``view`` on the feature map: fails on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 16 * 16, 4)
        self.prune_ignore = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).view(x.shape[0], -1))


class LayoutDependent(nn.Module):
    """Output that depends on the memory format: channels-last disagrees, so it is not used."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Conv2d(8, 4, 1)
        self.prune_ignore = ("b",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) * (1.0 if x.is_contiguous() else 2.0)


@pytest.mark.parametrize("make", [FlatView, LayoutDependent])
def test_models_that_cannot_take_it_keep_the_layout(make, layouts: list[bool]) -> None:
    torch.manual_seed(0)
    model = randomize_bn(make().eval())
    data = make_data(model, batches=4)
    assert_same(analyze(model, data), analyze(model, data, fast=False), tol=0.0)
    assert layouts == [False]
