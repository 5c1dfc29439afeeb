"""How many peers advertise each chunk, kept so that "rarest first" costs bitmap operations.

What it does
    :class:`Availability` partitions a set of chunks into bitmaps by the number of peers
    that advertise them (``levels[a]`` holds the chunks exactly ``a`` peers have). A whole
    bitfield joins or leaves with a few C-level bitmap operations per level, one HAVE moves
    one bit, and :meth:`Availability.pick_rarest` draws the rarest chunks of a candidate set
    with a random tie-break without a Python loop over the chunks. The downloader and the
    super-seeder share it.

What it does not do
    It does not know peers, requests or time, and draws randomness only from the
    ``random.Random`` passed to it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bitarray import bitarray
from bitarray.util import count_and, count_n, zeros

if TYPE_CHECKING:
    from random import Random

__all__ = ["Availability", "pick_random"]


def pick_random(
    bits: bitarray,
    k: int,
    rng: Random,
    accept: Callable[[int], bool] | None = None,
    *,
    count: int | None = None,
) -> list[int]:
    """Up to ``k`` distinct set positions of ``bits`` drawn uniformly at random.

    ``bits`` is consumed (drawn positions are cleared). Positions for which ``accept``
    returns False are skipped and do not count. ``count`` is ``bits.count()`` if known.
    """
    out: list[int] = []
    cnt = bits.count() if count is None else count
    while cnt and len(out) < k:
        i = count_n(bits, rng.randrange(cnt) + 1) - 1
        bits[i] = 0
        cnt -= 1
        if accept is None or accept(i):
            out.append(i)
    return out


class Availability:
    """A set of tracked chunks partitioned by how many peers advertise each one.

    ``levels[a]`` is the bitmap of tracked chunks advertised by exactly ``a`` peers and
    ``counts[a]`` its population; the levels partition the tracked chunks. Chunks leave the
    partition with :meth:`discard` (the downloader drops chunks it has written).
    """

    __slots__ = ("counts", "levels")

    def __init__(self, tracked: bitarray) -> None:
        self.levels: list[bitarray] = [bitarray(tracked, endian="big")]
        self.counts: list[int] = [tracked.count()]

    def add(self, bits: bitarray) -> None:
        """Every chunk set in ``bits`` gains one peer (top level first: none moves twice)."""
        levels, counts = self.levels, self.counts
        for a in range(len(levels) - 1, -1, -1):
            cnt = count_and(levels[a], bits) if counts[a] else 0
            if cnt:
                moved = levels[a] & bits
                levels[a] ^= moved
                if a + 1 == len(levels):
                    levels.append(zeros(len(bits)))
                    counts.append(0)
                levels[a + 1] |= moved
                counts[a] -= cnt
                counts[a + 1] += cnt

    def remove(self, bits: bitarray) -> None:
        """Every chunk set in ``bits`` loses one peer (bottom level first).

        ``bits`` must be a bitfield that was added before (levels never go negative).
        """
        levels, counts = self.levels, self.counts
        for a in range(1, len(levels)):
            cnt = count_and(levels[a], bits) if counts[a] else 0
            if cnt:
                moved = levels[a] & bits
                levels[a] ^= moved
                levels[a - 1] |= moved
                counts[a] -= cnt
                counts[a - 1] += cnt
        while len(levels) > 1 and counts[-1] == 0:
            levels.pop()
            counts.pop()

    def level_of(self, index: int) -> int:
        """How many peers advertise chunk ``index``; -1 if it is not tracked."""
        for a, level in enumerate(self.levels):
            if self.counts[a] and level[index]:
                return a
        return -1

    def move(self, index: int, delta: int) -> None:
        """Chunk ``index`` gains (+1) or loses (-1) one peer; no-op if it is not tracked."""
        a = self.level_of(index)
        if a < 0:
            return
        levels, counts = self.levels, self.counts
        if a + delta == len(levels):
            levels.append(zeros(len(levels[0])))
            counts.append(0)
        levels[a][index] = 0
        levels[a + delta][index] = 1
        counts[a] -= 1
        counts[a + delta] += 1

    def discard(self, index: int) -> None:
        """Stop tracking chunk ``index``."""
        a = self.level_of(index)
        if a >= 0:
            self.levels[a][index] = 0
            self.counts[a] -= 1

    def pick_rarest(
        self,
        candidates: bitarray,
        k: int,
        rng: Random,
        accept: Callable[[int], bool] | None = None,
        *,
        min_level: int = 1,
    ) -> list[int]:
        """Up to ``k`` chunks of ``candidates``, rarest first, random among equals.

        Only chunks advertised by at least ``min_level`` peers are drawn; ``accept`` can
        veto a chunk (it is then skipped). ``candidates`` is not modified.
        """
        out: list[int] = []
        remaining = candidates.count()
        levels, counts = self.levels, self.counts
        a = min_level
        while remaining and len(out) < k and a < len(levels):
            cnt = count_and(levels[a], candidates) if counts[a] else 0
            if cnt:
                remaining -= cnt
                out.extend(
                    pick_random(levels[a] & candidates, k - len(out), rng, accept, count=cnt)
                )
            a += 1
        return out
