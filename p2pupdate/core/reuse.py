"""Local chunk reuse: which chunks of a new package the node already has on disk.

Before a download asks peers for anything, the shell offers the files that may
hold old copies of the package's chunks: the installed target (a file target,
or the files of a directory target's live release), its backups, and older
packages in the cache. Each such file is cut at 64 KiB-aligned offsets, exactly
as a package is, and every piece is hashed (once: the shell remembers the
digests per file). :class:`Wanted` holds the package's missing chunks by hash,
from the signed table; a piece whose hash and length it wants fills those
chunks. A piece is copied only with the BLAKE3 computed over the very bytes
written (:func:`verified` when the digest was remembered from an earlier pass:
the file may have changed since), so a reused chunk is trusted exactly as much
as one received from a peer.

Memory and work are bounded: :func:`select_files` spends a budget of pieces
(the ``max_reuse_index_chunks`` limit) over the candidate files in the order
given, and files past the budget are not read at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from bitarray import bitarray

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.chunks import chunk_count, chunk_length, hash_chunk

__all__ = [
    "Wanted",
    "file_pieces",
    "may_hold_chunks",
    "select_files",
    "verified",
]

CHUNK_SIZE = DEFAULT_LIMITS.chunk_size


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


def may_hold_chunks(file_size: int, package_size: int, chunk_size: int = CHUNK_SIZE) -> bool:
    """Whether a file of ``file_size`` bytes can hold any chunk of the package: it has a
    whole chunk's worth, or it is exactly as long as the package's short last chunk.
    (A directory release's many small files are then not even opened.)"""
    if file_size <= 0 or package_size <= 0:
        return False
    last = chunk_length(package_size, chunk_count(package_size, chunk_size) - 1, chunk_size)
    return file_size >= chunk_size or file_size == last


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


class Wanted:
    """The chunks a download still misses, by hash: what a local piece can fill.

    Built from the signed table and the download's bitmap; :meth:`take` hands out
    the missing chunks a piece with that hash and length can fill (a short last
    piece never stands in for a full chunk, nor the other way round) and forgets
    them, so each chunk is copied once however many local copies exist.
    """

    def __init__(
        self, table: Sequence[bytes], have: bitarray, size: int, chunk_size: int = CHUNK_SIZE
    ) -> None:
        n = chunk_count(size, chunk_size)
        if len(table) != n or len(have) != n:
            raise ValueError(f"table of {len(table)} and bitmap of {len(have)} for {n} chunks")
        self._by_hash: dict[tuple[bytes, int], list[int]] = {}
        self._count = 0
        for i in have.search(0):
            self._by_hash.setdefault((table[i], chunk_length(size, i, chunk_size)), []).append(i)
            self._count += 1

    def __len__(self) -> int:
        """Missing chunks not handed out yet."""
        return self._count

    def digests(self) -> frozenset[bytes]:
        """The hashes still wanted (a snapshot a worker thread can test pieces against)."""
        return frozenset(d for d, _ in self._by_hash)

    def wants(self, digest: bytes, length: int) -> bool:
        return (digest, length) in self._by_hash

    def take(self, digest: bytes, length: int) -> list[int]:
        """The missing chunks a piece of ``length`` bytes hashing to ``digest`` fills."""
        chunks = self._by_hash.pop((digest, length), [])
        self._count -= len(chunks)
        return chunks

    def put_back(self, digest: bytes, length: int, chunks: Sequence[int]) -> None:
        """Chunks taken but not filled after all (the local copy changed): wanted again."""
        if chunks:
            self._by_hash.setdefault((digest, length), []).extend(chunks)
            self._count += len(chunks)


def verified(table: Sequence[bytes], chunk: int, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is chunk ``chunk`` of the package, by the signed table."""
    return 0 <= chunk < len(table) and hash_chunk(data) == table[chunk]
