"""Super-seeding: what a node holding the only full copy reveals to whom, and what it serves.

What it does
    :class:`SuperSeeder` decides, for a node with every chunk (the publisher, or a node that
    holds the only full copy), which chunks to advertise to which peer and whether to serve
    a request. The aim is the Mutualcast schedule of docs/performance.md ("Getting near the bound"):
    the seed sends every chunk once, each to one peer, and the peers trade the rest, so the
    seed uploads about one copy of the package however many peers there are.

    - Instead of a full BITFIELD the seed sends each peer an empty one, then HAVEs for the
      chunks :meth:`SuperSeeder.reveal` returns: about ``window`` chunks the peer neither
      holds nor has been shown, each one shown to no other peer, drawn at random from the
      chunks that have not gone out. Distinct peers thus fetch distinct chunks, and as
      soon as a peer holds one it announces it and the others fetch it from that peer.
    - A chunk has *gone out* while a connected peer holds it or is receiving it from us.
      :meth:`SuperSeeder.should_serve` refuses to send a chunk that has gone out while any
      chunk has not; a chunk whose only holder left has not gone out any more, so it is
      revealed and sent again.
    - When every chunk not out has been shown to someone, a peer with nothing left to
      fetch from the seed is shown chunks another peer was shown but has not fetched
      (first request wins, the other is refused), so one stalled peer cannot stop the
      swarm.
    - A peer is shown new chunks only as fast as it passes on those it got: a chunk we
      sent it that no other connected peer holds yet is *unpassed*, and the first HAVE
      for it from another peer means it passed it on. What it fetches from us plus its
      unpassed chunks stay within ``spread``, unless no other peer is fetching from us
      (then holding back would leave our upload idle). A slow uploader thus gets few
      chunks and a peer that never passes chunks on gets one window.
    - Once every chunk has gone out, the seed reveals each peer first the chunks held
      only by a peer that got them from us and has not passed them on (a slow peer's,
      the peer with most of them first), then the rarest chunks it lacks, and serves
      whatever is asked: it is then one more source among many.

What it does not do
    No I/O, no clock, randomness only from the injected ``random.Random``. It does not send
    anything (the shell sends the HAVEs and chunks and reports what it sent), does not
    rate-limit, and does not track requests or timeouts.

Shell protocol: ``on_peer_joined`` when a peer's BITFIELD arrives, ``on_peer_have`` for its
HAVEs, ``on_peer_gone`` when its connection closes; after each of these (and after each
chunk sent) call ``reveal(peer)`` and send the returned indices as HAVE. For each REQUEST
ask ``should_serve``: True means send the chunk and then call ``on_sent``; False means send
REJECT (the seeder then forgets having shown that chunk to that peer, as the peer's
downloader does on REJECT, so it may be shown again later).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Generic

from bitarray import bitarray, frozenbitarray
from bitarray.util import count_and, ones, zeros

from p2pupdate.core.availability import Availability, pick_random
from p2pupdate.core.download import PeerT
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from random import Random

__all__ = ["SuperSeeder"]


class _SeedPeer:
    """What the seeder knows about one connected peer (internal)."""

    __slots__ = ("bits", "passed", "pending", "reserved", "revealed", "sole", "transit")

    def __init__(self, bits: bitarray) -> None:
        self.bits = bits  # what it holds (its BITFIELD and HAVEs)
        self.revealed: bitarray = zeros(len(bits))  # what we showed it with HAVE
        self.pending: set[int] = set()  # shown, not held, not being sent to it
        self.transit: set[int] = set()  # sent to it, not yet confirmed by its HAVE
        # Chunks it got from us that no other connected peer holds yet: it has not passed
        # them on. They count against its window, so a peer is shown new chunks about as
        # fast as it passes the ones it has on (BitTorrent super-seeding's rule).
        self.sole: set[int] = set()
        self.passed = 0  # chunks of ``sole`` that then showed up at another peer
        # Chunks of its ``sole`` we sent to someone else once every chunk was out (it had
        # not passed them on): each keeps a window slot taken until it passes one more on.
        self.reserved = 0


class SuperSeeder(Generic[PeerT]):
    """Reveal distinct chunks to distinct peers and send each chunk about once.

    ``window`` is how many shown-but-not-held chunks each peer is kept with (its own
    pipeline to the seed); it should be at least the peers' pipeline depth. ``spread``
    (default ``window``) caps those plus the chunks it got from us and has not passed on.

    Size: just over the 300 lines the team aims for, on purpose. It is one state machine
    whose every input moves the same per-chunk books together (availability, shown,
    in transit, sole holder, sends): splitting them over classes would put one invariant
    in several places, and much of its length is the contract of its six entry points and
    twelve views. What it shares with the downloader (availability levels, random picks)
    is already in :mod:`p2pupdate.core.availability`.
    """

    def __init__(
        self, nchunks: int, *, rng: Random, window: int = 8, spread: int | None = None
    ) -> None:
        if nchunks < 0:
            raise ValueError("nchunks must not be negative")
        if window < 1:
            raise ValueError("window must be at least 1")
        if spread is not None and spread < 1:
            raise ValueError("spread must be at least 1")
        self._n = nchunks
        self._rng = rng
        self._window = window
        self._spread = window if spread is None else spread
        self._peers: dict[PeerT, _SeedPeer] = {}
        # Chunks partitioned by how many connected peers hold them; levels[0]: nobody.
        self._avail = Availability(ones(nchunks))
        self._transit: bitarray = zeros(nchunks)  # being sent to a connected peer
        self._transit_cnt = [0] * nchunks
        self._assigned: bitarray = zeros(nchunks)  # shown to a peer that has not got it
        self._assigned_cnt = [0] * nchunks
        self._sends = [0] * nchunks
        self._total_sent = 0
        # Chunks we sent while no connected peer held them: what the swarm lacked and got
        # from us (the rest it already had, or got from a peer).
        self._supplied: bitarray = zeros(nchunks)
        # chunk -> the one peer that holds it, got it from us and has not passed it on
        self._sole: dict[int, PeerT] = {}

    # -----------------------------------------------------------------------------------
    # Read-only views
    # -----------------------------------------------------------------------------------

    @property
    def nchunks(self) -> int:
        """Number of chunks in the package."""
        return self._n

    @property
    def total_sent(self) -> int:
        """Chunks sent so far (reported with ``on_sent``), duplicates included."""
        return self._total_sent

    @property
    def supplied(self) -> int:
        """Distinct chunks sent while no connected peer held them (the swarm lacked them)."""
        return self._supplied.count()

    @property
    def swarm_held(self) -> int:
        """Chunks the swarm had without us: those never supplied by us (see ``supplied``).

        Once every peer holds the package this is what the peers already held between
        them when we came (a publisher resuming a rollout), give or take chunks whose
        only holder left before we sent them again.
        """
        return self._n - self._supplied.count()

    def sent_count(self, index: int) -> int:
        """How many times chunk ``index`` was sent."""
        return self._sends[index]

    @property
    def not_out(self) -> int:
        """Chunks that no connected peer holds or is receiving from us."""
        return self._avail.counts[0] - count_and(self._avail.levels[0], self._transit)

    @property
    def all_out(self) -> bool:
        """Whether every chunk has gone out (is held by or on its way to a peer)."""
        return self.not_out == 0

    def revealed_to(self, peer: PeerT) -> frozenbitarray:
        """Chunks shown to ``peer`` (empty if unknown)."""
        p = self._peers.get(peer)
        return frozenbitarray(zeros(self._n) if p is None else p.revealed)

    def outstanding(self, peer: PeerT) -> int:
        """Chunks shown to ``peer`` that it does not hold yet (counted against the window)."""
        p = self._peers.get(peer)
        return 0 if p is None else len(p.pending) + len(p.transit)

    def peers(self) -> list[PeerT]:
        """Connected peers."""
        return list(self._peers)

    def unpassed(self, peer: PeerT) -> int:
        """Chunks ``peer`` got from us that no other connected peer holds yet."""
        p = self._peers.get(peer)
        return 0 if p is None else len(p.sole)

    def passed_on(self, peer: PeerT) -> int:
        """Chunks ``peer`` got from us and that then showed up at another peer."""
        p = self._peers.get(peer)
        return 0 if p is None else p.passed

    # -----------------------------------------------------------------------------------
    # Inputs
    # -----------------------------------------------------------------------------------

    def on_peer_joined(self, peer: PeerT, have: bitarray) -> None:
        """``peer`` connected and holds ``have`` (its BITFIELD).

        A bitfield of the wrong length raises RemoteProtocolError; joining twice without
        ``on_peer_gone`` raises LocalProtocolError.
        """
        if len(have) != self._n:
            raise RemoteProtocolError(f"bitfield has {len(have)} bits, expected {self._n}")
        if peer in self._peers:
            raise LocalProtocolError(f"peer {peer!r} joined twice")
        bits = bitarray(have, endian="big")
        self._peers[peer] = _SeedPeer(bits)
        self._avail.add(bits)
        for i in [i for i in self._sole if bits[i]]:  # held elsewhere now (no credit)
            self._peers[self._sole.pop(i)].sole.discard(i)

    def on_peer_have(self, peer: PeerT, indices: Iterable[int]) -> None:
        """``peer`` now holds these chunks (an unknown peer joins with nothing first).

        An index out of range raises RemoteProtocolError (nothing is changed).
        """
        idx = list(indices)
        for i in idx:
            self._check_index(i)
        p = self._peers.get(peer)
        if p is None:
            self.on_peer_joined(peer, zeros(self._n))
            p = self._peers[peer]
        for i in idx:
            if p.bits[i]:
                continue
            if i in p.pending:
                p.pending.discard(i)
                self._assign(i, -1)
            from_us = i in p.transit
            if from_us:
                p.transit.discard(i)
                self._in_transit(i, -1)
            p.bits[i] = 1
            self._avail.move(i, +1)
            holder = self._sole.get(i)
            if holder is not None:
                # The chunk showed up elsewhere: its holder passed it on (or, if it came
                # from us, we had to pass it on for it).
                del self._sole[i]
                h = self._peers[holder]
                h.sole.discard(i)
                if from_us:
                    h.reserved += 1
                else:
                    h.passed += 1
                    h.reserved = max(0, h.reserved - 1)
            elif from_us and self._avail.level_of(i) == 1:
                self._sole[i] = peer
                p.sole.add(i)

    def on_peer_gone(self, peer: PeerT) -> None:
        """``peer``'s connection closed: what only it held has not gone out any more."""
        p = self._peers.pop(peer, None)
        if p is None:
            return
        self._avail.remove(p.bits)
        for i in p.pending:
            self._assign(i, -1)
        for i in p.transit:
            self._in_transit(i, -1)
        for i in p.sole:
            del self._sole[i]

    def on_sent(self, peer: PeerT, index: int) -> None:
        """The shell sent chunk ``index`` to ``peer`` (after ``should_serve`` said yes)."""
        if not 0 <= index < self._n:
            raise LocalProtocolError(f"chunk index {index} out of range")
        self._sends[index] += 1
        self._total_sent += 1
        if self._avail.levels[0][index]:
            self._supplied[index] = 1
        p = self._peers.get(peer)
        if p is None or p.bits[index] or index in p.transit:
            return
        if index in p.pending:
            p.pending.discard(index)
            self._assign(index, -1)
        p.transit.add(index)
        self._in_transit(index, +1)

    def should_serve(self, peer: PeerT, index: int) -> bool:
        """Whether to answer ``peer``'s REQUEST for ``index`` with the chunk.

        True when the chunk has not gone out (first send, or its only holder left) or when
        every chunk has gone out. False means send REJECT: the chunk is out already and
        another one is not, so ``peer`` should get it from the peer that has it. On False
        the seeder forgets having shown ``index`` to ``peer``. Out of range raises
        RemoteProtocolError.
        """
        self._check_index(index)
        not_out = self._avail.levels[0][index] and not self._transit[index]
        if not_out or self.all_out:
            return True
        p = self._peers.get(peer)
        if p is not None and p.revealed[index]:
            p.revealed[index] = 0
            if index in p.pending:
                p.pending.discard(index)
                self._assign(index, -1)
        return False

    def reveal(self, peer: PeerT) -> list[int]:
        """Chunks to announce to ``peer`` now (send them as HAVE), topping its window up.

        In order of preference: chunks not out and shown to nobody (random), as long as
        what it is fetching from us plus what it got from us and has not passed on stays
        within ``spread`` (unless no other peer is fetching from us); if there are none
        left to show anybody and the peer has nothing left to fetch from us, chunks not
        out but shown to another peer that has not fetched them; and, only once every
        chunk is out, first the chunks held only by a peer that got them from us and has
        not passed them on (a slow peer's), then the rarest chunks the peer lacks. Never a
        chunk the peer holds or was shown. Returns [] for an unknown peer.
        """
        p = self._peers.get(peer)
        if p is None:
            return []
        slots = self._window - len(p.pending) - len(p.transit)
        if slots <= 0:
            return []
        lacks = ~(p.bits | p.revealed)
        not_out = self._avail.levels[0] & ~self._transit
        fresh = lacks & not_out
        stolen = fresh & self._assigned
        fresh &= ~self._assigned
        fresh_left = fresh.any()
        # A peer is shown new chunks only as fast as it passes on the ones it got, while
        # we have others to send to (alone, or with the others idle, it gets them all).
        allowed = slots
        budget = self._spread - len(p.sole) - p.reserved - (self._window - slots)
        if budget < slots and any(
            q.pending or q.transit for q in self._peers.values() if q is not p
        ):
            allowed = budget
        picked = pick_random(fresh, allowed, self._rng) if allowed > 0 else []
        if not picked and not fresh_left and slots == self._window:
            # Only a peer with nothing left to fetch from us is shown chunks that another
            # peer was shown and has not fetched: enough to get around a stalled peer,
            # rare enough that few chunks end up asked for twice.
            picked = pick_random(stolen, slots, self._rng)
        if len(picked) < slots and not not_out.any():
            # Every chunk is out: we are one more source. First what a peer got from us
            # and has not passed on (a slow peer's), then the rarest.
            picked += self._pick_unpassed(peer, lacks, slots - len(picked))
            lacks &= ~self._marks(picked)
            picked += self._avail.pick_rarest(lacks, slots - len(picked), self._rng, min_level=0)
        for i in picked:
            p.revealed[i] = 1
            p.pending.add(i)
            self._assign(i, +1)
        return picked

    def _pick_unpassed(self, peer: PeerT, lacks: bitarray, k: int) -> list[int]:
        """Up to ``k`` chunks ``lacks`` holds that only one other peer holds, got from us
        and has not passed on; from the peer with the most of them first."""
        out: list[int] = []
        holders = sorted(
            (h for q, h in self._peers.items() if q != peer and h.sole),
            key=lambda h: -len(h.sole),
        )
        for h in holders:
            cands = sorted(i for i in h.sole if lacks[i] and not self._assigned[i])
            self._rng.shuffle(cands)
            out += cands[: k - len(out)]
            if len(out) >= k:
                break
        return out

    def _marks(self, indices: list[int]) -> bitarray:
        bits = zeros(self._n)
        for i in indices:
            bits[i] = 1
        return bits

    # -----------------------------------------------------------------------------------
    # Internals
    # -----------------------------------------------------------------------------------

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise RemoteProtocolError(f"chunk index {index} out of range 0..{self._n - 1}")

    def _assign(self, index: int, delta: int) -> None:
        c = self._assigned_cnt[index] + delta
        self._assigned_cnt[index] = c
        self._assigned[index] = c > 0

    def _in_transit(self, index: int, delta: int) -> None:
        c = self._transit_cnt[index] + delta
        self._transit_cnt[index] = c
        self._transit[index] = c > 0
