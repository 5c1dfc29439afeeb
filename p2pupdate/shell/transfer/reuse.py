"""Local chunk reuse, the file part: hash local files, copy matching chunks in.

Before a download asks peers for anything, :meth:`LocalChunks.fill` looks for the
package's chunks in files the node already has: the candidates its owner names
for the channel (the agent: the installed file target or the files of a directory
target's live release, then the backups, newest first) and the other complete
packages in the store's cache (newest first). Directories are walked (regular
files only, symlinks not followed, sorted, at most ``max_reuse_files``).

Every file is cut at 64 KiB-aligned offsets and each piece hashed once; the
digests are remembered per file identity (device, inode, size, mtime), so the
next download does not hash an unchanged file again. Nothing is persisted: the
index is rebuilt after a restart. The decisions (how much to hash, which piece
for which chunk) are :mod:`p2pupdate.core.reuse`'s; this module reads, hashes,
checks every copied chunk against the signed table (a file can change between
hashing and copying) and writes it through the :class:`ChunkStore` at its offset
in the partial file. The caller marks the chunks in the download's bitmap.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio
from bitarray import bitarray

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.chunks import hash_chunk
from p2pupdate.core.reuse import Wanted, file_pieces, may_hold_chunks, select_files, verified
from p2pupdate.shell.transfer.store import ChunkStore

__all__ = ["LocalChunks"]

log = logging.getLogger(__name__)

# Chunks read and checked per worker-thread call (16 MiB): a long copy stays
# cancellable between batches.
_BATCH = 256

_FileKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True)
class _File:
    path: Path
    key: _FileKey
    size: int


def _key(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class LocalChunks:
    """Finds a package's chunks in local files and copies them into its partial file."""

    def __init__(
        self,
        store: ChunkStore,
        candidates: Callable[[str], Sequence[Path]] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        # channel -> files or directories likely to hold old chunks, best first.
        self.candidates = candidates
        self.limits = limits
        # file identity -> digests of its first pieces (bounded by the index limit in
        # total; the least recently used go first).
        self._digests: OrderedDict[_FileKey, list[bytes]] = OrderedDict()
        self._held = 0
        self.bytes_hashed = 0  # metrics: what hashing local files cost

    async def fill(
        self, channel: str, package_id: bytes, table: Sequence[bytes], have: bitarray, size: int
    ) -> int:
        """Copy every missing chunk found locally into the partial file, mark it in
        ``have``; return the bytes copied. A file that cannot be read is skipped."""
        if not have.count(0):
            return 0
        paths = list(self.candidates(channel)) if self.candidates is not None else []
        for pid, _ in self.store.list_complete():
            if pid != package_id:
                path = self.store.complete_path(pid)
                if path is not None:
                    paths.append(path)
        if not paths:
            return 0
        started = trio.current_time()
        listed = await trio.to_thread.run_sync(self._collect, paths)
        files = [f for f in listed if may_hold_chunks(f.size, size)]
        wanted = Wanted(table, have, size)
        missing = len(wanted)
        copied = 0
        budget = self.limits.max_reuse_index_chunks
        for fi, npieces in select_files([f.size for f in files], budget):
            if not wanted:
                break
            f = files[fi]
            known = self._digests.get(f.key)
            if known is not None and len(known) >= npieces:
                self._digests.move_to_end(f.key)
                copied += await self._copy_known(
                    f, known[:npieces], wanted, table, package_id, have
                )
            else:
                copied += await self._hash_and_copy(f, npieces, wanted, package_id, have)
        if copied:
            log.info(
                "%s: %d of %d missing chunks found locally (%d bytes) in %.2fs",
                channel,
                missing - len(wanted),
                missing,
                copied,
                trio.current_time() - started,
            )
        return copied

    async def _write(
        self, package_id: bytes, chunks: Sequence[int], data: bytes, have: bitarray
    ) -> int:
        """Write verified ``data`` as each of ``chunks``; the bytes written. A disk error
        propagates: the download fails as it would on a chunk from a peer."""
        for i in chunks:
            await self.store.write_chunk(package_id, i, data)
            have[i] = 1
        return len(data) * len(chunks)

    async def _hash_and_copy(
        self, f: _File, npieces: int, wanted: Wanted, package_id: bytes, have: bitarray
    ) -> int:
        """One pass over a file not hashed before: read each piece once, hash it, and
        write the wanted ones (verified by that very hash); remember the digests."""
        pieces = file_pieces(f.size)[:npieces]
        digests: list[bytes] = []
        copied = 0
        for start in range(0, len(pieces), _BATCH):
            batch = pieces[start : start + _BATCH]
            try:
                got, found = await trio.to_thread.run_sync(_hash_batch, f, batch, wanted.digests())
            except OSError as exc:
                log.info("not reusing chunks of %s: %s", f.path, exc)
                return copied
            self.bytes_hashed += sum(n for _, n in batch[: len(got)])
            digests += got
            for k, data in found:
                copied += await self._write(package_id, wanted.take(got[k], len(data)), data, have)
            if len(got) < len(batch):
                return copied  # the file changed or shrank under us: digests not kept
        self._remember(f.key, digests)
        return copied

    async def _copy_known(
        self,
        f: _File,
        digests: Sequence[bytes],
        wanted: Wanted,
        table: Sequence[bytes],
        package_id: bytes,
        have: bitarray,
    ) -> int:
        """A file hashed before: read only the wanted pieces, each checked again."""
        copied = 0
        todo: list[tuple[int, int, bytes, list[int]]] = []
        for (off, length), digest in zip(file_pieces(f.size), digests, strict=False):
            if wanted.wants(digest, length):
                todo.append((off, length, digest, wanted.take(digest, length)))
        for start in range(0, len(todo), _BATCH):
            batch = todo[start : start + _BATCH]
            datas = await trio.to_thread.run_sync(_read_checked, f, table, batch)
            for (_, length, digest, chunks), data in zip(batch, datas, strict=True):
                if data is None:
                    wanted.put_back(digest, length, chunks)  # changed since: fetched instead
                else:
                    copied += await self._write(package_id, chunks, data, have)
        return copied

    def _collect(self, paths: Sequence[Path]) -> list[_File]:
        """Regular files under ``paths``, each once, in order (in a thread)."""
        out: list[_File] = []
        seen: set[tuple[int, int]] = set()
        budget = self.limits.max_reuse_files

        def add(path: Path, st: os.stat_result) -> None:
            if (st.st_dev, st.st_ino) not in seen and st.st_size > 0:
                seen.add((st.st_dev, st.st_ino))
                out.append(_File(path, _key(st), st.st_size))

        for path in paths:
            try:
                st = path.stat()  # a file target given as a symlink: its file
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                add(path, st)
            elif stat.S_ISDIR(st.st_mode):
                budget = _walk(path, add, budget)
        return out

    def _remember(self, key: _FileKey, digests: list[bytes]) -> None:
        old = self._digests.pop(key, None)
        if old is not None:
            self._held -= len(old)
        self._digests[key] = digests
        self._held += len(digests)
        while self._held > self.limits.max_reuse_index_chunks and self._digests:
            _, dropped = self._digests.popitem(last=False)
            self._held -= len(dropped)


def _walk(root: Path, add: Callable[[Path, os.stat_result], None], budget: int) -> int:
    """Visit the regular files under ``root`` in sorted order; return the budget left."""
    stack = [root]
    while stack and budget > 0:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(e.path))
            elif stat.S_ISREG(st.st_mode) and budget > 0:
                budget -= 1
                add(Path(e.path), st)
    return budget


