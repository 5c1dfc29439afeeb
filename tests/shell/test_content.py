"""hash_file: the two-thread, bounded-memory file hasher matches the pure computation."""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.chunks import ChunkHasher, ContentInfo
from p2pupdate.errors import UsageError
from p2pupdate.shell.transfer.content import DEFAULT_BUFFER_SIZE, hash_file, hash_file_async

CS = 65536


def reference(data: bytes) -> ContentInfo:
    """Independent of hash_file: the pure streaming hasher plus plain blake3 calls."""
    h = ChunkHasher()
    h.feed_whole(data)
    info = h.finish()
    assert info.package_id == blake3.blake3(data).digest()
    assert list(info.chunk_hashes) == [
        blake3.blake3(data[i : i + CS]).digest() for i in range(0, len(data), CS)
    ]
    return info


def write(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    info = hash_file(path)
    assert info == reference(b"")
    assert info.nchunks == 0 and info.size == 0


@pytest.mark.parametrize("size", [1, CS - 1, CS, CS + 1, 5 * CS + 17])
def test_small_files(tmp_path: Path, size: int) -> None:
    path = tmp_path / "pkg"
    data = write(path, size, seed=size)
    assert hash_file(path) == reference(data)


def test_file_larger_than_the_buffer(tmp_path: Path) -> None:
    size = 3 * DEFAULT_BUFFER_SIZE + 5 * CS + 123  # several buffers, then a short one
    path = tmp_path / "pkg"
    data = write(path, size, seed=1)
    assert hash_file(path) == reference(data)


@pytest.mark.parametrize(
    ("size", "buffer_chunks"),
    [
        (4 * CS, 1),  # exactly fills buffers: the last read returns 0 bytes
        (4 * CS + 1, 1),
        (40 * CS - 1, 3),  # many buffers through a ring of three
        (7 * CS, 2),
        (CS // 2, 4),  # one partial buffer
    ],
)
def test_small_buffers(tmp_path: Path, size: int, buffer_chunks: int) -> None:
    path = tmp_path / "pkg"
    data = write(path, size, seed=size)
    assert hash_file(path, buffer_size=buffer_chunks * CS) == reference(data)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(0, 12 * CS + 5), buffer_chunks=st.integers(1, 4), seed=st.integers(0, 99))
def test_any_size_any_buffer(tmp_path: Path, size: int, buffer_chunks: int, seed: int) -> None:
    path = tmp_path / "pkg"
    data = write(path, size, seed)
    assert hash_file(path, buffer_size=buffer_chunks * CS) == reference(data)


def test_buffer_size_must_be_whole_chunks(tmp_path: Path) -> None:
    path = tmp_path / "pkg"
    write(path, 10)
    for bad in (0, -CS, CS + 1, 1000):
        with pytest.raises(ValueError):
            hash_file(path, buffer_size=bad)


def test_larger_than_max_package_size(tmp_path: Path) -> None:
    path = tmp_path / "pkg"
    write(path, 3 * CS + 1)
    limits = Limits(max_package_size=3 * CS)
    with pytest.raises(UsageError, match="larger than the maximum package size"):
        hash_file(path, limits, buffer_size=CS)
    assert hash_file(path, Limits(max_package_size=3 * CS + 1)).size == 3 * CS + 1


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        hash_file(tmp_path)


def test_no_threads_left_behind(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "pkg"
    write(path, 9 * CS)
    before = threading.active_count()
    hash_file(path, buffer_size=CS)
    with pytest.raises(UsageError):
        hash_file(path, Limits(max_package_size=CS), buffer_size=CS)
    assert threading.active_count() == before


async def test_hash_file_async(tmp_path: Path) -> None:
    path = tmp_path / "pkg"
    data = write(path, 2 * CS + 3)
    assert await hash_file_async(path) == reference(data)
    with pytest.raises(UsageError):
        await hash_file_async(path, Limits(max_package_size=CS))
