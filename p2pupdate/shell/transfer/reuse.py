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
from p2pupdate.core.reuse import (
    ChunkSource,
    ReuseIndex,
    file_pieces,
    plan_reuse,
    select_files,
    verified,
)
from p2pupdate.errors import DiskFullError
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
        files = await trio.to_thread.run_sync(self._collect, paths)
        budget = self.limits.max_reuse_index_chunks
        index = ReuseIndex(budget)
        for fi, npieces in select_files([f.size for f in files], budget):
            f = files[fi]
            digests = await self._hash(f, npieces)
            for (off, length), digest in zip(file_pieces(f.size), digests, strict=False):
                if not index.add(digest, ChunkSource(fi, off, length)):
                    break
        plan = plan_reuse(table, have, index, size)
        if not plan:
            return 0
        copied = 0
        for start in range(0, len(plan), _BATCH):
            batch = plan[start : start + _BATCH]
            chunks = await trio.to_thread.run_sync(_read_checked, files, table, batch)
            for i, data in chunks:
                try:
                    await self.store.write_chunk(package_id, i, data)
                except (OSError, DiskFullError) as exc:
                    # The download itself meets (and reports) the same disk soon enough.
                    log.warning("copying local chunk %d failed: %s", i, exc)
                    return copied
                have[i] = 1
                copied += len(data)
        log.info(
            "%s: %d of %d missing chunks found locally (%d bytes)",
            channel,
            len(plan),
            len(plan) + have.count(0),
            copied,
        )
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

    async def _hash(self, f: _File, npieces: int) -> list[bytes]:
        known = self._digests.get(f.key)
        if known is not None and len(known) >= npieces:
            self._digests.move_to_end(f.key)
            return known[:npieces]
        try:
            digests = await trio.to_thread.run_sync(_hash_pieces, f, npieces)
        except OSError as exc:
            log.info("not reusing chunks of %s: %s", f.path, exc)
            return []
        self.bytes_hashed += sum(n for _, n in file_pieces(f.size)[: len(digests)])
        self._remember(f.key, digests)
        return digests

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


def _hash_pieces(f: _File, npieces: int) -> list[bytes]:
    """BLAKE3 of the first ``npieces`` aligned pieces of ``f`` (in a thread).

    Stops early (fewer digests) if the file shrank or changed under us: the
    digests then no longer describe it, and the copies are checked anyway.
    """
    out: list[bytes] = []
    fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _key(os.fstat(fd)) != f.key:
            return out
        for off, length in file_pieces(f.size)[:npieces]:
            data = os.pread(fd, length, off)
            if len(data) != length:
                break
            out.append(hash_chunk(data))
    finally:
        os.close(fd)
    return out


def _read_checked(
    files: Sequence[_File], table: Sequence[bytes], batch: Sequence[tuple[int, ChunkSource]]
) -> list[tuple[int, bytes]]:
    """Read each planned piece and keep those that are the chunk the table says (in a thread)."""
    fds: dict[int, int] = {}
    out: list[tuple[int, bytes]] = []
    try:
        for i, src in batch:
            fd = fds.get(src.file)
            if fd is None:
                try:
                    fd = os.open(files[src.file].path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    fd = -1  # gone since it was hashed: none of its pieces
                fds[src.file] = fd
            if fd < 0:
                continue
            try:
                data = os.pread(fd, src.length, src.offset)
            except OSError:
                continue
            if len(data) == src.length and verified(table, i, data):
                out.append((i, data))
    finally:
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)
    return out
