"""Hashing a package file: package id, chunk table and root, in one read of bounded memory.

The file is read once, with ``readinto`` into a few small reused buffers (no mmap: mapped
pages count in RSS, and a 4 GiB package must not). Two BLAKE3 passes run over every
buffer: the whole-file hash (the package id) and one hash per 64 KiB chunk (the chunk
table). They run in two threads; blake3 releases the GIL for inputs of 2 KiB and more, so
both cores really work:

* a helper thread feeds each buffer, in file order, to the whole-file hasher;
* the calling thread reads the file and hashes chunks from the front of the oldest buffer;
* whichever thread has nothing else to do takes chunks from the back of that buffer, so the
  work balances itself whatever the relative speeds of reading and hashing are.

The buffers are kept small (1 MiB by default, three of them) so that the bytes are still
in the CPU caches when the second pass reads them: measured here, two passes over
cache-resident data scale to two cores, while two passes over DRAM share one memory bus
and barely beat one. See benchmarks/bench_hashing.py and docs/performance.md.

This module does not decide anything about a package (that is ``p2pupdate.core``), and
:func:`hash_file` blocks: async code calls :func:`hash_file_async`, which runs it in a
worker thread off the event loop.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from pathlib import Path

import blake3
import trio

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.chunks import ContentInfo, hash_chunk, table_root
from p2pupdate.core.units import format_size
from p2pupdate.errors import UsageError

__all__ = ["DEFAULT_BUFFER_SIZE", "hash_file", "hash_file_async"]

# Small enough that three buffers stay in the L2/L3 caches between the read and the two
# hash passes; large enough that per-buffer bookkeeping is noise. A multiple of 64 KiB.
DEFAULT_BUFFER_SIZE = 1024 * 1024
_NBUFFERS = 3
# Chunks the reading thread claims at once (fewer lock round trips), and the helper steals.
_CLAIM = 8
_STEAL = 2


class _Slot:
    """One filled buffer and the progress of both passes over it."""

    __slots__ = ("buffer", "done", "hashes", "hi", "lo", "order", "view", "whole_done")

    def __init__(self, order: int, buffer: int, view: memoryview, nchunks: int) -> None:
        self.order = order  # position in the file, in buffers
        self.buffer = buffer
        self.view = view
        self.lo = 0  # next chunk the reader claims (from the front)
        self.hi = nchunks  # chunks at and past ``hi`` were stolen (from the back)
        self.done = 0
        self.whole_done = False
        self.hashes: list[bytes] = [b""] * nchunks


class _FileHasher:
    """The two-thread pipeline of :func:`hash_file` over one open file."""

    def __init__(self, f: io.FileIO, path: Path, limits: Limits, buffer_size: int) -> None:
        self._f = f
        self._path = path
        self._cs = limits.chunk_size
        self._max_size = limits.max_package_size
        self._buffer_size = buffer_size
        self._buffers = [bytearray(buffer_size) for _ in range(_NBUFFERS)]
        self._free = list(range(_NBUFFERS))
        self._cv = threading.Condition()
        self._pending: deque[_Slot] = deque()  # read and not finished, in file order
        self._to_whole: deque[_Slot] = deque()  # waiting for the whole-file pass
        self._finished: list[_Slot] = []
        self._eof = False
        self._failed: BaseException | None = None
        self._size = 0
        self._whole = blake3.blake3()

    def run(self) -> ContentInfo:
        helper = threading.Thread(target=self._helper, name="p2pupdate-hash", daemon=True)
        helper.start()
        try:
            self._reader()
        except BaseException as exc:
            with self._cv:
                if self._failed is None:
                    self._failed = exc
                self._cv.notify_all()
            raise
        finally:
            helper.join()
        if self._failed is not None:
            raise self._failed
        slots = sorted(self._finished, key=lambda s: s.order)
        hashes = [h for slot in slots for h in slot.hashes]
        return ContentInfo(self._whole.digest(), self._size, tuple(hashes), table_root(hashes))

    # -- the calling thread: read, then hash chunks from the front --------------------------

    def _reader(self) -> None:
        order = 0
        while True:
            with self._cv:
                while True:
                    if self._failed is not None:
                        raise self._failed
                    if not self._eof and self._free:
                        buffer = self._free.pop()
                        slot = None
                        break
                    slot = self._claimable()
                    if slot is not None:
                        first = slot.lo
                        count = min(_CLAIM, slot.hi - slot.lo)
                        slot.lo += count
                        break
                    if self._eof and not self._pending:
                        return
                    self._cv.wait()
            if slot is None:
                n = self._read_full(self._buffers[buffer])
                with self._cv:
                    if n < self._buffer_size:
                        self._eof = True
                    if n == 0:
                        self._free.append(buffer)
                    else:
                        view = memoryview(self._buffers[buffer])[:n]
                        new = _Slot(order, buffer, view, -(-n // self._cs))
                        order += 1
                        self._pending.append(new)
                        self._to_whole.append(new)
                    self._cv.notify_all()
            else:
                self._hash_chunks(slot, first, count)

    def _read_full(self, buffer: bytearray) -> int:
        """Fill ``buffer`` unless the file ends first; return the byte count."""
        view = memoryview(buffer)
        got = 0
        while got < len(buffer):
            n = self._f.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        self._size += got
        if self._size > self._max_size:
            raise UsageError(
                f"{self._path} is larger than the maximum package size "
                f"({format_size(self._max_size)})"
            )
        return got

    # -- the helper thread: the whole-file pass first, else steal chunks from the back --------

    def _helper(self) -> None:
        try:
            while True:
                with self._cv:
                    while True:
                        if self._failed is not None:
                            return
                        if self._to_whole:
                            whole = self._to_whole.popleft()
                            slot = None
                            break
                        slot = self._claimable()
                        if slot is not None:
                            count = min(_STEAL, slot.hi - slot.lo)
                            slot.hi -= count
                            break
                        if self._eof:
                            return  # all read, all whole-hashed, no chunk left to take
                        self._cv.wait()
                if slot is None:
                    self._whole.update(whole.view)
                    with self._cv:
                        whole.whole_done = True
                        self._release_if_done(whole)
                else:
                    self._hash_chunks(slot, slot.hi, count)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            with self._cv:
                if self._failed is None:
                    self._failed = exc
                self._cv.notify_all()

    # -- shared ------------------------------------------------------------------------------

    def _claimable(self) -> _Slot | None:
        """The oldest buffer with chunks nobody has taken yet (caller holds the lock)."""
        for slot in self._pending:
            if slot.lo < slot.hi:
                return slot
        return None

    def _hash_chunks(self, slot: _Slot, first: int, count: int) -> None:
        cs = self._cs
        view = slot.view
        for i in range(first, first + count):
            slot.hashes[i] = hash_chunk(view[i * cs : (i + 1) * cs])
        with self._cv:
            slot.done += count
            self._release_if_done(slot)

    def _release_if_done(self, slot: _Slot) -> None:
        """Give a buffer back once both passes are over it (caller holds the lock)."""
        if slot.whole_done and slot.done == len(slot.hashes):
            self._pending.remove(slot)
            self._finished.append(slot)
            slot.view.release()
            self._free.append(slot.buffer)
            self._cv.notify_all()


def hash_file(
    path: Path, limits: Limits = DEFAULT_LIMITS, *, buffer_size: int = DEFAULT_BUFFER_SIZE
) -> ContentInfo:
    """Package id, chunk table and table root of the file at ``path``, reading it once.

    Memory stays at three buffers of ``buffer_size`` bytes plus 32 bytes per chunk,
    whatever the file size. Raises OSError if the file cannot be read, UsageError if it is
    larger than ``limits.max_package_size``. Blocks (two threads): not for the event loop.
    """
    if buffer_size <= 0 or buffer_size % limits.chunk_size:
        raise ValueError(f"buffer_size must be a positive multiple of {limits.chunk_size}")
    with io.FileIO(path, "r") as f:
        return _FileHasher(f, path, limits, buffer_size).run()


async def hash_file_async(path: Path, limits: Limits = DEFAULT_LIMITS) -> ContentInfo:
    """:func:`hash_file` in a worker thread, so the event loop keeps running."""
    return await trio.to_thread.run_sync(hash_file, path, limits)
