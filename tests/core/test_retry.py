"""The retry schedule: which failures are tried again, and after how long."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core import apply as apply_core
from p2pupdate.core.retry import (
    FREE_SPACE,
    NEW_SOURCE,
    RETRYABLE,
    Backoff,
    Final,
    Retry,
    decide,
    is_retryable,
    reason_kind,
    wake_condition,
)

FINAL_REASONS = [
    "quarantined",
    "not_newer",
    "outside_rollout",
    "below_min_version",
    "superseded",
    apply_core.HEALTH_CHECK_FAILED,
    apply_core.HEALTH_TIMEOUT,
    apply_core.NOT_CONFIRMED,
    apply_core.RESTART_FAILED,
    apply_core.TOO_MANY_ATTEMPTS,
    apply_core.ROLLBACK_FAILED,
    apply_core.BAD_ARCHIVE,
    apply_core.HASH_MISMATCH,
    apply_core.TOO_LARGE,
    apply_core.BAD_VERSION,
]


@pytest.mark.parametrize(
    ("reason", "kind", "wake"),
    [
        ("disk_full: not enough free space in /data", "disk_full", FREE_SPACE),
        ("disk_error: [Errno 5] Input/output error", "disk_error", None),
        ("disk error: [Errno 5] Input/output error", "disk_error", None),
        ("error: no partial file for package ab", "error", None),
        ("package_hash_mismatch", "package_hash_mismatch", NEW_SOURCE),
        ("no_sources", "no_sources", NEW_SOURCE),
        (apply_core.DISK_FULL, "disk_full", FREE_SPACE),
        (apply_core.INSTALL_FAILED, "install_failed", None),
        (apply_core.PACKAGE_MISSING, "package_missing", None),
        ("restart_not_started", "restart_not_started", None),
    ],
)
def test_passing_faults_are_retried(reason: str, kind: str, wake: str | None) -> None:
    assert is_retryable(reason)
    assert reason_kind(reason) == kind
    assert wake_condition(reason) == wake
    d = decide(reason, 1, Backoff(first=30, limit=1800), random.Random(1))
    assert isinstance(d, Retry)
    assert (d.reason, d.attempt, d.wake_on) == (kind, 1, wake)
    assert 22.5 <= d.delay <= 30


@pytest.mark.parametrize("reason", FINAL_REASONS)
def test_faults_of_the_release_or_policy_are_final(reason: str) -> None:
    assert not is_retryable(reason)
    assert decide(reason, 1, Backoff(), random.Random(0)) == Final(reason)


def test_delays_double_up_to_the_limit_without_jitter() -> None:
    b = Backoff(first=30, limit=1800, jitter=0.0)
    rng = random.Random(0)
    assert [b.delay(n, rng) for n in range(1, 10)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1800,
        1800,
        1800,
    ]


def test_jitter_comes_from_the_injected_random() -> None:
    b = Backoff(first=10, limit=100)
    assert b.delay(3, random.Random(5)) == b.delay(3, random.Random(5))
    spread = {round(b.delay(3, random.Random(s)), 6) for s in range(20)}
    assert len(spread) > 1, "nodes that failed together do not come back together"


@pytest.mark.parametrize(
    "kwargs", [{"first": 0}, {"first": -1}, {"first": 10, "limit": 5}, {"jitter": 1.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError):
        decide("disk_full", 0, Backoff(), random.Random(0))
    with pytest.raises(ValueError):
        Backoff().nominal(0)


backoffs = st.builds(
    Backoff,
    first=st.floats(min_value=0.001, max_value=1e4),
    limit=st.floats(min_value=1e4, max_value=1e6),
    jitter=st.floats(min_value=0.0, max_value=0.99),
)


@given(backoffs, st.integers(min_value=1, max_value=10_000), st.integers())
def test_delay_is_within_the_jittered_nominal_and_the_bounds(
    b: Backoff, attempt: int, seed: int
) -> None:
    d = b.delay(attempt, random.Random(seed))
    nominal = b.nominal(attempt)
    assert (1 - b.jitter) * nominal <= d <= nominal
    assert (1 - b.jitter) * b.first <= d <= b.limit


@given(backoffs, st.integers(min_value=1, max_value=10_000))
def test_nominal_delay_never_shrinks_and_reaches_the_limit(b: Backoff, attempt: int) -> None:
    assert b.nominal(attempt + 1) >= b.nominal(attempt)
    assert b.nominal(attempt + 1) <= max(2 * b.nominal(attempt), b.first)
    assert b.nominal(10_000) == b.limit


@given(st.text(max_size=80), st.integers(min_value=1, max_value=1000), st.integers())
def test_decide_retries_exactly_the_listed_kinds(reason: str, failures: int, seed: int) -> None:
    d = decide(reason, failures, Backoff(), random.Random(seed))
    if reason_kind(reason) in RETRYABLE:
        assert isinstance(d, Retry) and d.attempt == failures and d.delay > 0
    else:
        assert d == Final(reason_kind(reason))
