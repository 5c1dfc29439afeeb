"""The ChunkStore contract, run against DiskStore and MemoryStore alike,
plus what only one of them has (durability order on disk, crash() in memory)."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import trio
from bitarray import bitarray
from bitarray.util import zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.chunks import chunk_count, hash_chunk
from p2pupdate.errors import DiskFullError, StateFileError
from p2pupdate.shell.fsutil import atomic_write_bytes
from p2pupdate.shell.transfer.memstore import ContentMemo, MemoryStore
from p2pupdate.shell.transfer.store import CHUNK_SIZE, ChunkStore, DiskOps, DiskStore

# Sizes chosen so that the last chunk is short: the edge cases live there.
SIZE = 5 * CHUNK_SIZE + 1234
NCHUNKS = chunk_count(SIZE)


@dataclass(frozen=True)
class Package:
    data: bytes
    package_id: bytes
    hashes: list[bytes]

    def chunk(self, i: int) -> bytes:
        return self.data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]

    def table(self) -> bytes:
        return b"".join(self.hashes)


def make_package(size: int = SIZE, seed: int = 1) -> Package:
    data = random.Random(seed).randbytes(size)
    hashes = [hash_chunk(data[i : i + CHUNK_SIZE]) for i in range(0, size, CHUNK_SIZE)]
    return Package(data, blake3.blake3(data).digest(), hashes)


def bits(nchunks: int, indices: Iterator[int] | list[int] | range) -> bitarray:
    b = zeros(nchunks)
    for i in indices:
        b[i] = 1
    return b


class Harness:
    """One kind of store, with the ways a test reaches behind it."""

    store: ChunkStore

    def restart(self) -> None:
        """What a kill -9 and a restart leave (for a disk: the same files)."""
        raise NotImplementedError

    def corrupt_bitmap(self, package_id: bytes) -> None:
        raise NotImplementedError

    def corrupt_complete(self, package_id: bytes, offset: int) -> None:
        raise NotImplementedError

    def disk_full(self) -> None:
        """No room for anything new."""
        raise NotImplementedError

    def fail_writes_after(self, n: int) -> None:
        raise NotImplementedError


class DiskHarness(Harness):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.free = 1 << 40
        self.writes_left: int | None = None
        self.store = self._open()

    def _pwrite(self, fd: int, data: bytes | memoryview, off: int) -> int:
        if self.writes_left is not None:
            if self.writes_left <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.writes_left -= 1
        return os.pwrite(fd, data, off)

    def _open(self) -> DiskStore:
        ops = DiskOps(pwrite=self._pwrite, free_space=lambda _path: self.free)
        return DiskStore(self.root, ops=ops, free_margin=1024)

    def restart(self) -> None:
        self.store.close()
        self.store = self._open()

    def corrupt_bitmap(self, package_id: bytes) -> None:
        path = self.root / "partial" / f"{package_id.hex()}.bitmap"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(data)

    def corrupt_complete(self, package_id: bytes, offset: int) -> None:
        path = self.root / "cache" / f"{package_id.hex()}.pkg"
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x01]))

    def disk_full(self) -> None:
        self.free = 0

    def fail_writes_after(self, n: int) -> None:
        self.writes_left = n


class MemoryHarness(Harness):
    def __init__(self) -> None:
        self.mem = MemoryStore()
        self.store = self.mem

    def restart(self) -> None:
        self.mem.crash()

    def corrupt_bitmap(self, package_id: bytes) -> None:
        self.mem.flip_byte(package_id, "bitmap", 7)

    def corrupt_complete(self, package_id: bytes, offset: int) -> None:
        self.mem.flip_byte(package_id, "complete", offset)

    def disk_full(self) -> None:
        self.mem.capacity = 0

    def fail_writes_after(self, n: int) -> None:
        self.mem.fail_writes_after = n


@pytest.fixture(params=["disk", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h: Harness = DiskHarness(tmp_path / "store") if request.param == "disk" else MemoryHarness()
    yield h
    h.store.close()


@pytest.fixture
def pkg() -> Package:
    return make_package()


async def write_all(store: ChunkStore, pkg: Package, indices: list[int] | range) -> None:
    for i in indices:
        await store.write_chunk(pkg.package_id, i, pkg.chunk(i))


# -- contract ------------------------------------------------------------------


async def test_round_trip_write_read(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    order = list(range(NCHUNKS))
    random.Random(3).shuffle(order)
    await write_all(s, pkg, order)
    for i in range(NCHUNKS):
        got = await s.read_chunk(pkg.package_id, i, len(pkg.chunk(i)))
        assert got == pkg.chunk(i)
    assert s.list_partial() == [(pkg.package_id, SIZE)]
    assert s.list_complete() == []
    assert not s.has_complete(pkg.package_id)


async def test_read_chunk_into_gives_the_chunks_through_one_reused_buffer(
    harness: Harness, pkg: Package
) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    buf = bytearray(CHUNK_SIZE)
    for when in ("partial", "complete"):
        for i in reversed(range(NCHUNKS)):  # the short last chunk first
            got = await s.read_chunk_into(pkg.package_id, i, len(pkg.chunk(i)), buf)
            assert bytes(got) == pkg.chunk(i), (when, i)
            if isinstance(got, memoryview):  # read from a file: into the buffer given
                assert got.obj is buf
        if when == "partial":
            assert await s.finalize(pkg.package_id, SIZE)


async def test_disk_read_chunk_into_checks_the_buffer_and_short_files(
    tmp_path: Path, pkg: Package
) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    assert await s.finalize(pkg.package_id, SIZE)
    with pytest.raises(ValueError):
        await s.read_chunk_into(pkg.package_id, 0, CHUNK_SIZE, bytearray(100))
    path = s.complete_path(pkg.package_id)
    assert path is not None
    os.truncate(path, CHUNK_SIZE + 5)  # cut short behind our back
    with pytest.raises(StateFileError):
        await s.read_chunk_into(pkg.package_id, 1, CHUNK_SIZE, bytearray(CHUNK_SIZE))
    s.close()


async def test_open_partial_is_idempotent_and_keeps_data(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [2])
    await s.persist(pkg.package_id, bits(NCHUNKS, [2]))
    await s.open_partial(pkg.package_id, SIZE)
    assert await s.read_chunk(pkg.package_id, 2, CHUNK_SIZE) == pkg.chunk(2)
    assert s.load_bitmap(pkg.package_id, NCHUNKS) == bits(NCHUNKS, [2])


async def test_write_rejects_wrong_length_and_index(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    with pytest.raises(ValueError):
        await s.write_chunk(pkg.package_id, 0, pkg.chunk(0)[:-1])
    with pytest.raises(ValueError):
        await s.write_chunk(pkg.package_id, NCHUNKS - 1, pkg.chunk(0))
    with pytest.raises(IndexError):
        await s.write_chunk(pkg.package_id, NCHUNKS, pkg.chunk(0))
    with pytest.raises(IndexError):
        await s.write_chunk(pkg.package_id, -1, pkg.chunk(0))


async def test_write_without_partial_is_an_error(harness: Harness, pkg: Package) -> None:
    with pytest.raises(StateFileError):
        await harness.store.write_chunk(pkg.package_id, 0, pkg.chunk(0))


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33])
async def test_package_id_must_be_32_bytes(harness: Harness, bad: bytes) -> None:
    with pytest.raises(ValueError):
        await harness.store.open_partial(bad, 10)
    with pytest.raises(ValueError):
        harness.store.load_table(bad)


async def test_resume_reloads_the_persisted_bitmap(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    half = range(NCHUNKS // 2)
    await write_all(s, pkg, half)
    await s.persist(pkg.package_id, bits(NCHUNKS, half))
    harness.restart()
    s = harness.store
    assert s.list_partial() == [(pkg.package_id, SIZE)]
    await s.open_partial(pkg.package_id, SIZE)
    have = s.load_bitmap(pkg.package_id, NCHUNKS)
    assert have == bits(NCHUNKS, half)
    for i in half:
        assert await s.read_chunk(pkg.package_id, i, CHUNK_SIZE) == pkg.chunk(i)


async def test_load_bitmap_with_wrong_chunk_count_is_none(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await s.persist(pkg.package_id, bits(NCHUNKS, [0]))
    assert s.load_bitmap(pkg.package_id, NCHUNKS + 1) is None


async def test_persist_rejects_wrong_bitmap_length(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    with pytest.raises(ValueError):
        await s.persist(pkg.package_id, zeros(NCHUNKS - 1))
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None


async def test_corrupt_bitmap_is_treated_as_missing(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [0, 1])
    await s.persist(pkg.package_id, bits(NCHUNKS, [0, 1]))
    harness.corrupt_bitmap(pkg.package_id)
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None


async def test_scan_unclaimed_finds_written_unpersisted_chunks(
    harness: Harness, pkg: Package
) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [0, 1, 3, NCHUNKS - 1])
    claimed = bits(NCHUNKS, [0])
    await s.persist(pkg.package_id, claimed)
    # Chunk 2 holds bytes that are not the table's: never returned.
    await s.write_chunk(pkg.package_id, 2, make_package(seed=9).chunk(2))
    found = await s.scan_unclaimed(pkg.package_id, pkg.hashes, claimed, SIZE)
    assert found == [1, 3, NCHUNKS - 1]


async def test_scan_unclaimed_matches_a_chunk_of_zeros(harness: Harness) -> None:
    data = bytes(CHUNK_SIZE) + random.Random(5).randbytes(100)
    hashes = [hash_chunk(data[:CHUNK_SIZE]), hash_chunk(data[CHUNK_SIZE:])]
    pid = blake3.blake3(data).digest()
    s = harness.store
    await s.open_partial(pid, len(data))
    # Nothing written: chunk 0 is zeros, and zeros are its content.
    assert await s.scan_unclaimed(pid, hashes, zeros(2), len(data)) == [0]


async def test_scan_unclaimed_without_partial_is_empty(harness: Harness, pkg: Package) -> None:
    found = await harness.store.scan_unclaimed(pkg.package_id, pkg.hashes, zeros(NCHUNKS), SIZE)
    assert found == []


async def test_scan_unclaimed_rejects_mismatched_table(harness: Harness, pkg: Package) -> None:
    await harness.store.open_partial(pkg.package_id, SIZE)
    with pytest.raises(ValueError):
        await harness.store.scan_unclaimed(pkg.package_id, pkg.hashes[:-1], zeros(NCHUNKS), SIZE)


async def test_finalize_moves_a_verified_package_into_the_cache(
    harness: Harness, pkg: Package, tmp_path: Path
) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    await s.persist(pkg.package_id, bits(NCHUNKS, range(NCHUNKS)))
    assert await s.finalize(pkg.package_id, SIZE)
    assert s.has_complete(pkg.package_id)
    assert s.list_partial() == []
    assert s.list_complete() == [(pkg.package_id, SIZE)]
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    last = NCHUNKS - 1
    assert await s.read_chunk(pkg.package_id, last, SIZE % CHUNK_SIZE) == pkg.chunk(last)
    out = tmp_path / "export"
    out.mkdir()
    assert (await s.export(pkg.package_id, out)).read_bytes() == pkg.data
    assert await s.verify_complete(pkg.package_id)
    # Finalizing again (a restart after the rename) is not a failure.
    assert await s.finalize(pkg.package_id, SIZE)
    harness.restart()
    assert harness.store.list_complete() == [(pkg.package_id, SIZE)]
    assert await harness.store.verify_complete(pkg.package_id)


async def test_finalize_with_a_wrong_byte_returns_false(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    bad = bytearray(pkg.chunk(3))
    bad[100] ^= 0x40
    await s.write_chunk(pkg.package_id, 3, bytes(bad))
    assert not await s.finalize(pkg.package_id, SIZE)
    assert not s.has_complete(pkg.package_id)
    # The partial stays for a rescan, which spots exactly the bad chunk.
    assert s.list_partial() == [(pkg.package_id, SIZE)]
    found = await s.scan_unclaimed(pkg.package_id, pkg.hashes, zeros(NCHUNKS), SIZE)
    assert found == [i for i in range(NCHUNKS) if i != 3]
    await s.write_chunk(pkg.package_id, 3, pkg.chunk(3))
    assert await s.finalize(pkg.package_id, SIZE)


async def test_verify_complete_drops_a_corrupt_cache_file(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    assert await s.finalize(pkg.package_id, SIZE)
    assert await s.read_chunk(pkg.package_id, 1, CHUNK_SIZE) == pkg.chunk(1)
    harness.corrupt_complete(pkg.package_id, CHUNK_SIZE + 17)
    assert not await s.verify_complete(pkg.package_id)
    assert not s.has_complete(pkg.package_id)
    assert s.list_complete() == []
    assert not await s.verify_complete(pkg.package_id)
    with pytest.raises(StateFileError):
        await s.read_chunk(pkg.package_id, 1, CHUNK_SIZE)


async def test_full_disk_refuses_the_partial_and_claims_nothing(
    harness: Harness, pkg: Package
) -> None:
    harness.disk_full()
    s = harness.store
    with pytest.raises(DiskFullError, match="space"):
        await s.open_partial(pkg.package_id, SIZE)
    assert s.list_partial() == []
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    with pytest.raises(StateFileError):
        await s.write_chunk(pkg.package_id, 0, pkg.chunk(0))


async def test_write_enospc_is_disk_full_and_claims_nothing(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    harness.fail_writes_after(2)
    await write_all(s, pkg, [0, 1])
    with pytest.raises(DiskFullError, match="disk full"):
        await s.write_chunk(pkg.package_id, 2, pkg.chunk(2))
    # The caller persists only what was written; the bitmap claims that much.
    await s.persist(pkg.package_id, bits(NCHUNKS, [0, 1]))
    harness.restart()
    assert harness.store.load_bitmap(pkg.package_id, NCHUNKS) == bits(NCHUNKS, [0, 1])


async def test_remove_forgets_partial_complete_and_table(harness: Harness, pkg: Package) -> None:
    s = harness.store
    other = make_package(seed=2)
    for p in (pkg, other):
        await s.open_partial(p.package_id, SIZE)
        s.save_table(p.package_id, p.table())
    await write_all(s, other, range(NCHUNKS))
    assert await s.finalize(other.package_id, SIZE)
    await s.persist(pkg.package_id, zeros(NCHUNKS))
    await s.remove(pkg.package_id)
    await s.remove(other.package_id)
    await s.remove(other.package_id)  # idempotent
    assert s.list_partial() == []
    assert s.list_complete() == []
    assert s.load_table(pkg.package_id) is None
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    harness.restart()
    assert harness.store.list_partial() == []
    assert harness.store.list_complete() == []


async def test_add_complete_file(harness: Harness, pkg: Package, tmp_path: Path) -> None:
    src = tmp_path / "release.bin"
    src.write_bytes(pkg.data)
    s = harness.store
    await s.add_complete_file(pkg.package_id, src)
    await s.add_complete_file(pkg.package_id, src)  # idempotent
    assert s.list_complete() == [(pkg.package_id, SIZE)]
    assert await s.read_chunk(pkg.package_id, 4, CHUNK_SIZE) == pkg.chunk(4)
    assert await s.verify_complete(pkg.package_id)
    # The store holds its own copy: editing the original does not reach it.
    src.write_bytes(b"changed")
    assert await s.verify_complete(pkg.package_id)


async def test_add_complete_file_refuses_a_file_with_another_hash(
    harness: Harness, pkg: Package, tmp_path: Path
) -> None:
    src = tmp_path / "release.bin"
    src.write_bytes(pkg.data[:-1] + b"!")
    with pytest.raises(ValueError, match="hash"):
        await harness.store.add_complete_file(pkg.package_id, src)
    assert harness.store.list_complete() == []


async def test_table_round_trip(harness: Harness, pkg: Package) -> None:
    s = harness.store
    assert s.load_table(pkg.package_id) is None
    s.save_table(pkg.package_id, pkg.table())
    harness.restart()
    assert harness.store.load_table(pkg.package_id) == pkg.table()
    with pytest.raises(ValueError):
        harness.store.save_table(pkg.package_id, b"\x00" * 33)


async def test_empty_package(harness: Harness) -> None:
    pid = blake3.blake3(b"").digest()
    s = harness.store
    await s.open_partial(pid, 0)
    await s.persist(pid, zeros(0))
    assert await s.scan_unclaimed(pid, [], zeros(0), 0) == []
    assert await s.finalize(pid, 0)
    assert s.list_complete() == [(pid, 0)]
    assert await s.verify_complete(pid)


# -- disk only -------------------------------------------------------------------


async def test_persist_fsyncs_data_before_writing_the_bitmap(tmp_path: Path, pkg: Package) -> None:
    events: list[tuple[str, str]] = []
    part_ino: list[int] = []

    def fsync(fd: int) -> None:
        os.fsync(fd)
        kind = "part" if os.fstat(fd).st_ino in part_ino else "other"
        events.append(("fsync", kind))

    def atomic_write(path: Path, data: bytes) -> None:
        events.append(("bitmap" if path.suffix == ".bitmap" else "write", path.suffix))
        atomic_write_bytes(path, data)

    s = DiskStore(tmp_path, ops=DiskOps(fsync=fsync, atomic_write=atomic_write), free_margin=0)
    await s.open_partial(pkg.package_id, SIZE)
    part_ino.append((tmp_path / "partial" / f"{pkg.package_id.hex()}.part").stat().st_ino)
    await write_all(s, pkg, [0, 1])
    events.clear()
    await s.persist(pkg.package_id, bits(NCHUNKS, [0, 1]))
    assert events == [("fsync", "part"), ("bitmap", ".bitmap")]
    s.close()


async def test_a_failed_data_fsync_writes_no_bitmap(tmp_path: Path, pkg: Package) -> None:
    fail = [False]

    def fsync(fd: int) -> None:
        if fail[0]:
            raise OSError(errno.ENOSPC, "no space")
        os.fsync(fd)

    s = DiskStore(tmp_path, ops=DiskOps(fsync=fsync), free_margin=0)
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [0])
    fail[0] = True
    with pytest.raises(DiskFullError):
        await s.persist(pkg.package_id, bits(NCHUNKS, [0]))
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    s.close()


async def test_free_space_check_counts_the_margin(tmp_path: Path, pkg: Package) -> None:
    s = DiskStore(tmp_path, ops=DiskOps(free_space=lambda _p: SIZE + 99), free_margin=100)
    with pytest.raises(DiskFullError, match=f"{SIZE + 100}"):
        await s.open_partial(pkg.package_id, SIZE)
    assert not (tmp_path / "partial" / f"{pkg.package_id.hex()}.part").exists()
    s.close()


async def test_preallocation_enospc_removes_the_new_file(tmp_path: Path, pkg: Package) -> None:
    """The free-space check passed, then the filesystem ran out anyway."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "no space")

    s = DiskStore(tmp_path, ops=DiskOps(fsync=fsync), free_margin=0)
    with pytest.raises(DiskFullError, match="preallocating"):
        await s.open_partial(pkg.package_id, SIZE)
    assert s.list_partial() == []
    s.close()


