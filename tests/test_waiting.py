"""The tests' waits stretch with the machine's load and still end."""

from __future__ import annotations

import pytest

from tests.fixtures import waiting
from tests.fixtures.waiting import MAX_STRETCH, Budget, load_factor, wait_until


def test_a_budget_is_spent_slower_on_a_loaded_machine(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(waiting.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(waiting.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(waiting.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    idle = Budget(10)
    clock[0] = 11.0
    assert idle.spent()
    monkeypatch.setattr(waiting.os, "getloadavg", lambda: (12.0, 12.0, 12.0))  # 6x over 2 cores
    busy = Budget(10)
    clock[0] = 11.0 + 59.0
    assert not busy.spent()
    clock[0] = 11.0 + 61.0
    assert busy.spent()


def test_the_stretch_is_capped_so_a_hang_still_fails(monkeypatch):
    monkeypatch.setattr(waiting.os, "getloadavg", lambda: (1000.0, 1000.0, 1000.0))
    assert load_factor() == MAX_STRETCH


def test_wait_until_returns_the_value_or_names_what_it_waited_for():
    assert wait_until(lambda: 7, 1, "seven") == 7
    with pytest.raises(AssertionError, match="waiting for never"):
        wait_until(lambda: None, 0.3, "never", every=0.05)
