"""The chunks of one package: their sizes, their hashes, and which ones the download lacks.

What it does
    :class:`ChunkBook` checks the geometry of a package (its id, size, chunk size and the
    verified chunk table) and verifies a received chunk against the table. It keeps the
    bitmaps of the chunks written to the partial file (``have``), handed out to be
    written (``writing``) and still wanted (``wanted``: missing and not asked of anyone),
    with the availability of the missing chunks among the peers and the progress made.
    Together with the chunks in flight (:class:`~p2pupdate.core.download.inflight.InFlight`)
    these sets partition the package.

What it does not do
    Know about peers or requests (the :class:`~p2pupdate.core.download.Downloader`
    moves chunks between the sets), or touch the partial file.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3
from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.core.availability import Availability
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["HASH_LEN", "ChunkBook"]

HASH_LEN = 32  # BLAKE3 digest size used by the chunk table


class ChunkBook:
    """Geometry, table and chunk sets of one package (see the module docstring)."""

    def __init__(
        self,
        package_id: bytes,
        size: int,
        chunk_hashes: Sequence[bytes],
        chunk_size: int,
        have: bitarray | None,
    ) -> None:
        """Check the package's geometry; ``have`` marks chunks already written.
        Bad arguments raise ValueError."""
        if len(package_id) != HASH_LEN:
            raise ValueError("package_id must be 32 bytes")
        if size < 0:
            raise ValueError("size must not be negative")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        nchunks = -(-size // chunk_size)
        if len(chunk_hashes) != nchunks:
            raise ValueError(
                f"chunk table has {len(chunk_hashes)} entries, {size} bytes need {nchunks}"
            )
        if any(len(h) != HASH_LEN for h in chunk_hashes):
            raise ValueError("every chunk hash must be 32 bytes")
        if have is not None and len(have) != nchunks:
            raise ValueError(f"have bitmap has {len(have)} bits, expected {nchunks}")
        self.package_id = bytes(package_id)
        self.size = size
        self.chunk_size = chunk_size
        self.n = nchunks
        self._hashes: tuple[bytes, ...] = tuple(bytes(h) for h in chunk_hashes)
        self.have: bitarray = zeros(nchunks) if have is None else bitarray(have, endian="big")
        self.writing: bitarray = zeros(nchunks)  # verified, WriteChunk out, not written yet
        self.wanted: bitarray = ~self.have  # missing and neither requested nor writing
        self.missing = nchunks - self.have.count()  # not written yet
        self.avail = Availability(self.wanted)  # over the missing chunks

    def chunk_len(self, index: int) -> int:
        """Length of chunk ``index`` (the last one may be shorter)."""
        if index == self.n - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def check_index(self, index: int) -> None:
        """Raise RemoteProtocolError for an index a peer sent that is out of range."""
        if not 0 <= index < self.n:
            raise RemoteProtocolError(f"chunk index {index} out of range 0..{self.n - 1}")

    def verifies(self, index: int, data: bytes) -> bool:
        """Whether ``data`` is chunk ``index`` (its length and hash match the table)."""
        return (
            len(data) == self.chunk_len(index)
            and blake3.blake3(data).digest() == self._hashes[index]
        )

    def bytes_done(self) -> int:
        """Bytes of the package written and verified."""
        if self.n == 0:
            return 0
        done = self.have.count() * self.chunk_size
        if self.have[self.n - 1]:
            done -= self.chunk_size - self.chunk_len(self.n - 1)
        return done

    def held(self, index: int) -> bool:
        """Whether chunk ``index`` is written or being written."""
        return bool(self.have[index] or self.writing[index])

    def to_write(self, index: int) -> None:
        """Chunk ``index`` is verified and handed out to be written."""
        self.wanted[index] = 0
        self.writing[index] = 1

    def written(self, index: int) -> None:
        """Chunk ``index`` is in the partial file. LocalProtocolError unless handed out."""
        self._check_writing(index)
        self.writing[index] = 0
        self.have[index] = 1
        self.avail.discard(index)
        self.missing -= 1

    def write_failed(self, index: int) -> None:
        """Writing chunk ``index`` failed: it is wanted again."""
        self._check_writing(index)
        self.writing[index] = 0
        self.wanted[index] = 1

    def release(self, index: int) -> bool:
        """A chunk no longer in flight becomes wanted unless written, being written or
        wanted already: whether it did."""
        if self.have[index] or self.writing[index] or self.wanted[index]:
            return False
        self.wanted[index] = 1
        return True

    def _check_writing(self, index: int) -> None:
        if not 0 <= index < self.n or not self.writing[index]:
            raise LocalProtocolError(f"chunk {index} was not waiting to be written")
