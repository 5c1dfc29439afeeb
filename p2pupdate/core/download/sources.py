"""What the downloader knows of the peers it downloads from, and how fast each serves it.

What it does
    :class:`Source` is the downloader's record of one connected peer: what it advertises,
    the requests in flight to it, its pipeline limit, and its measured service time (the
    time between two chunks it sends while we wait for one, a moving average, its queue
    included). :class:`Sources` holds every record with what outlives or spans them: which
    peers have free pipeline slots, which are banned, what each delivered, its timeouts
    (strikes) and the chunks it timed out on, and the median pace. The functions turn the
    measures into decisions: the median pace (:func:`median_pace`), a slow source's
    shorter pipeline (:func:`pipeline_cap`), when a chunk asked of a source should arrive
    (:func:`eta`), and which requests waiting on a slow source move to a faster one
    (:func:`move_off_slow`). Every source's pipeline is also kept to about
    ``pipeline_seconds`` of its measured service time (:func:`pipeline_cap`): a short
    queue at each holder, so a fresh chunk is passed on soon and a chunk not yet asked
    for can still go to whichever holder frees a slot first.

What it does not do
    Keep the books of requests or chunks (:class:`~p2pupdate.core.download.Downloader`
    does), read a clock (every measure takes ``now``) or talk to anyone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.core.download.actions import PeerT

__all__ = [
    "SLOW_FACTOR",
    "Source",
    "Sources",
    "eta",
    "median_pace",
    "move_off_slow",
    "pipeline_cap",
    "record_arrival",
]

KeyT = TypeVar("KeyT")

# A source counts as slow (shorter pipeline, its requests moved to faster holders) only
# when it serves us this many times slower than the median source: on a loaded machine
# the measured times of equal peers jitter by 2-3x, and cutting their pipelines or
# moving their requests then costs more than it saves (a branch office at a tenth of
# the rate is well above it).
SLOW_FACTOR = 4.0
# A pipeline cut to a time never holds fewer than this: one chunk being sent and one
# waiting, so the source never waits a round trip for our next request.
MIN_TIMED_PIPELINE = 2


class Source:
    """What we know about one connected peer (the downloader's own record)."""

    __slots__ = (
        "adv_gen",
        "bits",
        "eg_starved",
        "last_arrival",
        "limit",
        "requests",
        "starved",
        "svc",
    )

    def __init__(self, nchunks: int, limit: int) -> None:
        self.bits: bitarray = zeros(nchunks)  # what it advertises
        self.requests: dict[int, int] = {}  # chunk index -> request id, in flight to it
        self.limit = limit  # current pipeline depth (halved on timeout, +1 per delivery)
        # Measured time between two chunks it sends us while we wait for one (moving
        # average; None until the first chunk): how fast it serves us, its queue included.
        self.svc: float | None = None
        self.last_arrival: float | None = None
        self.adv_gen = 0  # bumped when it advertises something new
        # (generation marks) of the last poll that found nothing more to ask it for:
        # skipped until something that could give it candidates changes.
        self.starved: tuple[int, int] | None = None
        self.eg_starved: tuple[int, int, int] | None = None


def record_arrival(p: Source, issued: float, now: float) -> None:
    """A chunk asked of ``p`` at ``issued`` arrived at ``now``: update its service time.

    The sample starts at the later of the request and the previous arrival, so a full
    pipeline measures the time between two chunks, not the time spent queued behind them.
    """
    start = issued if p.last_arrival is None else max(issued, p.last_arrival)
    sample = max(0.0, now - start)
    p.last_arrival = now
    p.svc = sample if p.svc is None else 0.7 * p.svc + 0.3 * sample


def median_pace(sources: Iterable[Source]) -> float | None:
    """The median measured source's service time (None when none is measured)."""
    # The reference pace is the median peer's, not the fastest's: on a loaded machine
    # the times jitter, and one lucky measure must not make every other peer "slow".
    known = sorted(q.svc for q in sources if q.svc is not None)
    return known[(len(known) - 1) // 2] if known else None


def pipeline_cap(p: Source, median: float | None, depth: int, seconds: float = 0.0) -> int:
    """How many requests ``p`` may have in flight: its limit, at most ``seconds`` of its
    measured service time (at least ``MIN_TIMED_PIPELINE``; 0 seconds: no such cap), and
    cut in proportion to how much slower than the median source it serves us when that is
    more than ``SLOW_FACTOR`` times as slow (at least one)."""
    svc = p.svc
    limit = p.limit
    if seconds > 0 and svc is not None and seconds < svc * limit:
        limit = min(limit, max(MIN_TIMED_PIPELINE, math.ceil(seconds / svc)))
    if not median or svc is None or svc <= SLOW_FACTOR * median:
        return limit
    return max(1, min(limit, round(depth * median / svc)))


def eta(p: Source, index: int, median: float | None) -> float:
    """When (from now, roughly) chunk ``index`` asked of ``p`` should arrive; for an
    index not asked of it, when one more request would. Unmeasured: infinity for a
    chunk asked of it (it may be stalled), the median source's pace for a new one."""
    if p.svc is None and index in p.requests:
        return math.inf
    svc = p.svc if p.svc is not None else (median or 0.0)
    pos = len(p.requests)
    for k, i in enumerate(p.requests):
        if i == index:
            pos = k
            break
    return (pos + 1) * svc


def move_off_slow(
    sources: Mapping[KeyT, Source],
    median: float | None,
    depth: int,
    excluded: Callable[[KeyT, int], bool],
    move: Callable[[KeyT, Source, int, KeyT, Source], None],
    seconds: float = 0.0,
) -> None:
    """Move requests waiting on a slow source to a faster one that has the chunk and a
    free slot, when the faster one should deliver it in less than half the time.

    ``excluded(key, index)`` vetoes a target; ``move(key, p, index, to_key, q)`` carries
    out one move (cancel at ``p``, ask ``q``) before the next is chosen, so every choice
    sees the pipelines the earlier moves filled.
    """
    if not median:
        return
    for key, p in list(sources.items()):
        if p.svc is None or p.svc <= SLOW_FACTOR * median or not p.requests:
            continue
        for pos, index in enumerate(list(p.requests)):
            p_eta = (pos + 1) * p.svc
            target: tuple[float, KeyT, Source] | None = None
            for q_key, q in sources.items():
                if q is p or not q.bits[index] or q.svc is None:
                    continue
                full = len(q.requests) >= pipeline_cap(q, median, depth, seconds)
                if full or index in q.requests:
                    continue
                if excluded(q_key, index):
                    continue
                q_eta = (len(q.requests) + 1) * q.svc
                if 2 * q_eta < p_eta and (target is None or q_eta < target[0]):
                    target = (q_eta, q_key, q)
            if target is None:
                continue
            _, q_key, q = target
            move(key, p, index, q_key, q)


class Sources(Generic[PeerT]):
    """Every peer the download knows, with its record, and the books that span them."""

    def __init__(self, nchunks: int, depth: int, seconds: float = 0.0) -> None:
        self._n = nchunks
        self.depth = depth  # the full pipeline depth
        self.seconds = seconds  # of measured service time kept in flight (0: no cap)
        self.by_peer: dict[PeerT, Source] = {}  # connected and not banned
        self.hungry: dict[PeerT, None] = {}  # peers with free pipeline slots, in order
        self.banned: set[PeerT] = set()
        self.received: dict[PeerT, int] = {}  # verified chunks accepted from each peer
        self.strikes: dict[PeerT, int] = {}  # timed-out requests per peer
        # chunk -> peers whose request for it timed out (asked elsewhere if possible)
        self.timed_out: dict[int, set[PeerT]] = {}
        self.median: float | None = None  # the median peer's svc (see Source.svc)

    def add(self, peer: PeerT) -> Source:
        """A new peer with an empty advertisement and a full pipeline."""
        p = Source(self._n, self.depth)
        self.by_peer[peer] = p
        self.hungry[peer] = None
        return p

    def gone(self, peer: PeerT, p: Source) -> None:
        """``peer`` (already out of :attr:`by_peer`, its requests forgotten) is gone."""
        self.hungry.pop(peer, None)
        if p.svc is not None:
            self.median = median_pace(self.by_peer.values())

    def cap(self, p: Source) -> int:
        """How many requests ``p`` may have in flight (see :func:`pipeline_cap`)."""
        return pipeline_cap(p, self.median, self.depth, self.seconds)

    def update_hungry(self, peer: PeerT, p: Source) -> None:
        """Keep ``peer`` among the hungry exactly while it has a free pipeline slot."""
        if len(p.requests) < self.cap(p):
            self.hungry[peer] = None
        else:
            self.hungry.pop(peer, None)

    def excluded(self, peer: PeerT, index: int) -> bool:
        """Whether ``peer`` timed out on ``index`` and another live peer could serve it."""
        ex = self.timed_out.get(index)
        if not ex or peer not in ex:
            return False
        return any(q.bits[index] for k, q in self.by_peer.items() if k not in ex)

    def arrived(self, p: Source, issued: float, now: float) -> None:
        """A chunk asked of ``p`` at ``issued`` arrived at ``now``: measure it."""
        record_arrival(p, issued, now)
        self.median = median_pace(self.by_peer.values())

    def struck(self, peer: PeerT, p: Source, index: int) -> None:
        """``peer``'s request for ``index`` timed out: a strike, half the pipeline, and
        the chunk asked elsewhere when another peer has it."""
        self.strikes[peer] = self.strikes.get(peer, 0) + 1
        p.limit = max(1, p.limit // 2)
        self.timed_out.setdefault(index, set()).add(peer)

    def remeasure(self) -> None:
        """Forgive every timeout and forget every measure: full pipelines for everyone,
        each looked at again at the next poll."""
        self.timed_out.clear()
        self.median = None  # speeds are measured again from scratch
        for peer, p in self.by_peer.items():
            p.limit = self.depth
            p.svc = p.last_arrival = None
            p.starved = None
            p.eg_starved = None
            self.update_hungry(peer, p)
