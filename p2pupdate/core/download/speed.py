"""What the downloader knows of each source, and how fast each one serves it.

What it does
    :class:`Source` is the downloader's record of one connected peer: what it advertises,
    the requests in flight to it, its pipeline limit, and its measured service time (the
    time between two chunks it sends while we wait for one, a moving average, its queue
    included). The functions here turn those measures into decisions: the median pace
    (:func:`median_pace`), a slow source's shorter pipeline (:func:`pipeline_cap`), when
    a chunk asked of a source should arrive (:func:`eta`), and which requests waiting on
    a slow source move to a faster one (:func:`move_off_slow`).

What it does not do
    Keep the books of requests or chunks (:class:`~p2pupdate.core.download.Downloader`
    does), read a clock (every measure takes ``now``) or talk to anyone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from bitarray import bitarray
from bitarray.util import zeros

__all__ = [
    "SLOW_FACTOR",
    "Source",
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


def pipeline_cap(p: Source, median: float | None, depth: int) -> int:
    """How many requests ``p`` may have in flight: its limit, cut in proportion to how
    much slower than the median source it serves us when that is more than
    ``SLOW_FACTOR`` times as slow (at least one)."""
    svc = p.svc
    if not median or svc is None or svc <= SLOW_FACTOR * median:
        return p.limit
    return max(1, min(p.limit, round(depth * median / svc)))


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
                if len(q.requests) >= pipeline_cap(q, median, depth) or index in q.requests:
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
