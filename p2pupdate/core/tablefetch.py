"""Fetching a chunk table: the page-hash list first, then each page, each checked alone.

What it does
    :class:`TableFetch` keeps the state of one table fetch: which pages are wanted,
    which are asked of whom (and since when), and checks every answer: the page-hash
    list against the signed root, each page against its page hash. A bad answer is
    pinned on the peer that sent it (``take_bad``); an empty answer means "I do not
    have it" and the page is asked elsewhere.

What it does not do
    No I/O and no clock: ``now`` comes in. It does not choose which peer to ask (the
    shell knows who advertised the package) and sends nothing.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from p2pupdate.core.chunks import (
    HASH_LEN,
    PAGE_ENTRIES,
    page_count,
    page_hash,
    root_from_page_hashes,
)
from p2pupdate.core.messages import TABLE_PAGE_LIST
from p2pupdate.core.reasons import Reason

__all__ = ["BAD_TABLE", "TableFetch"]

BAD_TABLE = Reason.BAD_TABLE
P = TypeVar("P", bound=Hashable)


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_LEN] for i in range(0, len(data), HASH_LEN)]


class TableFetch(Generic[P]):
    """One chunk-table fetch for a package of ``nchunks`` chunks with signed ``root``."""

    def __init__(self, nchunks: int, root: bytes) -> None:
        self.nchunks = nchunks
        self.root = root
        self.page_hashes: list[bytes] | None = None
        self.pages: dict[int, list[bytes]] = {}
        self.outstanding: dict[int, tuple[P, float]] = {}
        self.asked: dict[int, set[P]] = {}
        self.hashes: list[bytes] | None = None
        self._bad: list[tuple[P, str]] = []

    def wanted(self) -> list[int]:
        """Pages to ask for now (TABLE_PAGE_LIST first), none already outstanding."""
        if self.page_hashes is None:
            return [] if TABLE_PAGE_LIST in self.outstanding else [TABLE_PAGE_LIST]
        return [
            p
            for p in range(len(self.page_hashes))
            if p not in self.pages and p not in self.outstanding
        ]

    def ask(self, peer: P, page: int, now: float) -> None:
        self.outstanding[page] = (peer, now)
        self.asked.setdefault(page, set()).add(peer)

    def expire(self, now: float, timeout: float) -> None:
        """Forget requests older than ``timeout``: their pages are wanted again."""
        for page, (_, t) in list(self.outstanding.items()):
            if now - t > timeout:
                del self.outstanding[page]

    def forget(self, page: int) -> None:
        """The request for ``page`` will not be answered (the connection it went out on
        closed): the page is wanted again at once, from another peer first."""
        self.outstanding.pop(page, None)

    def take_bad(self) -> list[tuple[P, str]]:
        """Peers that sent a table part that does not verify, with the reason."""
        bad, self._bad = self._bad, []
        return bad

    def deliver(self, peer: P, page: int, data: bytes) -> None:
        """A TABLE answer; answers nobody asked this peer for are ignored."""
        asked = self.outstanding.get(page)
        if asked is None or asked[0] != peer:
            return
        del self.outstanding[page]
        if not data:
            return  # "I don't have it": ask someone else
        if page == TABLE_PAGE_LIST:
            hashes = _split(data)
            if (
                len(hashes) != page_count(self.nchunks)
                or root_from_page_hashes(hashes) != self.root
            ):
                self._bad.append((peer, BAD_TABLE))
                return
            self.page_hashes = hashes
            self.asked.clear()
            return
        if self.page_hashes is None or page >= len(self.page_hashes):
            return
        entries = min(PAGE_ENTRIES, self.nchunks - page * PAGE_ENTRIES)
        if len(data) != entries * HASH_LEN or page_hash(data) != self.page_hashes[page]:
            self._bad.append((peer, BAD_TABLE))
            return
        self.pages[page] = _split(data)
        if len(self.pages) == len(self.page_hashes):
            self.hashes = [h for p in range(len(self.page_hashes)) for h in self.pages[p]]

    def done(self) -> bool:
        return self.hashes is not None
