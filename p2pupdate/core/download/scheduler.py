"""The request pipeline: which chunk to ask which peer for, and the books that follow.

What it does
    :class:`Scheduler` fills the peers' pipelines (:meth:`Scheduler.fill`): first it moves
    requests waiting on a slow peer to a faster one, then asks each peer with free slots
    for the rarest chunks it has that nobody is asked for, and in endgame for chunks
    already in flight elsewhere. It keeps the chunk sets, the sources and the requests in
    flight consistent as requests are issued, answered, refused, timed out or dropped with
    their peer, and marks with generation counters when a peer that had nothing to offer
    may have something again, so a poll skips the peers it need not look at.

What it does not do
    Verify chunks, move the download between states, or decide when it is stalled: the
    :class:`~p2pupdate.core.download.Downloader` does, and calls the scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic

from p2pupdate.core.download.actions import AskChunk, CancelAsk, DownloadAction, PeerT
from p2pupdate.core.download.endgame import endgame_picks
from p2pupdate.core.download.sources import Source, move_off_slow

if TYPE_CHECKING:
    from random import Random

    from p2pupdate.core.download.chunkbook import ChunkBook
    from p2pupdate.core.download.inflight import InFlight
    from p2pupdate.core.download.sources import Sources

__all__ = ["Scheduler"]


class Scheduler(Generic[PeerT]):
    """Issues and forgets requests over the download's chunks, sources and requests."""

    def __init__(
        self,
        chunks: ChunkBook,
        sources: Sources[PeerT],
        flight: InFlight[PeerT],
        rng: Random,
        endgame_copies: int,
    ) -> None:
        self._c = chunks
        self._src = sources
        self._flight = flight
        self._rng = rng
        self._endgame_copies = endgame_copies
        self._wanted_gen = 0  # bumped when a chunk becomes wanted again / a peer leaves
        self._flight_gen = 0  # bumped when endgame candidates may have grown

    def in_endgame(self) -> bool:
        """Whether every missing chunk is in flight (or being written)."""
        # A chunk that no peer has yet blocks endgame: early in a swarm most chunks are
        # nowhere yet, and duplicate requests then would waste the uploads it lives on.
        return bool(self._flight.holders) and not self._c.wanted.any()

    def fill(self, now: float) -> list[DownloadAction[PeerT]]:
        """Fill every peer's pipeline (see ``Downloader.poll``): CancelAsk and AskChunk."""
        actions: list[DownloadAction[PeerT]] = []
        self._unpin(now, actions)  # first: a faster peer's free slot goes to those
        src = self._src
        for peer in list(src.hungry):
            p = src.by_peer[peer]
            mark = (self._wanted_gen, p.adv_gen)
            if p.starved != mark:
                free = src.cap(p) - len(p.requests)
                if free <= 0:  # its cap fell (the median moved) since it became hungry
                    src.update_hungry(peer, p)
                    continue
                if self._pick_rarest(peer, p, free, now, actions) < free:
                    p.starved = mark
        if self.in_endgame():
            for peer in list(src.hungry):
                p = src.by_peer[peer]
                if p.eg_starved != (self._flight_gen, self._wanted_gen, p.adv_gen):
                    free = src.cap(p) - len(p.requests)
                    if free <= 0:
                        src.update_hungry(peer, p)
                        continue
                    if self._pick_endgame(peer, p, free, now, actions) < free:
                        p.eg_starved = (self._flight_gen, self._wanted_gen, p.adv_gen)
        return actions

    def delivered(self, peer: PeerT, index: int, now: float) -> None:
        """``peer`` sent the verified chunk ``index``: measure it, end its request."""
        p = self._src.by_peer.get(peer)
        if p is None:
            return
        rid = p.requests.get(index)
        if rid is None:
            return
        self._src.arrived(p, self._flight.issued_at(rid), now)
        self._forget(peer, p, index, rid)
        p.limit = min(self._src.depth, p.limit + 1)
        self._src.update_hungry(peer, p)

    def cancel_copies(self, index: int) -> list[DownloadAction[PeerT]]:
        """Chunk ``index`` arrived: cancel its other requests."""
        actions: list[DownloadAction[PeerT]] = []
        for q, rid in list(self._flight.holders.get(index, {}).items()):
            self._forget(q, self._src.by_peer[q], index, rid)
            actions.append(CancelAsk(q, index))
        return actions

    def rejected(self, peer: PeerT, index: int) -> bool:
        """``peer`` refused ``index``: end its request (whether there was one)."""
        p = self._src.by_peer.get(peer)
        if p is None:
            return False
        rid = p.requests.get(index)
        if rid is None:
            return False
        self._forget(peer, p, index, rid, freed=True)
        self._release(index)
        return True

    def expire(self, now: float) -> list[DownloadAction[PeerT]]:
        """Cancel every request whose deadline is ``<= now`` and strike its peer."""
        actions: list[DownloadAction[PeerT]] = []
        while (expired := self._flight.pop_expired(now)) is not None:
            rid, peer, index = expired
            p = self._src.by_peer[peer]
            self._src.struck(peer, p, index)
            self._forget(peer, p, index, rid, freed=True)
            self._release(index)
            actions.append(CancelAsk(peer, index))
        return actions

    def remeasure(self) -> None:
        """Forgive timeouts, forget speeds, and look at every peer again."""
        self._src.remeasure()
        self._wanted_gen += 1
        self._flight_gen += 1

    def wanted_again(self) -> None:
        """A chunk became wanted outside the request books (a failed write)."""
        self._wanted_gen += 1

    def drop(self, peer: PeerT) -> None:
        """``peer`` is gone: forget what it advertised and put its requests back."""
        p = self._src.by_peer.pop(peer, None)
        if p is None:
            return
        self._c.avail.remove(p.bits)
        for index, rid in list(p.requests.items()):
            self._forget(peer, p, index, rid, freed=True)
            self._release(index)
        self._src.gone(peer, p)
        # Exclusions that this peer made possible may lapse: re-examine everyone.
        self._wanted_gen += 1

    def cancel_all(self) -> list[DownloadAction[PeerT]]:
        """End every request: a CancelAsk for each, oldest first."""
        actions: list[DownloadAction[PeerT]] = [
            CancelAsk(peer, index) for peer, index in self._flight.clear()
        ]
        for peer, p in self._src.by_peer.items():
            p.requests.clear()
            self._src.update_hungry(peer, p)
        return actions

    def _issue(self, peer: PeerT, p: Source, index: int, now: float) -> AskChunk[PeerT]:
        rid, first = self._flight.add(peer, index, now)
        p.requests[index] = rid
        if first:  # a new chunk in flight: a new endgame candidate for others
            self._c.wanted[index] = 0
            self._flight_gen += 1
        self._src.update_hungry(peer, p)
        return AskChunk(peer, index)

    def _forget(self, peer: PeerT, p: Source, index: int, rid: int, *, freed: bool = False) -> None:
        """Remove one request from the books (the chunk's fate is decided by the caller).

        ``freed``: the request ended without the chunk, so if other copies are still in
        flight a copy slot opened and endgame candidates may have grown.
        """
        del p.requests[index]
        if self._flight.remove(peer, index, rid) and freed:
            self._flight_gen += 1
        self._src.update_hungry(peer, p)

    def _release(self, index: int) -> None:
        """After a request ended without this chunk: make it wanted if nobody else has it
        in flight and it is neither written nor being written."""
        if index not in self._flight.holders and self._c.release(index):
            self._wanted_gen += 1

    def _pick_rarest(
        self, peer: PeerT, p: Source, free: int, now: float, out: list[DownloadAction[PeerT]]
    ) -> int:
        picked = self._c.avail.pick_rarest(
            p.bits & self._c.wanted, free, self._rng, lambda i: not self._src.excluded(peer, i)
        )
        out.extend(self._issue(peer, p, i, now) for i in picked)
        return len(picked)

    def _pick_endgame(
        self, peer: PeerT, p: Source, free: int, now: float, out: list[DownloadAction[PeerT]]
    ) -> int:
        picked = endgame_picks(
            peer,
            p,
            free,
            self._flight.holders,
            self._src.by_peer,
            copies=self._endgame_copies,
            median=self._src.median,
            excluded=self._src.excluded,
            rng=self._rng,
        )
        out.extend(self._issue(peer, p, i, now) for i in picked)
        return len(picked)

    def _unpin(self, now: float, out: list[DownloadAction[PeerT]]) -> None:
        """Move requests waiting on a slow peer to a faster one (see ``move_off_slow``)."""

        def move(peer: PeerT, p: Source, index: int, q_peer: PeerT, q: Source) -> None:
            self._forget(peer, p, index, p.requests[index])
            out.append(CancelAsk(peer, index))
            out.append(self._issue(q_peer, q, index, now))

        src = self._src
        move_off_slow(src.by_peer, src.median, src.depth, src.excluded, move, src.seconds)
