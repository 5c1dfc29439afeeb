"""ReplicaProof: a claimed replica counts only after it answers a chunk challenge correctly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.chunks import hash_chunk
from p2pupdate.core.replicas import CHALLENGE_CHUNKS, ReplicaProof

CHUNKS = [bytes([i]) * 100 for i in range(10)]
HASHES = [hash_chunk(c) for c in CHUNKS]


def proof(seed: int = 1, **kw: float) -> ReplicaProof[str]:
    return ReplicaProof(HASHES, random.Random(seed), **kw)  # type: ignore[arg-type]


def test_a_claim_alone_proves_nothing_the_right_chunks_do() -> None:
    p = proof()
    asked = p.claim("a", 0.0)
    assert len(asked) == CHALLENGE_CHUNKS == 4 and len(set(asked)) == 4
    assert p.proven == frozenset()
    assert p.claim("a", 0.0) == []  # one challenge at a time
    for i in asked[:-1]:
        assert p.on_chunk("a", i, CHUNKS[i], 0.1)
        assert "a" not in p.proven
    assert p.on_chunk("a", asked[-1], CHUNKS[asked[-1]], 0.1)
    assert p.proven == frozenset({"a"})
    assert p.claim("a", 1.0) == []  # proven once is enough


def test_a_wrong_chunk_refutes_the_peer_for_good() -> None:
    p = proof()
    asked = p.claim("liar", 0.0)
    assert p.on_chunk("liar", asked[0], b"junk", 0.1)
    assert p.is_refuted("liar")
    assert not p.on_chunk("liar", asked[1], CHUNKS[asked[1]], 0.2)  # no challenge open
    assert p.claim("liar", 10.0) == [] and p.due(10.0) == []
    assert "liar" not in p.proven


def test_unasked_chunks_and_strangers_are_not_consumed() -> None:
    p = proof()
    asked = p.claim("a", 0.0)
    other = next(i for i in range(10) if i not in asked)
    assert not p.on_chunk("a", other, CHUNKS[other], 0.1)
    assert not p.on_chunk("b", asked[0], CHUNKS[asked[0]], 0.1)
    assert not p.on_reject("b", asked[0], 0.1)
    assert p.pending("a") == frozenset(asked)


def test_reject_and_timeout_are_retried_with_a_fresh_challenge() -> None:
    p = proof(timeout=5.0, retry_after=1.0)
    first = p.claim("busy", 0.0)
    assert p.on_reject("busy", first[0], 0.5)
    assert p.pending("busy") == frozenset()
    assert p.due(0.9) == []
    assert p.due(1.6) == ["busy"]
    second = p.claim("busy", 1.6)
    assert len(second) == 4
    assert p.due(6.0) == []  # still open until its deadline
    assert p.due(6.7) == []  # timed out at 6.6, waits retry_after
    assert p.due(7.7) == ["busy"]


def test_small_and_empty_packages() -> None:
    two: ReplicaProof[str] = ReplicaProof(HASHES[:2], random.Random(1))
    assert sorted(two.claim("a", 0.0)) == [0, 1]
    empty: ReplicaProof[str] = ReplicaProof([], random.Random(1))
    assert empty.claim("a", 0.0) == [] and empty.proven == frozenset({"a"})
    with pytest.raises(ValueError):
        ReplicaProof(HASHES, random.Random(1), samples=0)


def test_peer_gone_drops_an_open_challenge_and_keeps_proofs() -> None:
    p = proof()
    asked = p.claim("a", 0.0)
    p.peer_gone("a")
    assert not p.on_chunk("a", asked[0], CHUNKS[asked[0]], 0.1)
    assert p.due(100.0) == []
    asked = p.claim("b", 0.0)
    for i in asked:
        p.on_chunk("b", i, CHUNKS[i], 0.1)
    p.peer_gone("b")
    assert p.proven == frozenset({"b"})


@settings(max_examples=200, deadline=None)
@given(
    held=st.sets(st.integers(0, 9)),
    seed=st.integers(0, 2**32),
    events=st.lists(
        st.tuples(st.sampled_from(["chunk", "reject", "tick", "claim"]), st.integers(0, 9)),
        max_size=40,
    ),
)
def test_only_a_peer_that_sent_every_challenged_chunk_correctly_is_proven(
    held: set[int], seed: int, events: list[tuple[str, int]]
) -> None:
    """A peer holding only ``held`` answers what it can (junk otherwise), in any order."""
    p = proof(seed, timeout=3.0, retry_after=1.0)
    now = 0.0
    good_answers: set[int] = set()
    p.claim("x", now)
    for kind, index in events:
        now += 0.5
        if kind == "chunk":
            data = CHUNKS[index] if index in held else b"junk"
            asked = index in p.pending("x")
            p.on_chunk("x", index, data, now)
            if asked and index not in held:
                assert p.is_refuted("x")
            if asked and index in held:
                good_answers.add(index)
        elif kind == "reject":
            p.on_reject("x", index, now)
        elif kind == "tick":
            for peer in p.due(now):
                p.claim(peer, now)
        else:
            p.claim("x", now)
        assert not ("x" in p.proven and p.is_refuted("x"))
        if "x" in p.proven:
            assert good_answers, "proven without a single verified chunk"
    if not held:
        assert "x" not in p.proven


def test_asking_us_for_a_challenged_chunk_fails_the_challenge() -> None:
    p = proof(retry_after=1.0)
    asked = p.claim("proxy", 0.0)
    other = next(i for i in range(10) if i not in asked)
    assert not p.on_request("proxy", other, 0.1)  # any other chunk: an ordinary request
    assert p.on_request("proxy", asked[0], 0.1)
    assert p.pending("proxy") == frozenset()
    assert not p.on_chunk("proxy", asked[0], CHUNKS[asked[0]], 0.2)  # too late
    assert "proxy" not in p.proven
    assert p.due(1.2) == ["proxy"]


def test_a_slow_peer_that_keeps_answering_is_not_cut_off() -> None:
    p = proof(timeout=5.0)
    asked = p.claim("slow", 0.0)
    now = 0.0
    for i in asked:
        now += 4.0  # each chunk within the timeout, all of them well past it
        assert p.due(now) == []
        assert p.on_chunk("slow", i, CHUNKS[i], now)
    assert p.proven == frozenset({"slow"})
