"""An in-memory ChunkStore for tests and for simulating many nodes in one process.

It ships in the package, not under tests/, because the virtual simulation
(:mod:`p2pupdate.sim.virtual`, a scenario with ``mode = "virtual"``) runs every
simulated node on one: a thousand nodes in one process could not each keep a data
directory.

:class:`MemoryStore` honours the durability contract of
:class:`p2pupdate.shell.transfer.store.ChunkStore` in its own terms: what
``persist()`` recorded is "durable", everything written after it is not, and
:meth:`MemoryStore.crash` drops what is not durable (optionally keeping a
random part of it, as a real page cache might), so crash-recovery logic can
be tested without processes. Chunks are kept as the very ``bytes`` objects the
caller passed, so a thousand simulated nodes holding the same package share
its chunks instead of holding a thousand copies; a :class:`ContentMemo` shared
between stores lets them skip re-hashing a whole package made of chunk objects
already verified together.

It does not touch the disk except in :meth:`MemoryStore.export` (which writes
the package into a directory the caller names) and
:meth:`MemoryStore.add_complete_file` (which reads one).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import blake3
import trio
from bitarray import bitarray

from p2pupdate.core.bitmapfile import decode_bitmap, encode_bitmap
from p2pupdate.core.chunks import HASH_LEN, chunk_count, chunk_length, hash_chunk
from p2pupdate.errors import DiskFullError, StateFileError
from p2pupdate.shell.transfer.store import (
    CHUNK_SIZE,
    MAX_TABLE_BYTES,
    check_chunk_length,
    check_package_id,
    check_package_size,
)

__all__ = ["ContentMemo", "MemoryStore"]

log = logging.getLogger(__name__)


class ContentMemo:
    """Packages whose exact chunk objects were already hashed to their package id.

    Bytes objects are immutable and the memo keeps them alive, so a package
    assembled from the very same objects (compared with ``is``) has the same
    hash. Anything else (a copy, a tampered chunk) is hashed for real.
    """

    def __init__(self, *, share_chunks: bool = False) -> None:
        self._known: dict[bytes, tuple[bytes, ...]] = {}
        # (package id, index) -> the first copy written of that chunk, when sharing.
        self._chunks: dict[tuple[bytes, int], bytes] | None = {} if share_chunks else None

    def intern(self, package_id: bytes, index: int, data: bytes) -> bytes:
        """The shared copy of a chunk equal to ``data`` (``data`` itself if none yet).

        Only a chunk with exactly the same bytes is replaced by the shared object, so
        what a store holds never changes; each node still verifies its own copy before
        it writes it. With sharing off, ``data`` is returned as is.
        """
        if self._chunks is None:
            return data
        key = (package_id, index)
        shared = self._chunks.get(key)
        if shared is None:
            self._chunks[key] = data
            return data
        return shared if shared == data else data

    def knows(self, package_id: bytes, chunks: Sequence[bytes]) -> bool:
        known = self._known.get(package_id)
        return (
            known is not None
            and len(known) == len(chunks)
            and all(a is b for a, b in zip(known, chunks, strict=True))
        )

    def record(self, package_id: bytes, chunks: Sequence[bytes]) -> None:
        self._known[package_id] = tuple(chunks)


@dataclass
class _Partial:
    size: int
    # What reads see now (the page cache, in disk terms).
    chunks: dict[int, bytes] = field(default_factory=dict)
    # What survives a crash: chunks as of the last persist().
    durable: dict[int, bytes] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)
    # The persisted bitmap "file": encode_bitmap() output, decoded on load.
    bitmap_file: bytes | None = None


@dataclass
class _Complete:
    size: int
    chunks: tuple[bytes, ...]


def _zero(length: int) -> bytes:
    return bytes(length)


class MemoryStore:
    """ChunkStore in memory; see the module docstring for what "durable" means here.

    ``capacity`` (bytes, None = unlimited) plays the role of free disk space:
    partial and complete packages count against it in full, as a preallocated
    file would. ``fail_writes_after`` (None = never) makes write_chunk raise
    DiskFullError once that many more writes have succeeded.
    """

    def __init__(self, *, capacity: int | None = None, memo: ContentMemo | None = None) -> None:
        self.capacity = capacity
        self.fail_writes_after: int | None = None
        self._memo = memo if memo is not None else ContentMemo()
        self._partials: dict[bytes, _Partial] = {}
        self._complete: dict[bytes, _Complete] = {}
        self._tables: dict[bytes, bytes] = {}

    # -- fault injection (tests and the simulation) ---------------------------

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose everything not durable, as a kill -9 or power loss would.

        Chunks written since the last persist() are dropped; with ``rng``, each
        of them survives with probability 1/2 instead (so a bitmap lags the
        data, and scan_unclaimed has something to find). Bitmaps go back to the
        last persisted ones; complete packages and tables were durable already.
        """
        for p in self._partials.values():
            if rng is not None:
                for i in sorted(p.dirty):
                    if rng.random() < 0.5:
                        p.durable[i] = p.chunks[i]
            p.chunks = dict(p.durable)
            p.dirty.clear()

    def flip_byte(
        self,
        package_id: bytes,
        what: Literal["partial", "complete", "bitmap", "table"],
        offset: int = 0,
    ) -> None:
        """Corrupt one byte of a stored object, durably (bit rot, a bad sector)."""
        if what == "bitmap":
            p = self._partials[package_id]
            if p.bitmap_file is None:
                raise KeyError("no bitmap persisted")
            p.bitmap_file = _flipped(p.bitmap_file, offset % len(p.bitmap_file))
        elif what == "table":
            t = self._tables[package_id]
            self._tables[package_id] = _flipped(t, offset % len(t))
        elif what == "partial":
            p = self._partials[package_id]
            i, off = divmod(offset, CHUNK_SIZE)
            chunk = _flipped(p.chunks.get(i, _zero(chunk_length(p.size, i))), off)
            p.chunks[i] = p.durable[i] = chunk
        else:
            c = self._complete[package_id]
            i, off = divmod(offset, CHUNK_SIZE)
            chunks = list(c.chunks)
            chunks[i] = _flipped(chunks[i], off)
            c.chunks = tuple(chunks)

    # -- partial downloads ----------------------------------------------------

    def _used(self) -> int:
        return sum(p.size for p in self._partials.values()) + sum(
            c.size for c in self._complete.values()
        )

    def _check_free(self, needed: int) -> None:
        if self.capacity is None:
            return
        free = self.capacity - self._used()
        if free < needed:
            raise DiskFullError(
                f"not enough free space in the memory store: need {needed} bytes, {free} free"
            )

    def _partial(self, package_id: bytes) -> _Partial:
        check_package_id(package_id)
        p = self._partials.get(package_id)
        if p is None:
            raise StateFileError(f"no partial file for package {package_id.hex()}")
        return p

    def has_room(self, package_id: bytes, size: int) -> bool:
        if self.capacity is None:
            return True
        p = self._partials.get(package_id)
        needed = size - (p.size if p is not None and p.size == size else 0)
        return self.capacity - self._used() >= needed

    async def open_partial(self, package_id: bytes, size: int) -> None:
        check_package_id(package_id)
        check_package_size(size)
        await trio.lowlevel.checkpoint()
        p = self._partials.get(package_id)
        if p is not None and p.size == size:
            return
        if p is not None:
            log.warning("partial %s has %d bytes, not %d: resizing", package_id.hex(), p.size, size)
            self._partials.pop(package_id)
        self._check_free(size)
        self._partials[package_id] = _Partial(size)

    def load_bitmap(self, package_id: bytes, nchunks: int) -> bitarray | None:
        check_package_id(package_id)
        p = self._partials.get(package_id)
        if p is None or p.bitmap_file is None or chunk_count(p.size) != nchunks:
            return None
        try:
            return decode_bitmap(p.bitmap_file, package_id=package_id, nchunks=nchunks)
        except ValueError as exc:
            log.warning("corrupt bitmap for %s (%s): treating it as missing", package_id.hex(), exc)
            return None

    async def write_chunk(self, package_id: bytes, index: int, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        p = self._partial(package_id)
        check_chunk_length(p.size, index, len(data))
        if self.fail_writes_after is not None:
            if self.fail_writes_after <= 0:
                raise DiskFullError(f"disk full writing chunk {index} of {package_id.hex()}")
            self.fail_writes_after -= 1
        # No copy for a bytes object; with a sharing memo, equal chunks are one object.
        p.chunks[index] = self._memo.intern(package_id, index, bytes(data))
        p.dirty.add(index)

    async def read_chunk(self, package_id: bytes, index: int, length: int) -> bytes:
        await trio.lowlevel.checkpoint()
        check_package_id(package_id)
        c = self._complete.get(package_id)
        if c is not None:
            check_chunk_length(c.size, index, length)
            return c.chunks[index]
        p = self._partial(package_id)
        check_chunk_length(p.size, index, length)
        return p.chunks.get(index) or _zero(length)

    async def persist(self, package_id: bytes, have: bitarray) -> None:
        await trio.lowlevel.checkpoint()
        p = self._partial(package_id)
        if len(have) != chunk_count(p.size):
            raise ValueError(f"bitmap of {len(have)} bits for {chunk_count(p.size)} chunks")
        # "fsync" the data first, then "rename" the bitmap into place.
        for i in p.dirty:
            p.durable[i] = p.chunks[i]
        p.dirty.clear()
        p.bitmap_file = encode_bitmap(package_id, have)

    async def scan_unclaimed(
        self, package_id: bytes, chunk_hashes: Sequence[bytes], have: bitarray, size: int
    ) -> list[int]:
        await trio.lowlevel.checkpoint()
        n = chunk_count(size)
        if len(chunk_hashes) != n or len(have) != n:
            raise ValueError(f"table of {len(chunk_hashes)} and bitmap of {len(have)} for {n}")
        check_package_id(package_id)
        p = self._partials.get(package_id)
        if p is None or p.size != size:
            return []
        found: list[int] = []
        zero_hashes: dict[int, bytes] = {}
        for i in have.search(0):
            data = p.chunks.get(i)
            if data is None:
                # Never written: zeros, which match only a chunk of zeros. One hash
                # per length, not per chunk (a thousand nodes restart at once).
                length = chunk_length(size, i)
                zh = zero_hashes.get(length)
                if zh is None:
                    zh = zero_hashes[length] = hash_chunk(_zero(length))
                if zh == chunk_hashes[i]:
                    found.append(i)
            elif hash_chunk(data) == chunk_hashes[i]:
                found.append(i)
        return found

    def _assemble(self, p: _Partial) -> list[bytes]:
        return [
            p.chunks.get(i) or _zero(chunk_length(p.size, i)) for i in range(chunk_count(p.size))
        ]

    def _hashes_to(self, package_id: bytes, chunks: Sequence[bytes]) -> bool:
        if self._memo.knows(package_id, chunks):
            return True
        h = blake3.blake3()
        for chunk in chunks:
            h.update(chunk)
        if h.digest() != package_id:
            return False
        self._memo.record(package_id, chunks)
        return True

    async def finalize(self, package_id: bytes, size: int) -> bool:
        await trio.lowlevel.checkpoint()
        check_package_id(package_id)
        if package_id not in self._partials and package_id in self._complete:
            return True
        p = self._partial(package_id)
        for i in p.dirty:
            p.durable[i] = p.chunks[i]
        p.dirty.clear()
        if p.size != size:
            return False
        chunks = self._assemble(p)
        if not self._hashes_to(package_id, chunks):
            log.warning("partial %s does not hash to its package id", package_id.hex())
            return False
        self._complete[package_id] = _Complete(size, tuple(chunks))
        del self._partials[package_id]
        return True

    # -- complete packages ----------------------------------------------------

    def has_complete(self, package_id: bytes) -> bool:
        check_package_id(package_id)
        return package_id in self._complete

    def complete_path(self, package_id: bytes) -> Path | None:
        check_package_id(package_id)
        return None

    async def export(self, package_id: bytes, dest_dir: Path) -> Path:
        hex_id = check_package_id(package_id)
        c = self._complete.get(package_id)
        if c is None:
            raise StateFileError(f"package {hex_id} is not in the cache")
        dest = dest_dir / f"{hex_id}.pkg"
        await trio.to_thread.run_sync(_write_file, dest, c.chunks)
        return dest

    async def verify_complete(self, package_id: bytes) -> bool:
        await trio.lowlevel.checkpoint()
        check_package_id(package_id)
        c = self._complete.get(package_id)
        if c is None:
            return False
        if self._hashes_to(package_id, c.chunks):
            return True
        log.warning("cached package %s is corrupt: removing it", package_id.hex())
        del self._complete[package_id]
        return False

    def list_complete(self) -> list[tuple[bytes, int]]:
        return sorted((pid, c.size) for pid, c in self._complete.items())

    def list_partial(self) -> list[tuple[bytes, int]]:
        return sorted((pid, p.size) for pid, p in self._partials.items())

    async def remove(self, package_id: bytes) -> None:
        await trio.lowlevel.checkpoint()
        check_package_id(package_id)
        self._partials.pop(package_id, None)
        self._complete.pop(package_id, None)
        self._tables.pop(package_id, None)

    async def add_complete_file(self, package_id: bytes, path: Path) -> None:
        check_package_id(package_id)
        if package_id in self._complete:
            await trio.lowlevel.checkpoint()
            return
        chunks = await trio.to_thread.run_sync(_read_chunks, path)
        self.add_complete_chunks(package_id, chunks)

    def add_complete_chunks(self, package_id: bytes, chunks: Sequence[bytes]) -> None:
        """Register a package given as its chunks (the simulation's publisher)."""
        check_package_id(package_id)
        if package_id in self._complete:
            return
        size = sum(len(c) for c in chunks)
        check_package_size(size)
        for i, c in enumerate(chunks):
            check_chunk_length(size, i, len(c))
        self._check_free(size)
        chunks = [self._memo.intern(package_id, i, c) for i, c in enumerate(chunks)]
        if not self._hashes_to(package_id, chunks):
            raise ValueError(f"the chunks do not hash to package id {package_id.hex()}")
        self._complete[package_id] = _Complete(size, tuple(chunks))

    # -- chunk tables ---------------------------------------------------------

    def save_table(self, package_id: bytes, hashes: bytes) -> None:
        check_package_id(package_id)
        if len(hashes) % HASH_LEN or len(hashes) > MAX_TABLE_BYTES:
            raise ValueError(f"a chunk table of {len(hashes)} bytes")
        self._tables[package_id] = bytes(hashes)

    def load_table(self, package_id: bytes) -> bytes | None:
        check_package_id(package_id)
        return self._tables.get(package_id)

    def close(self) -> None:
        """Nothing to release."""


def _flipped(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0xFF
    return bytes(b)


def _read_chunks(path: Path) -> list[bytes]:
    chunks: list[bytes] = []
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            chunks.append(chunk)
    return chunks


def _write_file(dest: Path, chunks: Sequence[bytes]) -> None:
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