async def test_disk_layout_and_paths(tmp_path: Path, pkg: Package) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    await s.open_partial(pkg.package_id, SIZE)
    await s.persist(pkg.package_id, zeros(NCHUNKS))
    s.save_table(pkg.package_id, pkg.table())
    hex_id = pkg.package_id.hex()
    part = tmp_path / "partial" / f"{hex_id}.part"
    assert part.stat().st_size == SIZE
    assert (tmp_path / "partial" / f"{hex_id}.bitmap").is_file()
    assert (tmp_path / "tables" / f"{hex_id}.table").read_bytes() == pkg.table()
    assert s.complete_path(pkg.package_id) is None
    await write_all(s, pkg, range(NCHUNKS))
    assert await s.finalize(pkg.package_id, SIZE)
    cache = tmp_path / "cache" / f"{hex_id}.pkg"
    assert s.complete_path(pkg.package_id) == cache
    assert await s.export(pkg.package_id, tmp_path) == cache
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == []
    s.close()


async def test_restart_cleans_leftovers_and_ignores_strangers(tmp_path: Path, pkg: Package) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    s.close()
    hex_id = pkg.package_id.hex()
    (tmp_path / "partial" / f".{hex_id}.bitmap.1234abcd.tmp").write_bytes(b"x")
    (tmp_path / "partial" / f"{hex_id}.bitmap").write_bytes(b"orphan")
    (tmp_path / "cache" / "notes.pkg").write_bytes(b"x")
    (tmp_path / "cache" / f"{hex_id.upper()}.pkg").write_bytes(b"x")
    s = DiskStore(tmp_path, free_margin=0)
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == []
    assert s.list_complete() == []
    s.close()


