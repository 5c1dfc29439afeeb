"""Endgame: which chunks already in flight elsewhere one more peer should also be asked for.

What it does
    Once every missing chunk is in flight, a peer with free pipeline slots may be asked
    for a chunk another peer has not delivered yet. :func:`endgame_picks` chooses those
    chunks for one peer: the chunk expected last first (a slow holder's), fewest copies
    first among equals, at random among the rest; never a chunk already asked of
    ``copies`` peers, never one this peer lacks or timed out on, and never one whose
    measured holder is expected to deliver sooner than this peer could.

What it does not do
    Decide when endgame starts, issue the requests or cancel the duplicates when one copy
    arrives: the :class:`~p2pupdate.core.download.Downloader` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from p2pupdate.core.download.sources import Source, eta

if TYPE_CHECKING:
    from random import Random

__all__ = ["endgame_picks"]

KeyT = TypeVar("KeyT")


def endgame_picks(
    key: KeyT,
    p: Source,
    free: int,
    holders_of: Mapping[int, Mapping[KeyT, int]],
    sources: Mapping[KeyT, Source],
    *,
    copies: int,
    median: float | None,
    excluded: Callable[[KeyT, int], bool],
    rng: Random,
) -> list[int]:
    """Chunks in flight elsewhere to ask of ``key`` (its record ``p``) too, best first,
    at most ``free``. ``holders_of`` maps each chunk in flight to the peers asked for it."""
    if free <= 0:
        return []  # (a negative slice below would pick all but the last few)
    bits = p.bits
    cands: list[tuple[float, int, float, int]] = []
    for index, holders in holders_of.items():
        if len(holders) >= copies or key in holders or not bits[index]:
            continue
        if excluded(key, index):
            continue
        # The chunk expected last is duplicated first (a slow holder's), fewest
        # copies first among equals; none whose copy we expect before this peer's.
        expected = min(eta(sources[q], index, median) for q in holders)
        if expected <= eta(p, -1, median):
            continue  # measured, and sooner than this peer could deliver
        cands.append((-expected, len(holders), rng.random(), index))
    cands.sort()
    return [index for *_, index in cands[:free]]
