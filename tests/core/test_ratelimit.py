"""Token-bucket arithmetic: exact delays, then properties over random schedules."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.ratelimit import TokenBucket


def test_starts_full_and_consumes_without_delay_while_tokens_last() -> None:
    b = TokenBucket(rate=100.0, burst=50.0)
    assert b.available(0.0) == 50.0
    assert b.consume(30, 0.0) == 0.0
    assert b.consume(20, 0.0) == 0.0
    assert b.available(0.0) == 0.0


def test_debt_paces_back_to_back_reservations_at_the_rate() -> None:
    b = TokenBucket(rate=100.0, burst=10.0)
    assert b.consume(10, 0.0) == 0.0
    # Three callers reserve 50 bytes each at the same instant: they go 0.5 s apart.
    assert b.consume(50, 0.0) == pytest.approx(0.5)
    assert b.consume(50, 0.0) == pytest.approx(1.0)
    assert b.consume(50, 0.0) == pytest.approx(1.5)
    assert b.available(0.0) == pytest.approx(-150.0)
    assert b.available(1.5) == pytest.approx(0.0)


def test_partial_tokens_give_the_exact_remaining_wait() -> None:
    b = TokenBucket(rate=1000.0, burst=100.0)
    b.consume(100, 0.0)
    assert b.consume(40, 0.01) == pytest.approx(0.03)  # 10 there, 30 missing at 1000/s


def test_refill_is_capped_at_burst() -> None:
    b = TokenBucket(rate=100.0, burst=50.0)
    b.consume(50, 0.0)
    assert b.available(100.0) == 50.0


def test_unlimited_never_waits() -> None:
    b = TokenBucket(rate=0, burst=0)
    assert b.unlimited
    assert b.consume(10**12, 0.0) == 0.0
    assert b.available(0.0) == math.inf


def test_time_going_backwards_is_no_time() -> None:
    b = TokenBucket(rate=10.0, burst=10.0, now=5.0)
    b.consume(10, 5.0)
    assert b.available(4.0) == 0.0
    assert b.available(5.5) == pytest.approx(5.0)


def test_refund_returns_unused_tokens() -> None:
    b = TokenBucket(rate=10.0, burst=100.0)
    b.consume(150, 0.0)
    b.refund(50, 0.0)
    assert b.available(0.0) == pytest.approx(0.0)
    b.refund(1000, 0.0)
    assert b.available(0.0) == 100.0


def test_set_rate_keeps_earned_tokens_and_caps_them() -> None:
    b = TokenBucket(rate=10.0, burst=100.0)
    b.consume(100, 0.0)
    b.set_rate(20.0, 30.0, 2.0)  # 20 earned at the old rate
    assert b.available(2.0) == pytest.approx(20.0)
    assert b.available(3.0) == pytest.approx(30.0)
    b.set_rate(0, 0, 3.0)
    assert b.consume(10**9, 3.0) == 0.0
    b.set_rate(10.0, 5.0, 4.0)  # from unlimited: starts full
    assert b.available(4.0) == 5.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=10)
    with pytest.raises(ValueError):
        TokenBucket(rate=10, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=math.inf, burst=10)
    b = TokenBucket(rate=10, burst=10)
    with pytest.raises(ValueError):
        b.consume(-1, 0.0)
    with pytest.raises(ValueError):
        b.refund(-1, 0.0)


schedule = st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(0, 5000)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(1.0, 1e6),
    burst=st.floats(1.0, 1e5),
    steps=schedule,
)
def test_callers_honouring_delays_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    b = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    sends: list[tuple[float, int]] = []  # (moment the bytes may go, bytes)
    for gap, n in steps:
        now += gap
        delay = b.consume(n, now)
        assert delay >= 0.0
        sends.append((now + delay, n))
    # Over any prefix of time from the start, what went out fits the bucket's promise.
    total = 0
    for t, n in sorted(sends):
        total += n
        assert total <= burst + rate * t + 1e-6 * (burst + rate * t + 1)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(1.0, 1e6), burst=st.floats(1.0, 1e5), steps=schedule)
def test_delay_is_zero_exactly_when_the_tokens_are_there(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    b = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    for gap, n in steps:
        now += gap
        before = b.available(now)
        assert before <= burst
        delay = b.consume(n, now)
        if before >= n:
            assert delay == 0.0
        else:
            assert delay == pytest.approx((n - before) / rate)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(10.0, 1e6), chunk=st.integers(1, 65536), count=st.integers(2, 50))
def test_a_saturating_sender_is_paced_per_chunk_at_the_rate(
    rate: float, chunk: int, count: int
) -> None:
    """A sender that reserves the next chunk when the previous may go sees even spacing."""
    b = TokenBucket(rate=rate, burst=chunk)
    now = 0.0
    moments = []
    for _ in range(count):
        now += b.consume(chunk, now)
        moments.append(now)
    gaps = [b2 - a for a, b2 in itertools.pairwise(moments)]
    assert gaps[0] == pytest.approx(chunk / rate)
    assert all(g == pytest.approx(chunk / rate) for g in gaps)