async def test_partial_of_the_wrong_size_is_resized_and_its_bitmap_dropped(
    tmp_path: Path, pkg: Package
) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [0])
    await s.persist(pkg.package_id, bits(NCHUNKS, [0]))
    s.close()
    part = tmp_path / "partial" / f"{pkg.package_id.hex()}.part"
    os.truncate(part, CHUNK_SIZE + 5)  # as if cut short behind our back
    s = DiskStore(tmp_path, free_margin=0)
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    await s.open_partial(pkg.package_id, SIZE)
    assert part.stat().st_size == SIZE
    assert s.load_bitmap(pkg.package_id, NCHUNKS) is None
    assert await s.scan_unclaimed(pkg.package_id, pkg.hashes, zeros(NCHUNKS), SIZE) == [0]
    s.close()


async def test_verify_complete_drops_a_directory_squatting_the_cache_file(
    tmp_path: Path, pkg: Package
) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    (tmp_path / "cache" / f"{pkg.package_id.hex()}.pkg").mkdir()
    assert not await s.verify_complete(pkg.package_id)
    assert not (tmp_path / "cache" / f"{pkg.package_id.hex()}.pkg").exists()
    s.close()


async def test_truncated_table_file_is_missing(tmp_path: Path, pkg: Package) -> None:
    s = DiskStore(tmp_path, free_margin=0)
    s.save_table(pkg.package_id, pkg.table())
    path = tmp_path / "tables" / f"{pkg.package_id.hex()}.table"
    path.write_bytes(path.read_bytes()[:-1])
    assert s.load_table(pkg.package_id) is None
    s.close()


