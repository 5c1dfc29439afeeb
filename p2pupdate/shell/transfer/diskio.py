"""The file primitives under :class:`~p2pupdate.shell.transfer.store.DiskStore`.

What it does
    :class:`DiskOps` bundles the calls whose failures and order matter (``pwrite``,
    ``fsync``, the atomic replace, free space), so tests can inject a full disk or record
    the order of durability steps. The functions write and read whole ranges
    (:func:`pwrite_all`, :func:`pread_exact`), create a preallocated partial file
    (:func:`create_partial`), copy a file into the cache only if it hashes to its package
    id (:func:`copy_verified`), find the chunks of a partial file that already match the
    table (:func:`scan_batch`) and list the package files of a directory (:func:`ids_in`).

What it does not do
    Know the store's layout or its locks: every path is given by the caller. The blocking
    ones are meant to run in a worker thread, as DiskStore does.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.chunks import HASH_LEN, chunk_length, hash_chunk
from p2pupdate.errors import StateFileError
from p2pupdate.shell.filehash import hash_file
from p2pupdate.shell.fsutil import atomic_write_bytes, fsync_dir

__all__ = [
    "DiskOps",
    "copy_verified",
    "create_partial",
    "ids_in",
    "is_disk_full",
    "pread_exact",
    "pwrite_all",
    "scan_batch",
    "statvfs_free_space",
    "unlink_any",
]

CHUNK_SIZE = DEFAULT_LIMITS.chunk_size
_ZERO_CHUNK = memoryview(bytes(CHUNK_SIZE))


def statvfs_free_space(directory: Path) -> int:
    """Bytes an unprivileged writer can still use on ``directory``'s filesystem."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class DiskOps:
    """The disk primitives DiskStore goes through, injectable for fault and order tests.

    ``pwrite`` can raise ENOSPC to simulate a full disk mid-download,
    ``free_space`` can report a full disk without filling one, and wrapping
    ``fsync`` and ``atomic_write`` records the order of durability steps.
    """

    pwrite: Callable[[int, bytes | memoryview, int], int] = os.pwrite
    fsync: Callable[[int], None] = os.fsync
    atomic_write: Callable[[Path, bytes], None] = atomic_write_bytes
    free_space: Callable[[Path], int] = statvfs_free_space


def is_disk_full(exc: OSError) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def pwrite_all(
    pwrite: Callable[[int, bytes | memoryview, int], int],
    fd: int,
    data: bytes | memoryview,
    off: int,
) -> None:
    """Write all of ``data`` at ``off`` (a short write is continued)."""
    view = memoryview(data)
    while view:
        n = pwrite(fd, view, off)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[n:]
        off += n


def pread_exact(fd: int, length: int, off: int) -> bytes:
    """Read exactly ``length`` bytes at ``off``; StateFileError if the file ends first."""
    data = os.pread(fd, length, off)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, off + got)
        if not more:
            raise StateFileError(f"short read: wanted {length} bytes at {off}, file ends")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def create_partial(ops: DiskOps, path: Path, size: int) -> None:
    """Create or resize the partial file to ``size`` bytes, preallocated (blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
        if size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if is_disk_full(exc):
                    raise
                # A filesystem without fallocate: a sparse file; a later
                # ENOSPC then surfaces from write_chunk as DiskFullError.
                os.ftruncate(fd, size)
        ops.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def copy_verified(ops: DiskOps, package_id: bytes, src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` durably if it hashes to ``package_id`` (blocking): through
    a temporary file renamed into place, so ``dest`` is never a partial copy."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:

            def write(block: memoryview, offset: int) -> None:
                pwrite_all(ops.pwrite, fd, block, offset)

            digest, _ = hash_file(src, sink=write)
            ops.fsync(fd)
        finally:
            os.close(fd)
        if digest != package_id:
            raise ValueError(f"{src} does not hash to package id {package_id.hex()}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def ids_in(directory: Path, suffix: str) -> list[tuple[bytes, int]]:
    """(package id, file size) of every ``<hex id><suffix>`` file in ``directory``."""
    out: list[tuple[bytes, int]] = []
    for p in sorted(directory.glob(f"*{suffix}")):
        stem = p.name[: -len(suffix)]
        if len(stem) != 2 * HASH_LEN:
            continue
        try:
            pid = bytes.fromhex(stem)
            size = p.stat().st_size
        except (ValueError, FileNotFoundError):
            continue
        if stem == pid.hex():
            out.append((pid, size))
    return out


def unlink_any(path: Path) -> None:
    """Remove a file (or a directory squatting where a file belongs)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path)


def scan_batch(fd: int, size: int, chunk_hashes: Sequence[bytes], indices: list[int]) -> list[int]:
    """Those of ``indices`` whose bytes in the file match the table (blocking)."""
    buf = bytearray(CHUNK_SIZE)
    zero_hashes: dict[int, bytes] = {}
    found: list[int] = []
    for i in indices:
        length = chunk_length(size, i)
        view = memoryview(buf)[:length]
        got = os.preadv(fd, [view], i * CHUNK_SIZE)
        if got != length:
            continue
        if view == _ZERO_CHUNK[:length]:
            # Never written (preallocated zeros) unless the real chunk is zeros:
            # one hash per distinct length instead of one per chunk.
            zh = zero_hashes.get(length)
            if zh is None:
                zh = zero_hashes[length] = hash_chunk(_ZERO_CHUNK[:length])
            if zh == chunk_hashes[i]:
                found.append(i)
        elif hash_chunk(view) == chunk_hashes[i]:
            found.append(i)
    return found
