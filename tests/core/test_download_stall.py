"""A stalled download re-examines its sources: exact actions, then random schedules."""

from __future__ import annotations

from collections.abc import Sequence

import blake3
import pytest
from bitarray.util import ones
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.download import (
    AskChunk,
    CancelAsk,
    Downloader,
    DownloadState,
    RefreshSources,
    WriteChunk,
)
from tests.core.test_download import CS, make_content, split

STALL = 30.0


def make_dl(content: bytes, *, depth: int = 4, timeout: float = 10.0) -> Downloader[str]:
    import random

    hashes = [blake3.blake3(c).digest() for c in split(content)]
    return Downloader(
        blake3.blake3(content).digest(),
        len(content),
        hashes,
        rng=random.Random(0),
        pipeline_depth=depth,
        request_timeout=timeout,
        chunk_size=CS,
        stall_timeout=STALL,
    )


def refreshes(actions: Sequence[object]) -> int:
    return sum(isinstance(a, RefreshSources) for a in actions)


def test_no_chunk_for_the_stall_timeout_asks_for_a_refresh_and_again_every_period() -> None:
    dl = make_dl(make_content(4))
    assert dl.stall_deadline() is None  # no clock yet
    assert dl.on_timer(100.0) == []  # starts the clock
    assert dl.stall_deadline() == 100.0 + STALL
    assert dl.on_timer(100.0 + STALL - 0.001) == []
    assert dl.on_timer(100.0 + STALL) == [RefreshSources()]
    assert dl.reexaminations == 1
    assert dl.on_timer(100.0 + STALL + 1) == []  # not on every tick
    assert dl.on_timer(100.0 + 2 * STALL) == [RefreshSources()]


def test_every_new_chunk_postpones_the_refresh() -> None:
    content = make_content(4)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_timer(0.0)
    dl.on_peer_bitfield("A", ones(4), 0.0)
    [first, *_] = [a for a in dl.poll(0.0) if isinstance(a, AskChunk)]
    assert dl.on_timer(5.0) == []
    dl.on_chunk("A", first.index, chunks[first.index], 20.0)
    assert dl.stall_deadline() == 20.0 + STALL
    assert refreshes(dl.on_timer(20.0 + STALL - 1)) == 0
    assert refreshes(dl.on_timer(20.0 + STALL)) == 1


def test_a_duplicate_chunk_is_no_progress() -> None:
    content = make_content(2)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_timer(0.0)
    dl.on_peer_bitfield("A", ones(2), 0.0)
    dl.poll(0.0)
    for a in dl.on_chunk("A", 0, chunks[0], 1.0):
        if isinstance(a, WriteChunk):
            dl.on_chunk_written(a.index)
    dl.on_chunk("A", 0, chunks[0], 25.0)  # again: nothing new
    assert dl.stall_deadline() == 1.0 + STALL


def test_claims_dropped_on_reject_come_back_with_the_refresh_and_are_asked_again() -> None:
    content = make_content(3)
    dl = make_dl(content)
    dl.on_timer(0.0)
    dl.on_peer_bitfield("A", ones(3), 0.0)
    asked = [a.index for a in dl.poll(0.0) if isinstance(a, AskChunk)]
    assert sorted(asked) == [0, 1, 2]
    for i in asked:  # A was busy, or lost them for a moment: REJECT forgets its claims
        dl.on_reject("A", i, 1.0)
    assert dl.poll(1.0) == []  # nobody has anything: stuck
    assert dl.on_timer(STALL) == [RefreshSources()]
    # The shell does what RefreshSources asks: what A advertised is told again.
    dl.on_peer_bitfield("A", ones(3), STALL)
    assert sorted(a.index for a in dl.poll(STALL) if isinstance(a, AskChunk)) == [0, 1, 2]


def test_timeouts_are_forgiven_and_pipelines_restored() -> None:
    content = make_content(8)
    dl = make_dl(content, depth=4, timeout=10.0)
    dl.on_timer(0.0)
    dl.on_peer_bitfield("A", ones(8), 0.0)
    dl.on_peer_bitfield("B", ones(8), 0.0)
    dl.poll(0.0)
    cancelled = [a for a in dl.on_timer(10.0) if isinstance(a, CancelAsk)]
    assert len(cancelled) == 8  # everyone timed out: limits halved with each
    assert dl.pipeline_limit("A") == 1 and dl.pipeline_limit("B") == 1
    dl.poll(10.0)
    dl.on_timer(20.0)
    assert dl.on_timer(STALL)[-1] == RefreshSources()
    assert dl.pipeline_limit("A") == 4 and dl.pipeline_limit("B") == 4
    assert dl.strikes("A") > 0  # the record stays; only the exclusions go
    again = {a.index for a in dl.poll(STALL) if isinstance(a, AskChunk)}
    assert again and len(again) <= 8


def test_no_refresh_once_the_download_is_not_active() -> None:
    content = make_content(1)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_timer(0.0)
    dl.on_peer_bitfield("A", ones(1), 0.0)
    dl.poll(0.0)
    for a in dl.on_chunk("A", 0, chunks[0], 1.0):
        if isinstance(a, WriteChunk):
            dl.on_chunk_written(a.index)
    assert dl.state is DownloadState.VERIFYING
    assert dl.stall_deadline() is None
    assert refreshes(dl.on_timer(1000.0)) == 0


def test_stall_timeout_must_be_positive() -> None:
    import random

    with pytest.raises(ValueError):
        Downloader(b"\0" * 32, 0, [], rng=random.Random(0), stall_timeout=0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=40.0), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_refresh_comes_exactly_when_nothing_arrived_for_the_stall_timeout(
    steps: list[tuple[float, bool]],
) -> None:
    """Model: a refresh is due when ``now`` is STALL past the last chunk or refresh."""
    n = 64
    content = make_content(n)
    chunks = split(content)
    dl = make_dl(content, depth=2, timeout=1000.0)
    now = 0.0
    dl.on_timer(now)
    dl.on_peer_bitfield("A", ones(n), now)
    last = now
    pending = [a.index for a in dl.poll(now) if isinstance(a, AskChunk)]
    for dt, deliver in steps:
        now += dt
        if deliver and pending and dl.state is DownloadState.DOWNLOADING:
            i = pending.pop(0)
            for a in dl.on_chunk("A", i, chunks[i], now):
                if isinstance(a, WriteChunk):
                    dl.on_chunk_written(a.index)
            last = now
        due = dl.state is DownloadState.DOWNLOADING and now >= last + STALL
        got = refreshes(dl.on_timer(now))
        assert got == (1 if due else 0)
        if got:
            last = now
        pending += [a.index for a in dl.poll(now) if isinstance(a, AskChunk)]
