"""Throttle: repeated per-peer lines pass a burst per window, the rest are counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.throttle import OVERFLOW, Suppressed, Throttle


def test_a_burst_passes_the_rest_is_counted_and_summarised_once_per_window() -> None:
    t = Throttle(Limits(log_burst=3, log_window=10.0))
    passed = [t.allow("ban", "10.0.0.1", 1.0) for _ in range(100)]
    assert passed == [True] * 3 + [False] * 97
    assert t.allow("ban", "10.0.0.2", 1.0)  # another peer has its own burst
    assert t.allow("connected", "10.0.0.1", 1.0)  # another kind too
    assert t.summaries(5.0) == []  # the window has not ended
    assert t.summaries(11.0) == [Suppressed("ban", "10.0.0.1", 97, 1.0)]
    assert len(t) == 0  # every key forgotten with its window
    assert t.allow("ban", "10.0.0.1", 11.0)  # a new window


def test_keys_are_capped_and_the_rest_share_one_bucket_per_kind() -> None:
    t = Throttle(Limits(log_burst=2, log_window=10.0, max_log_keys=5))
    for i in range(1000):
        t.allow("connected", f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(t) == 6  # five keys and the overflow bucket
    (over,) = [s for s in t.summaries(10.0) if s.peer == OVERFLOW]
    assert over.count == 1000 - 5 - 2


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1000)), max_size=200))
def test_never_more_than_burst_per_key_per_window(events: list[tuple[int, float]]) -> None:
    t = Throttle(Limits(log_burst=4, log_window=60.0, max_log_keys=8))
    now = 0.0
    written = 0
    held = 0
    for peer, dt in events:
        now += dt
        held += sum(s.count for s in t.summaries(now))
        if t.allow("x", str(peer), now):
            written += 1
    held += sum(s.count for s in t.summaries(now + 61))
    assert written + held == len(events)  # every occurrence is written or counted
    assert len(t) <= 9