def _open_same(f: _File) -> int:
    """An fd of ``f``, or OSError if it is no longer the file that was listed.

    O_NONBLOCK: a FIFO swapped in since the listing must not block the open (it then
    fails the identity check); on a regular file the flag changes nothing.
    """
    fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    if _key(os.fstat(fd)) != f.key:
        os.close(fd)
        raise OSError(f"{f.path} changed")
    return fd


def _hash_batch(
    f: _File, pieces: Sequence[tuple[int, int]], wanted: frozenset[bytes]
) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Digests of ``pieces`` of ``f``, and (piece number, bytes) of those whose digest
    is wanted (in a thread). Stops early if the file is cut short under us."""
    digests: list[bytes] = []
    found: list[tuple[int, bytes]] = []
    fd = _open_same(f)
    try:
        for k, (off, length) in enumerate(pieces):
            data = os.pread(fd, length, off)
            if len(data) != length:
                break
            digest = hash_chunk(data)
            digests.append(digest)
            if digest in wanted:
                found.append((k, data))
    finally:
        os.close(fd)
    return digests, found


def _read_checked(
    f: _File, table: Sequence[bytes], batch: Sequence[tuple[int, int, bytes, list[int]]]
) -> list[bytes | None]:
    """Each planned piece's bytes if they are still the chunk the table says, else None
    (in a thread)."""
    out: list[bytes | None] = []
    try:
        fd = _open_same(f)
    except OSError:
        return [None] * len(batch)
    try:
        for off, length, _digest, chunks in batch:
            data = os.pread(fd, length, off)
            ok = len(data) == length and bool(chunks) and verified(table, chunks[0], data)
            out.append(data if ok else None)
    finally:
        os.close(fd)
    return out
