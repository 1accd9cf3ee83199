"""The activation cache's levels and read tracking: later levels recorded in one pass, writes
through views seen; the numbers stay the naive loop's."""

from __future__ import annotations

import pytest
import torch
from sensitivity_models import analyze, assert_same, make_data, randomize_bn


@pytest.mark.parametrize("cap_mb", [1024, 0.05])
def test_later_levels_are_recorded_in_one_pass(
    monkeypatch: pytest.MonkeyPatch, even_clock: None, cap_mb: float
) -> None:
    """A UNet with concatenated skips: the levels of every later group's cut are recorded
    with the first one in one pass (as far as the memory cap allows), and entered in turn;
    the numbers stay the naive loop's."""
    from slimkit.models import create_model
    from slimkit.prune import _cache

    passes: list[int] = []
    entered: list[float] = []
    record, enter = _cache.ActivationCache._record, _cache.ActivationCache._enter

    def spy_record(self: _cache.ActivationCache, levels: list) -> None:
        passes.append(len(levels))
        record(self, levels)

    def spy_enter(self: _cache.ActivationCache, level: object) -> None:
        entered.append(level.cut)  # type: ignore[attr-defined]
        enter(self, level)

    monkeypatch.setattr(_cache.ActivationCache, "_record", spy_record)
    monkeypatch.setattr(_cache.ActivationCache, "_enter", spy_enter)
    model = randomize_bn(create_model("unet", num_classes=3, base_channels=4, depth=2))
    data = make_data(model, batches=6, size=16)
    fast = analyze(model, data, cache_memory_mb=cap_mb)
    assert_same(fast, analyze(model, data, fast=False))
    assert len(entered) == len(set(entered)) >= 5  # levels only move forward
    if cap_mb > 1:
        assert passes == [len(entered)]  # one recording pass for every level
    else:
        assert passes[0] < len(entered)  # the cap splits them: fewer levels a pass
        assert len(passes) > 1


def test_the_read_tracker_sees_writes_through_views() -> None:
    from slimkit.prune._replay import ReadTracker

    a, b = torch.ones(2, 4), torch.ones(2, 4)
    tracker = ReadTracker({id(a): ("a", 0), id(b): ("b", 0)}, [a, b])
    with tracker:
        view = a[:, :2]
        view.add_(1.0)  # a write to a, through a view
        c = b * 2  # a read of b
        c.mul_(3.0)  # a write to a new tensor
    assert tracker.written == {("a", 0)}
    assert tracker.read == {("a", 0), ("b", 0)}
