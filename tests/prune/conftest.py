"""Fixtures shared by the sensitivity tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def even_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time spread evenly over the hook events: the cost model's decisions do not depend on
    this machine's load (the real clock is too noisy for tests that count calls)."""
    from slimkit.prune import _cache

    monkeypatch.setattr(
        _cache.ActivationCache, "_prefix", lambda self, cut: min(cut / len(self.clock), 1.0)
    )


@pytest.fixture(autouse=True)
def channels_last_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path runs image batches in channels-last format whenever the outputs agree,
    not only where that is faster on this machine: every comparison with the naive loop below
    then covers that path, the same way on every run (``exact=True`` tests cover the other)."""
    from slimkit.prune import _cache

    monkeypatch.setattr(_cache, "LAYOUT_CHECK_SHARE", float("inf"))
    monkeypatch.setattr(_cache, "LAYOUT_MIN_SPEEDUP", float("inf"))
