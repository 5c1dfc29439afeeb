"""Replica evidence for ``publish``: a peer counts only once it has proved it holds the package.

What it does
    A peer that says COMPLETE is only making a claim. :class:`ReplicaProof` turns
    claims into evidence: for each claiming peer it picks a few chunk indices at
    random (fresh for every challenge, so answers cannot be prepared or replayed),
    the shell REQUESTs exactly those chunks from that peer, and each CHUNK that
    comes back is hashed and compared with the signed chunk table. A peer whose
    every challenged chunk verifies is *proven*; one that sends a wrong chunk is
    *refuted* for good; one that rejects or does not answer in time is challenged
    again later (an honest peer may be busy).

    A peer that asks the publisher for a chunk of its own open challenge (to answer
    with the publisher's data) fails that challenge, and the chunk is not served.

What it does not do
    No network, no clock: the shell sends the requests and passes ``now`` in.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pupdate.core.chunks import hash_chunk

__all__ = ["CHALLENGE_CHUNKS", "CHALLENGE_TIMEOUT", "RETRY_AFTER", "ReplicaProof"]

P = TypeVar("P", bound=Hashable)

# Chunks asked of each claimed replica. A peer holding a fraction f of the package
# passes with probability about f^4: one with half of it, 1 time in 16. It costs the
# peer 256 KiB of upload, next to the package it claims to hold.
CHALLENGE_CHUNKS = 4
# Seconds a peer may go without answering one more challenged chunk (a 64 KiB chunk
# from a busy peer with an upload limit of 10 KiB/s takes under 7 s); after that the
# challenge fails and is asked again, with new indices.
CHALLENGE_TIMEOUT = 20.0
# Seconds before a peer that rejected or timed out is challenged again.
RETRY_AFTER = 1.0


@dataclass
class _Challenge:
    indices: set[int]
    deadline: float


@dataclass
class _PeerState:
    challenge: _Challenge | None = None
    retry_at: float = 0.0
    proven: bool = False
    refuted: bool = False
    claimed: bool = False


@dataclass
class ReplicaProof(Generic[P]):
    """Which peers proved they hold the package with chunk table ``hashes``."""

    hashes: Sequence[bytes]
    rng: random.Random
    samples: int = CHALLENGE_CHUNKS
    timeout: float = CHALLENGE_TIMEOUT
    retry_after: float = RETRY_AFTER
    _peers: dict[P, _PeerState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.samples < 1 or self.timeout <= 0 or self.retry_after < 0:
            raise ValueError("samples, timeout must be positive; retry_after not negative")

    # -- views ------------------------------------------------------------------------
    @property
    def proven(self) -> frozenset[P]:
        return frozenset(p for p, s in self._peers.items() if s.proven)

    def is_refuted(self, peer: P) -> bool:
        st = self._peers.get(peer)
        return st is not None and st.refuted

    def pending(self, peer: P) -> frozenset[int]:
        """Indices of ``peer``'s open challenge (empty when none)."""
        st = self._peers.get(peer)
        if st is None or st.challenge is None:
            return frozenset()
        return frozenset(st.challenge.indices)

    # -- events -----------------------------------------------------------------------
    def claim(self, peer: P, now: float) -> list[int]:
        """``peer`` says it holds the package: the chunk indices to REQUEST from it now.

        Empty when nothing is to be asked: already proven, refuted, a challenge open,
        or waiting to retry (:meth:`due` names it when the wait is over). A package
        with no chunks needs no proof.
        """
        st = self._peers.setdefault(peer, _PeerState())
        st.claimed = True
        if st.proven or st.refuted or st.challenge is not None or now < st.retry_at:
            return []
        if not self.hashes:
            st.proven = True
            return []
        k = min(self.samples, len(self.hashes))
        indices = sorted(self.rng.sample(range(len(self.hashes)), k))
        st.challenge = _Challenge(set(indices), now + self.timeout)
        return indices

    def on_chunk(self, peer: P, index: int, data: bytes, now: float) -> bool:
        """A CHUNK from ``peer``; True if it answered an open challenge (it is consumed).

        A chunk that does not match the table refutes the peer: it claimed a copy it
        does not have (or a corrupt one), and it never counts.
        """
        st = self._peers.get(peer)
        if st is None or st.challenge is None or index not in st.challenge.indices:
            return False
        if hash_chunk(data) != self.hashes[index]:
            st.challenge = None
            st.refuted = True
            return True
        st.challenge.indices.discard(index)
        st.challenge.deadline = now + self.timeout  # progress: a slow peer is not cut off
        if not st.challenge.indices:
            st.challenge = None
            st.proven = True
        return True

    def on_reject(self, peer: P, index: int, now: float) -> bool:
        """A REJECT from ``peer``; True if it was for an open challenge (retried later)."""
        st = self._peers.get(peer)
        if st is None or st.challenge is None or index not in st.challenge.indices:
            return False
        self._fail(st, now)
        return True

    def on_request(self, peer: P, index: int, now: float) -> bool:
        """``peer`` asks *us* for a chunk; True if it is one of its open challenge.

        A peer that holds the package never asks for its chunks: one that does is
        trying to answer the challenge with our own data. The challenge fails (asked
        again later, with other indices) and the shell refuses to serve that chunk.
        """
        st = self._peers.get(peer)
        if st is None or st.challenge is None or index not in st.challenge.indices:
            return False
        self._fail(st, now)
        return True

    def due(self, now: float) -> list[P]:
        """Peers to challenge again now: timed-out challenges and finished waits."""
        out: list[P] = []
        for peer, st in self._peers.items():
            if st.challenge is not None and now >= st.challenge.deadline:
                self._fail(st, now)
            if (
                st.claimed
                and st.challenge is None
                and not st.proven
                and not st.refuted
                and now >= st.retry_at
            ):
                out.append(peer)
        return out

    def peer_gone(self, peer: P) -> None:
        """``peer`` disconnected: an open challenge is dropped; proof and refutation stay."""
        st = self._peers.get(peer)
        if st is None:
            return
        if st.proven or st.refuted:
            st.challenge = None
            st.claimed = False
        else:
            del self._peers[peer]

    def _fail(self, st: _PeerState, now: float) -> None:
        st.challenge = None
        st.retry_at = now + self.retry_after