# -- memory only -----------------------------------------------------------------


async def test_memory_crash_drops_what_was_not_persisted(pkg: Package) -> None:
    s = MemoryStore()
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, [0, 1])
    await s.persist(pkg.package_id, bits(NCHUNKS, [0, 1]))
    await write_all(s, pkg, [2, 3])
    await s.persist(pkg.package_id, bits(NCHUNKS, [0, 1, 2]))  # 3 was written, not claimed
    await write_all(s, pkg, [4])
    s.crash()
    assert s.load_bitmap(pkg.package_id, NCHUNKS) == bits(NCHUNKS, [0, 1, 2])
    have = bits(NCHUNKS, [0, 1, 2])
    # 3 was made durable by the last persist (after it was written); 4 was not.
    assert await s.scan_unclaimed(pkg.package_id, pkg.hashes, have, SIZE) == [3]
    assert await s.read_chunk(pkg.package_id, 4, CHUNK_SIZE) == bytes(CHUNK_SIZE)


async def test_memory_crash_with_rng_keeps_some_unpersisted_chunks() -> None:
    pkg = make_package(64 * CHUNK_SIZE)
    n = len(pkg.hashes)
    s = MemoryStore()
    await s.open_partial(pkg.package_id, len(pkg.data))
    await write_all(s, pkg, range(n))
    s.crash(random.Random(4))
    found = await s.scan_unclaimed(pkg.package_id, pkg.hashes, zeros(n), len(pkg.data))
    assert 0 < len(found) < n
    for i in range(n):
        got = await s.read_chunk(pkg.package_id, i, CHUNK_SIZE)
        assert got == (pkg.chunk(i) if i in found else bytes(CHUNK_SIZE))


