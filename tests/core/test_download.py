"""Tests of the pure download state machine: exact actions, then random schedules."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import blake3
import pytest
from bitarray import bitarray
from bitarray.util import ones, zeros
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.download import (
    TRANSITIONS,
    AnnounceHave,
    AskChunk,
    Ban,
    CancelAsk,
    Completed,
    DownloadAction,
    Downloader,
    DownloadFailed,
    DownloadState,
    RefreshSources,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

CS = 16  # a small chunk size keeps the tests fast; the logic does not depend on it


def make_content(nchunks: int, last: int = CS, seed: int = 0) -> bytes:
    size = 0 if nchunks == 0 else (nchunks - 1) * CS + last
    return random.Random(seed).randbytes(size)


def split(content: bytes) -> list[bytes]:
    return [content[i : i + CS] for i in range(0, len(content), CS)]


def make_dl(
    content: bytes,
    *,
    seed: int = 0,
    depth: int = 8,
    timeout: float = 10.0,
    have: bitarray | None = None,
    endgame_copies: int = 2,
    seconds: float = 0.0,  # pipeline_seconds: off unless a test is about it
) -> Downloader[str]:
    hashes = [blake3.blake3(c).digest() for c in split(content)]
    return Downloader(
        blake3.blake3(content).digest(),
        len(content),
        hashes,
        have=have,
        rng=random.Random(seed),
        pipeline_depth=depth,
        request_timeout=timeout,
        endgame_copies=endgame_copies,
        chunk_size=CS,
        pipeline_seconds=seconds,
    )


def bits_of(n: int, indices: set[int] | range) -> bitarray:
    b = zeros(n)
    for i in indices:
        b[i] = 1
    return b


def requests(actions: list[DownloadAction[str]]) -> set[tuple[str, int]]:
    return {(a.peer, a.index) for a in actions if isinstance(a, AskChunk)}


def only_requests(actions: list[DownloadAction[str]]) -> list[AskChunk[str]]:
    assert all(isinstance(a, AskChunk) for a in actions), actions
    return [a for a in actions if isinstance(a, AskChunk)]


# ---------------------------------------------------------------------------------------
# Picking
# ---------------------------------------------------------------------------------------


def test_rarest_first_prefers_chunks_fewer_peers_advertise() -> None:
    content = make_content(4)
    dl = make_dl(content, depth=2)
    dl.on_peer_bitfield("A", ones(4), 0.0)
    dl.on_peer_bitfield("B", bits_of(4, {0, 1}), 0.0)
    acts = dl.poll(0.0)
    # A is the only source of 2 and 3: it gets those; B gets the common ones.
    assert requests(acts) == {("A", 2), ("A", 3), ("B", 0), ("B", 1)}
    assert dl.state is DownloadState.DOWNLOADING


def test_rarest_first_tie_break_is_random_and_reproducible() -> None:
    content = make_content(64)
    firsts = set()
    for seed in range(30):
        dl = make_dl(content, seed=seed, depth=1)
        dl.on_peer_bitfield("A", ones(64), 0.0)
        (req,) = only_requests(dl.poll(0.0))
        firsts.add(req.index)
        again = make_dl(content, seed=seed, depth=1)
        again.on_peer_bitfield("A", ones(64), 0.0)
        assert only_requests(again.poll(0.0)) == [req]
    assert len(firsts) > 10


def test_pipeline_depth_bounds_requests_per_peer() -> None:
    content = make_content(20)
    chunks = split(content)
    dl = make_dl(content, depth=8)
    dl.on_peer_bitfield("A", ones(20), 0.0)
    first = only_requests(dl.poll(0.0))
    assert len(first) == 8 and all(r.peer == "A" for r in first)
    assert dl.poll(0.0) == []  # pipeline full, nothing more
    dl.on_chunk("A", first[0].index, chunks[first[0].index], 0.1)
    second = only_requests(dl.poll(0.1))
    assert len(second) == 1
    assert second[0].index not in {r.index for r in first}


def test_no_request_for_a_chunk_no_peer_has_and_none_twice_outside_endgame() -> None:
    content = make_content(6)
    dl = make_dl(content, depth=8)
    dl.on_peer_bitfield("A", bits_of(6, {0, 1, 2}), 0.0)
    dl.on_peer_bitfield("B", bits_of(6, {1, 2, 3}), 0.0)
    acts = requests(dl.poll(0.0))
    indices = [i for _, i in acts]
    assert sorted(indices) == [0, 1, 2, 3]  # each once; 4 and 5 are nowhere
    assert all(i in {0, 1, 2} for p, i in acts if p == "A")
    assert all(i in {1, 2, 3} for p, i in acts if p == "B")
    assert not dl.in_endgame  # 4 and 5 are missing and not in flight


def test_three_peers_each_holding_a_third_all_serve() -> None:
    content = make_content(9, last=5)
    chunks = split(content)
    dl = make_dl(content, depth=2)
    thirds = {"A": range(0, 3), "B": range(3, 6), "C": range(6, 9)}
    for peer, r in thirds.items():
        dl.on_peer_bitfield(peer, bits_of(9, r), 0.0)
    pending = dl.poll(0.0)
    while pending:
        a = pending.pop(0)
        if isinstance(a, AskChunk):
            for b in dl.on_chunk(a.peer, a.index, chunks[a.index], 1.0):
                if isinstance(b, WriteChunk):
                    pending.extend(dl.on_chunk_written(b.index))
            pending.extend(dl.poll(1.0))
    assert dl.state is DownloadState.VERIFYING
    assert dl.sources() == {"A": 3, "B": 3, "C": 3}
    assert dl.progress == 1.0 and dl.bytes_done == len(content)


# ---------------------------------------------------------------------------------------
# Verification, writing, announcing
# ---------------------------------------------------------------------------------------


def test_verified_chunk_is_written_then_claimed_then_announced() -> None:
    content = make_content(3, last=7)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_peer_bitfield("A", ones(3), 0.0)
    dl.poll(0.0)
    assert dl.on_chunk("A", 2, chunks[2], 0.5) == [WriteChunk(2, chunks[2])]
    # Verified but not yet in the partial file: not claimed, not servable, not announced.
    assert not dl.has_chunk(2) and dl.have.count() == 0 and dl.bytes_done == 0
    assert dl.on_chunk_written(2) == [AnnounceHave((2,))]
    assert dl.has_chunk(2) and dl.bytes_done == 7 and dl.missing == 2
    assert dl.progress == pytest.approx(7 / len(content))


def test_tampered_chunk_is_rejected_and_sender_banned_download_goes_on() -> None:
    content = make_content(4)
    chunks = split(content)
    dl = make_dl(content, depth=2)
    dl.on_peer_bitfield("evil", ones(4), 0.0)
    dl.on_peer_bitfield("good", ones(4), 0.0)
    reqs = requests(dl.poll(0.0))
    evil_idx = sorted(i for p, i in reqs if p == "evil")
    assert len(evil_idx) == 2
    tampered = bytes(b ^ 1 for b in chunks[evil_idx[0]])
    assert dl.on_chunk("evil", evil_idx[0], tampered, 1.0) == [Ban("evil", "bad_chunk")]
    assert dl.have.count() == 0 and dl.peers() == ["good"]
    # Later input from the banned key is ignored until the shell reports it gone.
    assert dl.on_chunk("evil", evil_idx[1], chunks[evil_idx[1]], 1.0) == []
    dl.on_peer_have("evil", [0], 1.0)
    assert dl.peers() == ["good"]
    # Its chunks are asked of the honest peer once a slot frees.
    good_idx = [i for p, i in reqs if p == "good"]
    dl.on_chunk("good", good_idx[0], chunks[good_idx[0]], 1.1)
    dl.on_chunk("good", good_idx[1], chunks[good_idx[1]], 1.1)
    assert {r.index for r in only_requests(dl.poll(1.1))} == set(evil_idx)


def test_wrong_length_chunk_is_a_bad_chunk() -> None:
    content = make_content(2, last=3)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_peer_bitfield("A", ones(2), 0.0)
    dl.poll(0.0)
    assert dl.on_chunk("A", 1, chunks[1] + b"\0", 0.1) == [Ban("A", "bad_chunk")]
    dl.on_peer_gone("A", 0.2)
    dl.on_peer_bitfield("A", ones(2), 0.3)  # after the ban period the key is fresh
    assert requests(dl.poll(0.3)) == {("A", 0), ("A", 1)}


def test_duplicate_and_unrequested_chunks_are_tolerated() -> None:
    content = make_content(3)
    chunks = split(content)
    dl = make_dl(content)
    # Unrequested, from a peer we never heard of: verified, so it is taken.
    assert dl.on_chunk("stranger", 1, chunks[1], 0.0) == [WriteChunk(1, chunks[1])]
    assert dl.state is DownloadState.DOWNLOADING
    # A second copy while it is being written, and after: ignored.
    assert dl.on_chunk("other", 1, chunks[1], 0.0) == []
    dl.on_chunk_written(1)
    assert dl.on_chunk("other", 1, chunks[1], 0.0) == []
    assert dl.duplicates == 2
    assert dl.sources() == {"stranger": 1}


def test_on_chunk_written_for_a_chunk_not_handed_out_is_local_misuse() -> None:
    dl = make_dl(make_content(2))
    with pytest.raises(LocalProtocolError):
        dl.on_chunk_written(0)
    with pytest.raises(LocalProtocolError):
        dl.on_write_failed(5)


def test_write_failure_makes_the_chunk_wanted_again() -> None:
    content = make_content(2)
    chunks = split(content)
    dl = make_dl(content, depth=1)
    dl.on_peer_bitfield("A", bits_of(2, {0}), 0.0)
    assert only_requests(dl.poll(0.0)) == [AskChunk("A", 0)]
    dl.on_chunk("A", 0, chunks[0], 0.1)
    assert dl.poll(0.1) == []  # 0 is being written; A has nothing else
    assert dl.on_write_failed(0) == []
    assert only_requests(dl.poll(0.2)) == [AskChunk("A", 0)]


# ---------------------------------------------------------------------------------------
# Timeouts, rejects, departures, endgame
# ---------------------------------------------------------------------------------------


def test_timeout_rerequests_from_another_peer_and_strikes_the_slow_one() -> None:
    content = make_content(1)
    chunks = split(content)
    dl = make_dl(content, depth=1, timeout=10.0, endgame_copies=1)
    dl.on_peer_bitfield("A", ones(1), 0.0)
    dl.on_peer_bitfield("B", ones(1), 0.0)
    (first,) = only_requests(dl.poll(0.0))
    slow, other = first.peer, ("B" if first.peer == "A" else "A")
    assert dl.next_deadline() == 10.0
    assert dl.on_timer(9.99) == []
    assert dl.on_timer(10.0) == [CancelAsk(slow, 0)]
    assert dl.strikes(slow) == 1 and dl.strikes(other) == 0
    assert dl.requests_to(slow) == [] and dl.next_deadline() is None
    assert only_requests(dl.poll(10.0)) == [AskChunk(other, 0)]
    assert dl.next_deadline() == 20.0
    # The late copy from the slow peer is still good: taken, the re-request cancelled.
    assert dl.on_chunk(slow, 0, chunks[0], 10.5) == [WriteChunk(0, chunks[0]), CancelAsk(other, 0)]
    assert dl.next_deadline() is None


def test_timed_out_chunk_goes_to_another_peer_not_back_to_the_slow_one() -> None:
    content = make_content(2)
    dl = make_dl(content, depth=1, timeout=5.0, endgame_copies=1)
    dl.on_peer_bitfield("slow", ones(2), 0.0)
    assert only_requests(dl.poll(0.0)) == [AskChunk("slow", dl.requests_to("slow")[0])]
    stuck = dl.requests_to("slow")[0]
    dl.on_peer_bitfield("fast", bits_of(2, {stuck}), 1.0)
    assert dl.poll(1.0) == []  # stuck chunk is in flight; endgame copies capped at 1
    assert dl.on_timer(5.0) == [CancelAsk("slow", stuck)]
    acts = requests(dl.poll(5.0))
    assert ("fast", stuck) in acts and ("slow", stuck) not in acts
    assert dl.strikes("slow") == 1


def test_slow_peer_pipeline_halves_on_timeout_and_grows_back() -> None:
    content = make_content(40)
    chunks = split(content)
    dl = make_dl(content, depth=8, timeout=1.0)
    dl.on_peer_bitfield("A", ones(40), 0.0)
    assert len(dl.poll(0.0)) == 8
    dl.on_timer(1.0)  # all eight time out
    assert dl.strikes("A") == 8 and dl.pipeline_limit("A") == 1
    (req,) = only_requests(dl.poll(1.0))
    dl.on_chunk("A", req.index, chunks[req.index], 1.1)
    assert dl.pipeline_limit("A") == 2
    assert len(dl.poll(1.1)) == 2


def test_reject_reroutes_and_forgets_the_peers_claim() -> None:
    content = make_content(1)
    dl = make_dl(content, depth=1, endgame_copies=1)
    dl.on_peer_bitfield("A", ones(1), 0.0)
    dl.on_peer_bitfield("B", ones(1), 0.0)
    (first,) = only_requests(dl.poll(0.0))
    other = "B" if first.peer == "A" else "A"
    assert dl.on_reject(first.peer, 0, 0.1) == []
    assert dl.strikes(first.peer) == 0
    assert only_requests(dl.poll(0.1)) == [AskChunk(other, 0)]
    dl.on_peer_gone(other, 0.2)
    assert dl.poll(0.2) == []  # the rejecting peer no longer claims chunk 0
    assert dl.on_reject(first.peer, 0, 0.3) == []  # nothing requested: ignored


def test_peer_gone_returns_its_requests_to_the_pool() -> None:
    content = make_content(4)
    dl = make_dl(content, depth=4)
    dl.on_peer_bitfield("A", ones(4), 0.0)
    assert len(dl.poll(0.0)) == 4
    assert dl.on_peer_gone("A", 1.0) == []
    assert dl.in_flight == 0 and dl.next_deadline() is None
    dl.on_peer_bitfield("B", ones(4), 2.0)
    assert {r.index for r in only_requests(dl.poll(2.0))} == {0, 1, 2, 3}


def test_endgame_asks_a_second_peer_and_cancels_the_duplicate() -> None:
    content = make_content(2)
    chunks = split(content)
    dl = make_dl(content, depth=1)
    dl.on_peer_bitfield("A", ones(2), 0.0)
    dl.on_peer_bitfield("B", ones(2), 0.0)
    reqs = {r.peer: r.index for r in only_requests(dl.poll(0.0))}
    assert sorted(reqs.values()) == [0, 1]
    assert dl.in_endgame  # every missing chunk is in flight
    dl.on_chunk("A", reqs["A"], chunks[reqs["A"]], 0.5)
    # A's free slot goes to the straggler B is still sending.
    assert only_requests(dl.poll(0.5)) == [AskChunk("A", reqs["B"])]
    # B's copy arrives first: A's duplicate is cancelled.
    j = reqs["B"]
    assert dl.on_chunk("B", j, chunks[j], 0.6) == [WriteChunk(j, chunks[j]), CancelAsk("A", j)]
    assert dl.in_flight == 0


def test_endgame_caps_copies_per_chunk() -> None:
    content = make_content(1)
    dl = make_dl(content, depth=4, endgame_copies=2)
    for p in "ABCD":
        dl.on_peer_bitfield(p, ones(1), 0.0)
    acts = only_requests(dl.poll(0.0))
    assert len(acts) == 2 and {a.index for a in acts} == {0}
    assert dl.poll(0.0) == []


def test_no_endgame_while_a_missing_chunk_is_not_in_flight() -> None:
    content = make_content(3)
    dl = make_dl(content, depth=1)
    dl.on_peer_bitfield("A", ones(3), 0.0)
    dl.poll(0.0)
    assert not dl.in_endgame
    dl.on_peer_bitfield("B", bits_of(3, {dl.requests_to("A")[0]}), 0.0)
    assert dl.poll(0.0) == []  # B has only what is in flight, and it is not endgame yet
    # Nobody has chunk 2 yet either: still no duplicates.
    dl2 = make_dl(content, depth=1)
    dl2.on_peer_bitfield("A", bits_of(3, {0}), 0.0)
    dl2.on_peer_bitfield("B", bits_of(3, {0}), 0.0)
    assert len(dl2.poll(0.0)) == 1 and not dl2.in_endgame


# ---------------------------------------------------------------------------------------
# State machine, resume, failure, misuse
# ---------------------------------------------------------------------------------------


def test_transition_table_is_explicit_and_terminal_states_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(DownloadState)
    assert TRANSITIONS[DownloadState.FAILED] == frozenset()
    assert TRANSITIONS[DownloadState.COMPLETE] == frozenset()


def test_illegal_transitions_raise_and_failed_is_sticky() -> None:
    content = make_content(2)
    chunks = split(content)
    dl = make_dl(content)
    with pytest.raises(LocalProtocolError):
        dl.on_package_verified(True)  # PENDING -> COMPLETE is illegal
    dl.on_peer_bitfield("A", ones(2), 0.0)
    reqs = only_requests(dl.poll(0.0))
    acts = dl.fail("superseded")
    assert acts[-1] == DownloadFailed("superseded")
    assert {(a.peer, a.index) for a in acts[:-1] if isinstance(a, CancelAsk)} == {
        (r.peer, r.index) for r in reqs
    }
    assert dl.state is DownloadState.FAILED and dl.failure_reason == "superseded"
    with pytest.raises(LocalProtocolError):
        dl.fail("again")
    with pytest.raises(LocalProtocolError):
        dl.on_package_verified(True)
    assert dl.poll(1.0) == [] and dl.on_timer(100.0) == []
    assert dl.on_chunk("A", 0, chunks[0], 1.0) == []
    assert dl.on_peer_bitfield("B", ones(2), 1.0) == []
    assert dl.state is DownloadState.FAILED and dl.failure_reason == "superseded"


def test_chunk_being_written_when_failing_is_still_claimed() -> None:
    content = make_content(2)
    chunks = split(content)
    dl = make_dl(content)
    dl.on_peer_bitfield("A", ones(2), 0.0)
    dl.poll(0.0)
    dl.on_chunk("A", 0, chunks[0], 0.1)
    dl.fail("disk_full")
    assert dl.on_chunk_written(0) == [AnnounceHave((0,))]
    assert dl.has_chunk(0) and dl.state is DownloadState.FAILED


def test_complete_flow_and_whole_file_mismatch() -> None:
    for ok, final in ((True, DownloadState.COMPLETE), (False, DownloadState.FAILED)):
        content = make_content(1, last=9)
        dl = make_dl(content)
        dl.on_peer_bitfield("A", ones(1), 0.0)
        dl.poll(0.0)
        dl.on_chunk("A", 0, content, 0.1)
        assert dl.on_chunk_written(0) == [AnnounceHave((0,)), VerifyPackage()]
        assert dl.state is DownloadState.VERIFYING
        assert dl.poll(0.2) == [] and dl.on_chunk("A", 0, content, 0.2) == []
        expected = [Completed()] if ok else [DownloadFailed("package_hash_mismatch")]
        assert dl.on_package_verified(ok) == expected
        assert dl.state is final
        with pytest.raises(LocalProtocolError):
            dl.fail("late")


def test_resume_requests_only_missing_chunks() -> None:
    content = make_content(10)
    have = bits_of(10, {0, 2, 4, 6, 8})
    dl = make_dl(content, have=have)
    assert dl.missing == 5 and dl.bytes_done == 5 * CS
    dl.on_peer_bitfield("A", ones(10), 0.0)
    assert {r.index for r in only_requests(dl.poll(0.0))} == {1, 3, 5, 7, 9}


def test_resume_with_every_chunk_goes_straight_to_verifying() -> None:
    content = make_content(3)
    dl = make_dl(content, have=ones(3))
    assert dl.poll(0.0) == [VerifyPackage()]
    assert dl.state is DownloadState.VERIFYING


def test_empty_package() -> None:
    dl = make_dl(b"")
    assert dl.nchunks == 0 and dl.progress == 1.0 and dl.bytes_done == 0
    assert dl.poll(0.0) == [VerifyPackage()]
    assert dl.on_package_verified(True) == [Completed()]


def test_malformed_peer_input_raises_remote_error_and_changes_nothing() -> None:
    content = make_content(4)
    dl = make_dl(content)
    with pytest.raises(RemoteProtocolError):
        dl.on_peer_bitfield("A", ones(5), 0.0)
    with pytest.raises(RemoteProtocolError):
        dl.on_peer_have("A", [1, 4], 0.0)
    assert dl.peers() == []
    with pytest.raises(RemoteProtocolError):
        dl.on_chunk("A", -1, b"x", 0.0)
    with pytest.raises(RemoteProtocolError):
        dl.on_reject("A", 4, 0.0)


def test_bad_constructor_arguments() -> None:
    h = [blake3.blake3(b"x").digest()]
    pid = bytes(32)
    with pytest.raises(ValueError):
        Downloader(pid, 2 * CS, h, rng=random.Random(0), chunk_size=CS)  # table too short
    with pytest.raises(ValueError):
        Downloader(b"short", 1, h, rng=random.Random(0), chunk_size=CS)
    with pytest.raises(ValueError):
        Downloader(pid, 1, [b"short"], rng=random.Random(0), chunk_size=CS)
    with pytest.raises(ValueError):
        Downloader(pid, 1, h, have=zeros(2), rng=random.Random(0), chunk_size=CS)
    with pytest.raises(ValueError):
        Downloader(pid, 1, h, rng=random.Random(0), pipeline_depth=0, chunk_size=CS)
    with pytest.raises(ValueError):
        Downloader(pid, 1, h, rng=random.Random(0), request_timeout=0, chunk_size=CS)


def test_have_and_rarest_use_only_live_peers() -> None:
    content = make_content(3)
    dl = make_dl(content, depth=1)
    dl.on_peer_bitfield("A", ones(3), 0.0)
    dl.on_peer_have("B", [0], 0.0)
    dl.on_peer_have("C", [0, 1], 0.0)
    dl.on_peer_gone("C", 0.0)
    # availability now: 0 -> 2 (A, B), 1 -> 1 (A), 2 -> 1 (A); A asks for a rare one.
    reqs = requests(dl.poll(0.0))
    assert reqs in ({("A", 1), ("B", 0)}, {("A", 2), ("B", 0)})


def test_stale_deadlines_do_not_pile_up() -> None:
    content = make_content(600)
    chunks = split(content)
    dl = make_dl(content, depth=4, timeout=100.0)
    dl.on_peer_bitfield("A", ones(600), 0.0)
    queue = only_requests(dl.poll(0.0))
    now = 0.0
    while queue:
        now += 0.01
        r = queue.pop(0)
        for a in dl.on_chunk("A", r.index, chunks[r.index], now):
            if isinstance(a, WriteChunk):
                dl.on_chunk_written(a.index)
        queue += only_requests(dl.poll(now))
        deadline = dl.next_deadline()
        if dl.in_flight:  # the oldest request in flight went out at most 4 steps ago
            assert deadline is not None and now - 0.05 + 100.0 <= deadline <= now + 100.0
        assert dl._flight.heap_size() <= 64 + 4 * 4 + 1  # memory follows the pipeline, not the file
    assert dl.state is DownloadState.VERIFYING


def test_many_chunks_many_peers_complete_without_duplicates() -> None:
    n, npeers = 2048, 32
    content = make_content(n)
    chunks = split(content)
    dl = make_dl(content, depth=8)
    rng = random.Random(7)
    for p in range(npeers):
        bits = zeros(n)
        for i in range(n):
            bits[i] = p == 0 or rng.random() < 0.3
        dl.on_peer_bitfield(f"p{p}", bits, 0.0)
    queue = dl.poll(0.0)
    while queue:
        a = queue.pop()
        if isinstance(a, AskChunk):
            for b in dl.on_chunk(a.peer, a.index, chunks[a.index], 1.0):
                if isinstance(b, WriteChunk):
                    dl.on_chunk_written(b.index)
                elif isinstance(b, CancelAsk):
                    queue.append(b)
            queue.extend(dl.poll(1.0))
        elif isinstance(a, CancelAsk) and AskChunk(a.peer, a.index) in queue:
            queue.remove(AskChunk(a.peer, a.index))  # cancelled before it was served
    assert dl.state is DownloadState.VERIFYING and dl.duplicates == 0
    assert len(dl.sources()) > npeers // 2  # the load is spread


# ---------------------------------------------------------------------------------------
# Random schedules (hypothesis)
# ---------------------------------------------------------------------------------------


@dataclass
class World:
    """A test shell around one Downloader: peers, lossy delivery, a disk."""

    content: bytes
    dl: Downloader[str]
    claims: dict[str, bitarray]  # what each peer holds (what it would advertise)
    evil: set[str]
    depth: int
    connected: set[str] = field(default_factory=set)
    banned: set[str] = field(default_factory=set)
    outstanding: list[tuple[str, int]] = field(default_factory=list)
    told: dict[str, bitarray] = field(default_factory=dict)  # what the dl was told
    to_write: list[int] = field(default_factory=list)
    disk: dict[int, bytes] = field(default_factory=dict)
    verify_asked: bool = False
    now: float = 0.0

    @property
    def chunks(self) -> list[bytes]:
        return split(self.content)

    def apply(self, actions: list[DownloadAction[str]]) -> None:
        for a in actions:
            if isinstance(a, AskChunk):
                assert a.peer in self.connected and a.peer not in self.banned
                assert self.told[a.peer][a.index], "requested what the peer never offered"
                assert (a.peer, a.index) not in self.outstanding
                self.outstanding.append((a.peer, a.index))
            elif isinstance(a, CancelAsk):
                if (a.peer, a.index) in self.outstanding:
                    self.outstanding.remove((a.peer, a.index))
            elif isinstance(a, WriteChunk):
                assert a.data == self.chunks[a.index], "a tampered chunk reached the disk"
                self.to_write.append(a.index)
            elif isinstance(a, Ban):
                event("a liar was banned")
                assert a.peer in self.evil and a.reason == "bad_chunk"
                self.banned.add(a.peer)
                self.disconnect(a.peer)
            elif isinstance(a, AnnounceHave):
                assert all(self.dl.has_chunk(i) for i in a.indices)
            elif isinstance(a, VerifyPackage):
                self.verify_asked = True
        self.check()

    def check(self) -> None:
        have = self.dl.have
        # The bitmap never claims a chunk that is not verified and on disk.
        for i in have.search(1):
            assert self.disk.get(i) == self.chunks[i]
        per_peer: dict[str, int] = {}
        for p, _ in self.outstanding:
            per_peer[p] = per_peer.get(p, 0) + 1
        assert all(c <= self.depth for c in per_peer.values())
        assert (self.dl.next_deadline() is None) == (self.dl.in_flight == 0)
        if self.dl.in_endgame:
            event("endgame")

    def connect(self, peer: str) -> None:
        self.connected.add(peer)
        self.told[peer] = bitarray(self.claims[peer])
        self.apply(self.dl.on_peer_bitfield(peer, self.claims[peer], self.now))

    def disconnect(self, peer: str) -> None:
        self.connected.discard(peer)
        self.outstanding = [(p, i) for p, i in self.outstanding if p != peer]
        self.apply(self.dl.on_peer_gone(peer, self.now))

    def deliver(self, k: int) -> None:
        peer, i = self.outstanding.pop(k)
        data = self.chunks[i]
        if peer in self.evil:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.apply(self.dl.on_chunk(peer, i, data, self.now))

    def write(self, k: int, ok: bool = True) -> None:
        i = self.to_write.pop(k)
        if ok:
            self.disk[i] = self.chunks[i]
            self.apply(self.dl.on_chunk_written(i))
        else:
            self.apply(self.dl.on_write_failed(i))

    def poll(self) -> None:
        self.apply(self.dl.poll(self.now))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_schedule_ends_complete_with_exact_bytes(data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 10), label="nchunks")
    last = data.draw(st.integers(1, CS), label="last")
    content = make_content(n, last, seed=data.draw(st.integers(0, 3)))
    depth = data.draw(st.integers(1, 3), label="depth")
    dl = make_dl(content, seed=data.draw(st.integers(0, 99)), depth=depth, timeout=1.0)
    claims = {"full": ones(n), "evil": ones(n)}
    for k in range(data.draw(st.integers(0, 3), label="partial peers")):
        claims[f"p{k}"] = bitarray([data.draw(st.booleans()) for _ in range(n)]) if n else zeros(0)
    w = World(content, dl, claims, evil={"evil"}, depth=depth)
    history = [dl.state]
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        step = data.draw(st.integers(0, 9))
        peers = sorted(claims)
        if step == 0:
            peer = data.draw(st.sampled_from(peers))
            if peer not in w.connected and peer not in w.banned:
                w.connect(peer)
        elif step == 1 and w.connected:
            w.disconnect(data.draw(st.sampled_from(sorted(w.connected))))
        elif step == 2 and w.outstanding:
            w.deliver(data.draw(st.integers(0, len(w.outstanding) - 1)))
        elif step == 3 and w.outstanding:  # the peer lost the chunk and rejects
            peer, i = w.outstanding.pop(data.draw(st.integers(0, len(w.outstanding) - 1)))
            w.told[peer][i] = 0
            w.apply(dl.on_reject(peer, i, w.now))
        elif step == 4 and w.outstanding:  # lost on the wire
            w.outstanding.pop(data.draw(st.integers(0, len(w.outstanding) - 1)))
        elif step == 5:
            w.now += data.draw(st.floats(0.0, 1.5))
            expired = dl.on_timer(w.now)
            if expired:
                event("a request timed out")
            w.apply(expired)
        elif step == 6 and w.to_write:
            w.write(data.draw(st.integers(0, len(w.to_write) - 1)), ok=data.draw(st.booleans()))
        elif step == 7 and n:
            peer = data.draw(st.sampled_from(peers))
            if peer in w.connected and not peer.startswith(("full", "evil")):
                i = data.draw(st.integers(0, n - 1))
                w.claims[peer][i] = 1
                w.told[peer][i] = 1
                w.apply(dl.on_peer_have(peer, [i], w.now))
        elif step == 8 and n:  # an unrequested chunk from an honest peer that has it
            peer = data.draw(st.sampled_from(peers))
            i = data.draw(st.integers(0, n - 1))
            if peer in w.connected and peer not in w.evil and w.claims[peer][i]:
                if (peer, i) in w.outstanding:  # it answers our request, unasked or not
                    w.outstanding.remove((peer, i))
                w.apply(dl.on_chunk(peer, i, w.chunks[i], w.now))
        w.poll()
        history.append(dl.state)

    # Drain: the full peer is (re)connected and everything it is asked for arrives.
    if "full" in w.connected:
        w.told["full"] = ones(n)
        w.apply(dl.on_peer_bitfield("full", ones(n), w.now))
    else:
        w.connect("full")
    for _ in range(10 * n + 50):
        if dl.state is not DownloadState.DOWNLOADING and dl.state is not DownloadState.PENDING:
            break
        while w.to_write:
            w.write(0)
        while w.outstanding:
            w.deliver(0)
        w.now += 0.5
        w.apply(dl.on_timer(w.now))
        w.poll()
        history.append(dl.state)
    assert dl.state is DownloadState.VERIFYING and w.verify_asked
    assembled = b"".join(w.disk[i] for i in range(n))
    assert assembled == content
    assert dl.on_package_verified(blake3.blake3(assembled).digest() == dl.package_id) == [
        Completed()
    ]
    history.append(dl.state)
    for a, b in itertools.pairwise(history):
        assert a is b or b in TRANSITIONS[a]
    assert w.banned <= {"evil"}
    assert dl.bytes_done == len(content) and dl.progress == 1.0


# ---------------------------------------------------------------------------------------
# Slow peers: measured service time, shorter pipelines, requests moved to faster holders
# ---------------------------------------------------------------------------------------


def _feed(
    dl: Downloader[str], chunks: list[bytes], peer: str, index: int, now: float
) -> list[DownloadAction[str]]:
    out: list[DownloadAction[str]] = []
    for a in dl.on_chunk(peer, index, chunks[index], now):
        if isinstance(a, WriteChunk):
            out += dl.on_chunk_written(a.index)
        else:
            out.append(a)
    return out


def test_a_slow_peer_holding_a_rare_chunk_is_asked_little_and_loses_it_to_a_faster_holder() -> None:
    content = make_content(40)
    chunks = split(content)
    dl = make_dl(content, depth=4)
    fast = bits_of(40, set(range(30)))
    dl.on_peer_bitfield("F", fast, 0.0)
    dl.on_peer_bitfield("S", ones(40), 0.0)  # 30..39 only at S: rarest, asked of S first
    first = only_requests(dl.poll(0.0))
    on_s = [r.index for r in first if r.peer == "S"]
    assert len(on_s) == 4 and all(i >= 30 for i in on_s)
    # F delivers every 0.1 s, S one chunk in 1 s: S serves us ten times slower.
    now = 0.0
    for _ in range(6):
        now += 0.1
        (r,) = [r for r in dl.requests_to("F")][:1]
        _feed(dl, chunks, "F", r, now)
        dl.poll(now)
    _feed(dl, chunks, "S", on_s[0], 1.0)
    dl.poll(1.0)
    svc_f, svc_s = dl.service_time("F"), dl.service_time("S")
    assert svc_f is not None and svc_s is not None and svc_s > 5 * svc_f
    assert dl.pipeline_limit("S") == 1  # what S is asked arrives about when F's would
    assert dl.pipeline_limit("F") == 4
    # F now holds the rare chunks S is still sending us: they move to F.
    waiting = dl.requests_to("S")
    assert len(waiting) == 3
    dl.on_peer_have("F", waiting, 1.0)
    for r in list(dl.requests_to("F")):  # F delivers what it had in flight: free slots
        _feed(dl, chunks, "F", r, 1.05)
    acts = dl.poll(1.05)
    moved = {a.index for a in acts if isinstance(a, CancelAsk) and a.peer == "S"}
    assert moved and moved <= set(waiting)
    assert {a.index for a in acts if isinstance(a, AskChunk) and a.peer == "F"} >= moved
    assert not set(dl.requests_to("S")) & moved


def test_equal_peers_keep_full_pipelines() -> None:
    content = make_content(64)
    chunks = split(content)
    dl = make_dl(content, depth=4)
    for p in "AB":
        dl.on_peer_bitfield(p, ones(64), 0.0)
    dl.poll(0.0)
    now = 0.0
    for _ in range(20):
        now += 0.05
        for p in "AB":
            _feed(dl, chunks, p, dl.requests_to(p)[0], now)
        dl.poll(now)
        assert dl.pipeline_limit("A") == dl.pipeline_limit("B") == 4
        assert len(dl.requests_to("A")) == len(dl.requests_to("B")) == 4


def test_endgame_duplicates_the_chunk_expected_last() -> None:
    for seed in range(8):  # whatever the random tie-break would pick
        content = make_content(7)
        chunks = split(content)
        dl = make_dl(content, depth=1, seed=seed)
        for p in ("F", "S", "T"):
            dl.on_peer_bitfield(p, ones(7), 0.0)
        reqs = {r.peer: r.index for r in only_requests(dl.poll(0.0))}
        # F serves us in 0.1 s, T in 0.13 s, S in 0.16 s (none four times as slow as F: no
        # request is moved, only endgame duplicates).
        for now, peer in ((0.1, "F"), (0.13, "T"), (0.16, "S"), (0.2, "F")):
            _feed(dl, chunks, peer, reqs[peer], now)
            reqs.update({r.peer: r.index for r in only_requests(dl.poll(now))})
        assert dl.in_endgame
        # F is free: it duplicates S's chunk (expected in 0.16 s), not T's (0.13 s).
        _feed(dl, chunks, "F", reqs["F"], 0.25)
        assert only_requests(dl.poll(0.25)) == [AskChunk("F", reqs["S"])]


def test_a_stall_forgets_measured_speeds() -> None:
    content = make_content(40)
    chunks = split(content)
    dl = make_dl(content, depth=4)
    dl.on_peer_bitfield("F", bits_of(40, set(range(20))), 0.0)
    dl.on_peer_bitfield("S", ones(40), 0.0)
    dl.on_timer(0.0)
    dl.poll(0.0)
    now = 0.0
    for _ in range(4):
        now += 0.1
        _feed(dl, chunks, "F", dl.requests_to("F")[0], now)
        dl.poll(now)
    _feed(dl, chunks, "S", dl.requests_to("S")[0], 2.0)
    dl.poll(2.0)
    assert dl.pipeline_limit("S") == 1
    # Nothing more arrives: the re-examination gives S its whole pipeline back (it may
    # be the only source of what is left).
    acts = dl.on_timer(2.0 + DEFAULT_LIMITS.download_stall_timeout)
    assert any(isinstance(a, RefreshSources) for a in acts)
    assert dl.service_time("S") is None and dl.pipeline_limit("S") == 4


# ---------------------------------------------------------------------------------------
# could_ask: which HAVEs need the download loop at all
# ---------------------------------------------------------------------------------------


def test_could_ask_only_with_a_free_slot_and_a_missing_chunk() -> None:
    content = make_content(6)
    chunks = split(content)
    dl = make_dl(content, depth=2)
    dl.on_peer_bitfield("A", bits_of(6, {0, 1}), 0.0)
    asked = only_requests(dl.poll(0.0))
    assert {a.index for a in asked} == {0, 1}  # A's pipeline is full now
    dl.on_peer_have("A", [2], 0.1)
    assert not dl.could_ask("A", [2])  # no free slot: poll would ask A for nothing
    assert dl.poll(0.1) == []
    for act in dl.on_chunk("A", 0, chunks[0], 0.2):
        if isinstance(act, WriteChunk):
            dl.on_chunk_written(act.index)
    assert dl.could_ask("A", [2])  # a slot is free and 2 is missing
    assert not dl.could_ask("A", [0])  # 0 is written: nothing to ask
    assert not dl.could_ask("B", [2])  # a peer never seen has no slot
    assert requests(dl.poll(0.2)) == {("A", 2)}


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    depth=st.integers(1, 4),
    seed=st.integers(0, 1000),
    steps=st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 11)), max_size=30),
    have=st.tuples(st.sampled_from("ABC"), st.lists(st.integers(0, 11), min_size=1, max_size=4)),
)
def test_a_have_could_ask_calls_useless_changes_nothing_poll_does(
    n: int,
    depth: int,
    seed: int,
    steps: list[tuple[str, int]],
    have: tuple[str, list[int]],
) -> None:
    # Random history (HAVEs, deliveries), then poll until it asks nothing: a HAVE that
    # could_ask says is useless must leave poll with nothing to do.
    content = make_content(n, seed=seed)
    chunks = split(content)
    dl = make_dl(content, seed=seed, depth=depth)
    now = 0.0
    asked: list[AskChunk[str]] = []
    for peer, i in steps:
        now += 0.01
        i %= n
        dl.on_peer_have(peer, [i], now)
        asked += [a for a in dl.poll(now) if isinstance(a, AskChunk)]
        if asked and i % 2:
            a = asked.pop(0)
            for act in dl.on_chunk(a.peer, a.index, chunks[a.index], now):
                if isinstance(act, WriteChunk):
                    dl.on_chunk_written(act.index)
    for _ in range(100):
        if not dl.poll(now):
            break
    else:
        raise AssertionError("poll keeps finding work at one instant")
    peer, idx = have[0], [i % n for i in have[1]]
    dl.on_peer_have(peer, idx, now)
    if not dl.could_ask(peer, idx):
        assert dl.poll(now) == []
    event(f"could_ask={dl.could_ask(peer, idx)}")


# ---------------------------------------------------------------------------------------
# Pipelines kept to a time: pipeline_seconds of measured service per source
# ---------------------------------------------------------------------------------------


def test_a_source_is_asked_for_about_pipeline_seconds_of_its_service() -> None:
    content = make_content(300)
    chunks = split(content)
    dl = make_dl(content, depth=16, seconds=0.3)
    for p in "ABC":
        dl.on_peer_bitfield(p, ones(300), 0.0)
    assert len(only_requests(dl.poll(0.0))) == 48  # unmeasured: the full depth
    assert {dl.pipeline_limit(p) for p in "ABC"} == {16}
    # A serves us a chunk every 0.08 s (a 4 MiB/s uploader shared by 9 downloaders:
    # ~0.14 s), B every 0.04 s, C every 0.01 s; none is 4x slower than the median (B).
    now = 0.0
    for k in range(1, 31):
        now = k * 0.01
        _feed(dl, chunks, "C", dl.requests_to("C")[0], now)
        for p, every in (("A", 8), ("B", 4)):
            if k % every == 0:
                _feed(dl, chunks, p, dl.requests_to(p)[0], now)
        dl.poll(now)
    assert dl.service_time("A") == pytest.approx(0.08)
    assert dl.service_time("B") == pytest.approx(0.04)
    assert dl.pipeline_limit("A") == 4  # 0.3 s of its service, rounded up
    assert dl.pipeline_limit("B") == 8
    assert dl.pipeline_limit("C") == 16  # 30 would be 0.3 s: the depth caps it
    assert len(dl.requests_to("C")) == 16
    # A still has what it was asked before it was measured; it gets nothing more until
    # that drains below 4, then it is kept at 4.
    assert len(dl.requests_to("A")) == 13
    after = []
    for _ in range(15):
        now += 0.08
        _feed(dl, chunks, "A", dl.requests_to("A")[0], now)
        dl.poll(now)
        after.append(len(dl.requests_to("A")))
    assert after == [12, 11, 10, 9, 8, 7, 6, 5, 4, 4, 4, 4, 4, 4, 4]


def test_a_timed_pipeline_keeps_two_requests_and_never_exceeds_the_limit() -> None:
    content = make_content(40)
    chunks = split(content)
    dl = make_dl(content, depth=4, seconds=0.3)
    dl.on_peer_bitfield("A", ones(40), 0.0)
    dl.poll(0.0)
    _feed(dl, chunks, "A", dl.requests_to("A")[0], 2.0)  # 2 s per chunk: 0.15 of one
    assert dl.pipeline_limit("A") == 2  # one being sent, one waiting
    dl.on_timer(2.0 + 10.0)  # requests time out: the limit halves
    assert dl.pipeline_limit("A") <= 2


def test_pipeline_seconds_must_not_be_negative() -> None:
    content = make_content(2)
    with pytest.raises(ValueError, match="pipeline_seconds"):
        make_dl(content, seconds=-1.0)


def test_endgame_picks_nothing_for_a_peer_whose_pipeline_is_over_its_cap() -> None:
    # The cap follows the measured median, so it can fall below what a peer already has
    # in flight; ``free`` is then negative and must mean "none", not a negative slice.
    from p2pupdate.core.download.endgame import endgame_picks
    from p2pupdate.core.download.sources import Source

    mine, other = Source(8, 4), Source(8, 4)
    mine.bits.setall(1)
    other.bits.setall(1)
    other.requests = {i: i for i in range(8)}  # all in flight there, none arrived yet
    holders = {i: {"other": i} for i in range(8)}
    sources = {"me": mine, "other": other}

    def picks(free: int) -> list[int]:
        return endgame_picks(
            "me",
            mine,
            free,
            holders,
            sources,
            copies=2,
            median=None,
            excluded=lambda _k, _i: False,
            rng=random.Random(1),
        )

    assert len(picks(3)) == 3
    assert picks(0) == []
    assert picks(-2) == []
