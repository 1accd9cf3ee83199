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
