"""Cache accounting: LRU eviction order, pins, and why the cache stays over its size."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.store import (
    PIN_IN_PROGRESS,
    PIN_INSTALLED,
    PIN_NEWEST,
    CacheEntry,
    CacheIndex,
)

MiB = 1024 * 1024


def pid(k: int) -> bytes:
    return bytes([k]) * 32


def test_evicts_least_recently_used_first_until_it_fits() -> None:
    c = CacheIndex(capacity=100)
    c.add(pid(1), 40, now=1.0)
    c.add(pid(2), 40, now=2.0)
    c.add(pid(3), 40, now=3.0)
    assert c.used == 120
    assert c.evictions() == [pid(1)]
    c.touch(pid(1), now=4.0)  # served again: now 2 is the oldest
    assert c.evictions() == [pid(2)]
    c.add(pid(4), 70, now=5.0)
    assert c.evictions() == [pid(2), pid(3), pid(1)]


def test_evictions_only_answer_remove_applies() -> None:
    c = CacheIndex(capacity=10)
    c.add(pid(1), 20, now=0.0)
    assert c.evictions() == [pid(1)]
    assert pid(1) in c and len(c) == 1
    c.remove(pid(1))
    assert c.evictions() == [] and pid(1) not in c and c.used == 0


def test_nothing_to_evict_under_capacity() -> None:
    c = CacheIndex(capacity=100)
    c.add(pid(1), 100, now=0.0)
    assert c.evictions() == []
    assert c.over_capacity_reason() is None


def test_pinned_packages_are_never_evicted() -> None:
    c = CacheIndex(capacity=50)
    c.add(pid(1), 40, now=1.0)  # oldest, but installed
    c.add(pid(2), 40, now=2.0)
    c.add(pid(3), 40, now=3.0)
    c.pin(pid(1), PIN_INSTALLED)
    assert c.evictions() == [pid(2), pid(3)]
    c.pin(pid(3), PIN_NEWEST)
    assert c.evictions() == [pid(2)]
    assert c.pins(pid(1)) == {PIN_INSTALLED} and c.is_pinned(pid(3))


def test_a_package_stays_pinned_while_any_reason_remains() -> None:
    c = CacheIndex(capacity=0)
    c.add(pid(1), 10, now=0.0)
    c.pin(pid(1), PIN_INSTALLED)
    c.pin(pid(1), PIN_NEWEST)
    c.unpin(pid(1), PIN_INSTALLED)
    assert c.evictions() == []
    c.unpin(pid(1), PIN_NEWEST)
    assert c.evictions() == [pid(1)]
    c.unpin(pid(9), PIN_NEWEST)  # unknown: no-op


def test_pin_before_add_protects_a_download_in_progress() -> None:
    c = CacheIndex(capacity=10)
    c.pin(pid(5), PIN_IN_PROGRESS)
    c.add(pid(5), 30, now=0.0)
    assert c.evictions() == []


def test_over_capacity_reason_names_the_pinned_packages() -> None:
    c = CacheIndex(capacity=1 * MiB)
    c.add(pid(1), 2 * MiB, now=1.0)
    c.add(pid(2), 1 * MiB, now=2.0)
    c.add(pid(3), 1 * MiB, now=3.0)
    c.pin(pid(1), PIN_INSTALLED)
    c.pin(pid(1), PIN_NEWEST)
    c.pin(pid(2), PIN_IN_PROGRESS)
    assert c.evictions() == [pid(3)]
    reason = c.over_capacity_reason()
    assert reason is not None
    assert "3.0 MiB" in reason and "1.0 MiB" in reason
    assert f"{pid(1).hex()[:16]} 2.0 MiB (installed, newest)" in reason
    assert f"{pid(2).hex()[:16]} 1.0 MiB (in_progress)" in reason
    assert reason.index(pid(1).hex()[:16]) < reason.index(pid(2).hex()[:16])
    c.unpin(pid(1), PIN_INSTALLED)
    c.unpin(pid(1), PIN_NEWEST)
    assert c.over_capacity_reason() is None


def test_views_and_errors() -> None:
    c = CacheIndex(capacity=10)
    c.add(pid(2), 3, now=5.0)
    c.add(pid(1), 4, now=5.0)
    assert c.entries() == [CacheEntry(pid(1), 4, 5.0), CacheEntry(pid(2), 3, 5.0)]
    assert c.entry(pid(2)).size == 3
    c.touch(pid(2), now=1.0)  # an older time never moves an entry back
    assert c.entry(pid(2)).last_used == 5.0
    with pytest.raises(KeyError):
        c.touch(pid(7), now=1.0)
    with pytest.raises(ValueError):
        CacheIndex(capacity=-1)
    with pytest.raises(ValueError):
        c.add(pid(3), -1, now=0.0)
    c.set_capacity(5)
    assert c.capacity == 5 and c.evictions() == [pid(1)]


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "touch", "pin", "unpin", "remove"]),
        st.integers(0, 7),
        st.integers(0, 60),
        st.sampled_from([PIN_INSTALLED, PIN_NEWEST, PIN_IN_PROGRESS]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(0, 200), ops=ops)
def test_evictions_are_lru_unpinned_and_minimal(
    capacity: int, ops: list[tuple[str, int, int, str]]
) -> None:
    c = CacheIndex(capacity)
    now = 0.0
    for op, k, size, why in ops:
        now += 1.0
        if op == "add":
            c.add(pid(k), size, now)
        elif op == "touch" and pid(k) in c:
            c.touch(pid(k), now)
        elif op == "pin":
            c.pin(pid(k), why)
        elif op == "unpin":
            c.unpin(pid(k), why)
        elif op == "remove":
            c.remove(pid(k))
    chosen = c.evictions()
    assert len(set(chosen)) == len(chosen)
    assert not any(c.is_pinned(p) for p in chosen)
    after = c.used - sum(c.entry(p).size for p in chosen)
    if c.pinned_bytes <= capacity:
        assert after <= capacity
        assert c.over_capacity_reason() is None
    else:
        assert c.over_capacity_reason() is not None
    # LRU: every unpinned package kept was used no earlier than every evicted one...
    kept = [e for e in c.entries() if e.package_id not in chosen and not c.is_pinned(e.package_id)]
    for p in chosen:
        assert all(c.entry(p).last_used <= e.last_used for e in kept)
    # ...and none was evicted needlessly: without the last one it would not fit.
    if chosen:
        assert after + c.entry(chosen[-1]).size > capacity
