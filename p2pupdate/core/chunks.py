"""Content addressing: 64 KiB chunks, the BLAKE3 chunk table, its pages and root.

A package is cut into chunks of exactly ``chunk_size`` bytes (the last one
shorter; an empty package has none). The chunk table is one 32-byte BLAKE3
hash per chunk, cut into pages of ``table_page_entries`` hashes. The signed
table root is BLAKE3 over a domain prefix followed by the hash of each page,
so the short page-hash list is checked against the root first and then every
page can be checked on its own, whichever peer sent it.

This module only computes; reading files is the shell's job (it feeds
:class:`ChunkHasher` with pieces of any size, in bounded memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import blake3

from p2pupdate.config import DEFAULT_LIMITS

__all__ = [
    "HASH_LEN",
    "PAGE_DOMAIN",
    "ROOT_DOMAIN",
    "ChunkHasher",
    "ContentInfo",
    "chunk_count",
    "chunk_length",
    "hash_chunk",
    "page_count",
    "page_hash",
    "page_hashes",
    "page_of_table",
    "root_from_page_hashes",
    "table_root",
]

HASH_LEN = 32
PAGE_DOMAIN = b"p2pupdate/table-page/v1\x00"
ROOT_DOMAIN = b"p2pupdate/table-root/v1\x00"
CHUNK_SIZE = DEFAULT_LIMITS.chunk_size
PAGE_ENTRIES = DEFAULT_LIMITS.table_page_entries


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Number of chunks of a package of ``size`` bytes."""
    return -(-size // chunk_size)


def chunk_length(size: int, index: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Length of chunk ``index`` of a package of ``size`` bytes."""
    if not 0 <= index < chunk_count(size, chunk_size):
        raise IndexError(f"chunk {index} out of range")
    return min(chunk_size, size - index * chunk_size)


def page_count(nchunks: int, page_entries: int = PAGE_ENTRIES) -> int:
    """Number of table pages for ``nchunks`` chunk hashes."""
    return -(-nchunks // page_entries)


def hash_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE3-256 of one chunk."""
    return blake3.blake3(data).digest()


def page_hash(page: bytes) -> bytes:
    """Hash of one table page (the concatenated 32-byte chunk hashes)."""
    return blake3.blake3(PAGE_DOMAIN + page).digest()


def page_of_table(
    chunk_hashes: Sequence[bytes], page: int, page_entries: int = PAGE_ENTRIES
) -> bytes:
    """The bytes of table page ``page``: its chunk hashes concatenated."""
    return b"".join(chunk_hashes[page * page_entries : (page + 1) * page_entries])


def page_hashes(chunk_hashes: Sequence[bytes], page_entries: int = PAGE_ENTRIES) -> list[bytes]:
    """The hash of every page of the table, in order."""
    return [
        page_hash(page_of_table(chunk_hashes, p, page_entries))
        for p in range(page_count(len(chunk_hashes), page_entries))
    ]


def root_from_page_hashes(hashes: Sequence[bytes]) -> bytes:
    """The signed table root: BLAKE3(domain prefix || each page hash)."""
    h = blake3.blake3(ROOT_DOMAIN)
    for ph in hashes:
        h.update(ph)
    return h.digest()


def table_root(chunk_hashes: Sequence[bytes], page_entries: int = PAGE_ENTRIES) -> bytes:
    """The table root of a full chunk table."""
    return root_from_page_hashes(page_hashes(chunk_hashes, page_entries))


@dataclass(frozen=True)
class ContentInfo:
    """Everything an announcement says about a package's bytes."""

    package_id: bytes
    size: int
    chunk_hashes: tuple[bytes, ...]
    root: bytes

    @property
    def nchunks(self) -> int:
        return len(self.chunk_hashes)

    def page_hashes(self) -> list[bytes]:
        return page_hashes(self.chunk_hashes)


class ChunkHasher:
    """Streaming chunk-table computation over pieces of any size.

    Only the chunk hashes are computed here; the whole-package BLAKE3 (the
    package id) is a second pass the caller may run in another thread over
    the same pieces (see ``p2pupdate.shell.transfer.content``), or let
    :meth:`feed_whole` do it inline.
    """

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self._chunk_size = chunk_size
        self._partial = bytearray()
        self._hashes: list[bytes] = []
        self._size = 0
        self._whole: blake3.blake3 | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next piece of the package (chunk hashes only)."""
        view = memoryview(data)
        self._size += len(view)
        cs = self._chunk_size
        if self._partial:
            take = min(cs - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == cs:
                self._hashes.append(hash_chunk(self._partial))
                self._partial.clear()
        full = len(view) - len(view) % cs
        for off in range(0, full, cs):
            self._hashes.append(hash_chunk(view[off : off + cs]))
        if full < len(view):
            self._partial += view[full:]

    def feed_whole(self, data: bytes | bytearray | memoryview) -> None:
        """Feed a piece to both the chunk hashes and the whole-package hash."""
        if self._whole is None:
            if self._size:
                raise ValueError("feed_whole after feed: the package id would be incomplete")
            self._whole = blake3.blake3()
        self._whole.update(data)
        self.feed(data)

    def chunk_hashes(self) -> list[bytes]:
        """The chunk hashes so far, including a final short chunk."""
        hashes = list(self._hashes)
        if self._partial:
            hashes.append(hash_chunk(self._partial))
        return hashes

    def finish(self, package_id: bytes | None = None) -> ContentInfo:
        """Close the stream; ``package_id`` is required unless feed_whole was used."""
        if package_id is None:
            if self._whole is None:
                if self._size:
                    raise ValueError("package_id is needed when only feed() was used")
                self._whole = blake3.blake3()
            package_id = self._whole.digest()
        hashes = self.chunk_hashes()
        return ContentInfo(package_id, self._size, tuple(hashes), table_root(hashes))
