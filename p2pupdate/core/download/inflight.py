"""The books of the requests a download has in flight, with their deadlines.

What it does
    :class:`InFlight` gives every request an id and a deadline, keeps which peers each
    chunk is asked of (more than one in endgame) as a dict and as a bitmap, and hands back
    the requests whose deadline has passed, earliest first. Deadlines sit in a heap that is
    cleaned lazily and rebuilt when answered requests would make it outgrow the requests
    in flight, so its memory follows the pipelines, not the chunks received.

What it does not do
    Decide what to ask of whom, or what a timeout means for a peer: the
    :class:`~p2pupdate.core.download.Downloader` does. It keeps no per-peer view (each
    :class:`~p2pupdate.core.download.sources.Source` lists its own requests).
"""

from __future__ import annotations

import heapq
from typing import Generic

from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.core.download.actions import PeerT

__all__ = ["InFlight"]


class InFlight(Generic[PeerT]):
    """Requests in flight: id -> (peer, chunk, deadline), chunk -> {peer: id}."""

    def __init__(self, nchunks: int, timeout: float) -> None:
        self.timeout = timeout
        # request id -> (peer, chunk, deadline)
        self.by_id: dict[int, tuple[PeerT, int, float]] = {}
        # chunk -> {peer: request id}, in the order the chunks were first asked
        self.holders: dict[int, dict[PeerT, int]] = {}
        self.bits: bitarray = zeros(nchunks)  # chunks asked of at least one peer
        self._heap: list[tuple[float, int]] = []  # (deadline, request id), lazily cleaned
        self._next_rid = 0

    def __len__(self) -> int:
        """Requests in flight (endgame duplicates counted separately)."""
        return len(self.by_id)

    def add(self, peer: PeerT, index: int, now: float) -> tuple[int, bool]:
        """Ask ``peer`` for chunk ``index`` at ``now``: (the request id, whether this is
        the chunk's first copy in flight)."""
        rid = self._next_rid
        self._next_rid += 1
        deadline = now + self.timeout
        self.by_id[rid] = (peer, index, deadline)
        holders = self.holders.get(index)
        first = holders is None
        if holders is None:
            self.holders[index] = {peer: rid}
            self.bits[index] = 1
        else:
            holders[peer] = rid
        heap = self._heap
        heapq.heappush(heap, (deadline, rid))
        if len(heap) > 64 + 4 * len(self.by_id):
            # Answered requests leave stale entries behind; keep memory bounded by the
            # requests in flight, not by the chunks received in one timeout period.
            self._heap = [(d, r) for r, (_, _, d) in self.by_id.items()]
            heapq.heapify(self._heap)
        return rid, first

    def remove(self, peer: PeerT, index: int, rid: int) -> bool:
        """Forget request ``rid`` (``peer``, ``index``): whether other copies of the chunk
        are still in flight."""
        del self.by_id[rid]
        holders = self.holders[index]
        del holders[peer]
        if not holders:
            del self.holders[index]
            self.bits[index] = 0
            return False
        return True

    def issued_at(self, rid: int) -> float:
        """When request ``rid`` was sent."""
        return self.by_id[rid][2] - self.timeout

    def pop_expired(self, now: float) -> tuple[int, PeerT, int] | None:
        """The earliest request whose deadline is ``<= now`` as (id, peer, chunk), or None.
        It stays in the books until :meth:`remove`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            req = self.by_id.get(rid)
            if req is not None:
                return rid, req[0], req[1]
        return None

    def next_deadline(self) -> float | None:
        """The earliest deadline of a request in flight, or None."""
        heap = self._heap
        while heap and heap[0][1] not in self.by_id:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def heap_size(self) -> int:
        """Entries in the deadline heap, stale ones included (for tests of its bound)."""
        return len(self._heap)

    def clear(self) -> list[tuple[PeerT, int]]:
        """Forget every request: the (peer, chunk) of each, oldest first."""
        out = [(peer, index) for peer, index, _ in self.by_id.values()]
        self.by_id.clear()
        self.holders.clear()
        self._heap.clear()
        self.bits.setall(0)
        return out