async def test_memory_store_shares_chunk_objects_and_memo_skips_rehash(pkg: Package) -> None:
    memo = ContentMemo()
    a, b = MemoryStore(memo=memo), MemoryStore(memo=memo)
    chunks = [pkg.chunk(i) for i in range(NCHUNKS)]
    a.add_complete_chunks(pkg.package_id, chunks)
    assert memo.knows(pkg.package_id, chunks)
    await b.open_partial(pkg.package_id, SIZE)
    for i in range(NCHUNKS):
        await b.write_chunk(
            pkg.package_id, i, await a.read_chunk(pkg.package_id, i, len(chunks[i]))
        )
    assert await b.finalize(pkg.package_id, SIZE)
    assert await b.read_chunk(pkg.package_id, 0, CHUNK_SIZE) is chunks[0]
    # A copy of a chunk is not the same object: hashed for real, still correct.
    copies = [bytes(bytearray(c)) for c in chunks]
    assert not memo.knows(pkg.package_id, copies)
    c = MemoryStore(memo=memo)
    c.add_complete_chunks(pkg.package_id, copies)
    assert await c.verify_complete(pkg.package_id)


async def test_memory_capacity_counts_everything_stored(pkg: Package) -> None:
    s = MemoryStore(capacity=SIZE + 10)
    await s.open_partial(pkg.package_id, SIZE)
    with pytest.raises(DiskFullError):
        await s.open_partial(make_package(seed=7).package_id, SIZE)
    assert s.list_partial() == [(pkg.package_id, SIZE)]


