"""Local chunk reuse: which chunks of a new package the node already has on disk.

Before a download asks peers for anything, the shell offers the files that may
hold old copies of the package's chunks: the installed target (a file target,
or the files of a directory target's live release), its backups, and older
packages in the cache. Each such file is cut at 64 KiB-aligned offsets, exactly
as a package is, and every piece is hashed once; :class:`ReuseIndex` remembers
hash -> where. :func:`plan_reuse` then matches the new package's signed chunk
table against the index and says which local piece to copy into which missing
chunk. The shell copies, re-checks every copied chunk against the table with
:func:`verified` (a file may have changed since it was hashed) and only then
marks it in the download's bitmap: a reused chunk is trusted exactly as much
as one received from a peer.

Memory is bounded: :func:`select_files` spends a budget of chunks (the
``max_reuse_index_chunks`` limit) over the candidate files in the order given,
so the index never holds more entries than that, and files past the budget are
not read at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitarray import bitarray

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.chunks import HASH_LEN, chunk_count, chunk_length, hash_chunk

__all__ = [
    "ChunkSource",
    "ReuseIndex",
    "file_pieces",
    "plan_reuse",
    "select_files",
    "verified",
]

CHUNK_SIZE = DEFAULT_LIMITS.chunk_size


@dataclass(frozen=True)
class ChunkSource:
    """Where a piece of a local file lies: file number (the shell's list), offset, length."""

    file: int
    offset: int
    length: int


def file_pieces(size: int, chunk_size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """(offset, length) of the 64 KiB-aligned pieces of a file of ``size`` bytes.

    The same cut as a package's chunks: every piece is ``chunk_size`` long but the
    last, which may be shorter (it can still be a package's short last chunk).
    """
    if size < 0:
        raise ValueError("a file size is not negative")
    return [
        (i * chunk_size, chunk_length(size, i, chunk_size))
        for i in range(chunk_count(size, chunk_size))
    ]


def select_files(
    sizes: Sequence[int], budget: int, chunk_size: int = CHUNK_SIZE
) -> list[tuple[int, int]]:
    """Which candidate files to hash and how many of their pieces, within ``budget``.

    ``sizes`` are the candidates' sizes in order of preference (most likely to share
    chunks first). Returns (file number, pieces to hash): whole files while the budget
    lasts, the first pieces of the file that crosses it, nothing after it. Empty files
    hold nothing and are skipped.
    """
    if budget < 0:
        raise ValueError("the budget is not negative")
    out: list[tuple[int, int]] = []
    left = budget
    for i, size in enumerate(sizes):
        if left <= 0:
            break
        n = chunk_count(size, chunk_size) if size > 0 else 0
        if n == 0:
            continue
        take = min(n, left)
        out.append((i, take))
        left -= take
    return out


class ReuseIndex:
    """BLAKE3 of a local piece -> where it lies; at most ``max_entries`` entries.

    The first location recorded for a hash wins (files are offered most likely first).
    """

    def __init__(self, max_entries: int = DEFAULT_LIMITS.max_reuse_index_chunks) -> None:
        if max_entries < 0:
            raise ValueError("max_entries is not negative")
        self.max_entries = max_entries
        self._where: dict[bytes, ChunkSource] = {}
        self.pieces = 0  # pieces offered to add (hashed), duplicates included

    def __len__(self) -> int:
        return len(self._where)

    @property
    def full(self) -> bool:
        return self.pieces >= self.max_entries

    def add(self, digest: bytes, source: ChunkSource) -> bool:
        """Record one hashed piece; False (nothing recorded) once the index is full."""
        if len(digest) != HASH_LEN:
            raise ValueError(f"a chunk hash is {HASH_LEN} bytes")
        if source.offset < 0 or not 0 < source.length <= CHUNK_SIZE or source.file < 0:
            raise ValueError(f"not a piece of a file: {source}")
        if self.full:
            return False
        self.pieces += 1
        self._where.setdefault(digest, source)
        return True

    def get(self, digest: bytes) -> ChunkSource | None:
        return self._where.get(digest)


def plan_reuse(
    table: Sequence[bytes],
    have: bitarray,
    index: ReuseIndex,
    size: int,
    chunk_size: int = CHUNK_SIZE,
) -> list[tuple[int, ChunkSource]]:
    """(chunk, local piece) for every chunk not in ``have`` whose hash is in the index.

    A piece qualifies only if its length is the chunk's length (a short last piece of
    a file never stands in for a full chunk, nor the other way round, even if a hash
    collided). Chunks come in index order, so the copies read the partial file's
    offsets forwards.
    """
    n = chunk_count(size, chunk_size)
    if len(table) != n or len(have) != n:
        raise ValueError(f"table of {len(table)} and bitmap of {len(have)} for {n} chunks")
    plan: list[tuple[int, ChunkSource]] = []
    if len(index) == 0:
        return plan
    for i in have.search(0):
        src = index.get(table[i])
        if src is not None and src.length == chunk_length(size, i, chunk_size):
            plan.append((i, src))
    return plan


def verified(table: Sequence[bytes], chunk: int, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is chunk ``chunk`` of the package, by the signed table."""
    return 0 <= chunk < len(table) and hash_chunk(data) == table[chunk]