async def test_read_chunk_rejects_bad_index(harness: Harness, pkg: Package) -> None:
    s = harness.store
    await s.open_partial(pkg.package_id, SIZE)
    await write_all(s, pkg, range(NCHUNKS))
    assert await s.finalize(pkg.package_id, SIZE)
    with pytest.raises((ValueError, IndexError)):
        await s.read_chunk(pkg.package_id, -1, CHUNK_SIZE)
    with pytest.raises((ValueError, IndexError, StateFileError)):
        await s.read_chunk(pkg.package_id, NCHUNKS, CHUNK_SIZE)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, NCHUNKS - 1)),
        st.tuples(st.just("persist"), st.just(0)),
        st.tuples(st.just("crash"), st.integers(0, 2**32)),
    ),
    max_size=40,
)
_PKG = make_package()


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_memory_crash_model_never_claims_a_lost_chunk(ops: list[tuple[str, int]]) -> None:
    """Whatever the interleaving, after a crash the bitmap is the last persisted
    snapshot and every chunk it claims reads back intact."""
    pkg = _PKG

    async def run() -> None:
        s = MemoryStore()
        await s.open_partial(pkg.package_id, SIZE)
        have = zeros(NCHUNKS)
        persisted = None
        for op, arg in ops:
            if op == "write":
                await s.write_chunk(pkg.package_id, arg, pkg.chunk(arg))
                have[arg] = 1
            elif op == "persist":
                await s.persist(pkg.package_id, have.copy())
                persisted = have.copy()
            else:
                s.crash(random.Random(arg))
                loaded = s.load_bitmap(pkg.package_id, NCHUNKS)
                assert loaded == persisted
                have = loaded.copy() if loaded is not None else zeros(NCHUNKS)
                for i in have.search(1):
                    got = await s.read_chunk(pkg.package_id, i, len(pkg.chunk(i)))
                    assert got == pkg.chunk(i)
                for i in await s.scan_unclaimed(pkg.package_id, pkg.hashes, have, SIZE):
                    have[i] = 1

    trio.run(run)
