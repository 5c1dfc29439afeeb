"""Content addressing: BLAKE3 pinned to the official vectors, chunk boundaries, table pages, root.

The expected values are computed here independently of p2pupdate.core.chunks: plain slicing,
blake3 calls and the domain prefixes written out as the protocol documents them.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.chunks import (
    HASH_LEN,
    PAGE_DOMAIN,
    ROOT_DOMAIN,
    ChunkHasher,
    ContentInfo,
    chunk_count,
    chunk_length,
    hash_chunk,
    page_count,
    page_hash,
    page_hashes,
    page_of_table,
    root_from_page_hashes,
    table_root,
)

CS = 65536
PAGE = 2048
VECTORS = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "blake3_vectors.json").read_text()
)
VECTOR_CASES = [(c["input_len"], bytes.fromhex(c["hash"])) for c in VECTORS["cases"]]


def vector_input(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-per-chunk content (fast to make, any length)."""
    rnd = random.Random(seed)
    return rnd.randbytes(n)


# -- independent computation ---------------------------------------------------------------


def ref_chunk_hashes(data: bytes) -> list[bytes]:
    return [blake3.blake3(data[i : i + CS]).digest() for i in range(0, len(data), CS)]


def ref_page_hashes(hashes: list[bytes], entries: int = PAGE) -> list[bytes]:
    pages = [b"".join(hashes[i : i + entries]) for i in range(0, len(hashes), entries)]
    return [blake3.blake3(b"p2pupdate/table-page/v1\x00" + p).digest() for p in pages]


def ref_root(hashes: list[bytes], entries: int = PAGE) -> bytes:
    return blake3.blake3(
        b"p2pupdate/table-root/v1\x00" + b"".join(ref_page_hashes(hashes, entries))
    ).digest()


def ref_info(data: bytes) -> ContentInfo:
    hashes = ref_chunk_hashes(data)
    return ContentInfo(blake3.blake3(data).digest(), len(data), tuple(hashes), ref_root(hashes))


def hasher_info(data: bytes) -> ContentInfo:
    h = ChunkHasher()
    h.feed_whole(data)
    return h.finish()


# -- BLAKE3 pinned to the published test vectors ---------------------------------------------


def test_vector_fixture_has_the_required_lengths() -> None:
    lengths = {n for n, _ in VECTOR_CASES}
    assert {0, 1, 1023, 1024, 1025, 2048, 31744, 102400} <= lengths


@pytest.mark.parametrize(("n", "expected"), VECTOR_CASES, ids=[str(n) for n, _ in VECTOR_CASES])
def test_hash_chunk_matches_official_vector(n: int, expected: bytes) -> None:
    assert hash_chunk(vector_input(n)) == expected
    assert hash_chunk(memoryview(vector_input(n))) == expected
    assert hash_chunk(bytearray(vector_input(n))) == expected


@pytest.mark.parametrize(("n", "expected"), VECTOR_CASES, ids=[str(n) for n, _ in VECTOR_CASES])
def test_package_id_matches_official_vector(n: int, expected: bytes) -> None:
    data = vector_input(n)
    assert hasher_info(data).package_id == expected
    # fed in odd pieces, the whole-package hash is the same
    h = ChunkHasher()
    for i in range(0, n, 1000):
        h.feed_whole(data[i : i + 1000])
    assert h.finish().package_id == expected
    # and via the explicit package_id path used by the two-thread file hasher
    h2 = ChunkHasher()
    h2.feed(data)
    assert h2.finish(package_id=expected).package_id == expected


# -- chunk geometry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "count"),
    [(0, 0), (1, 1), (CS - 1, 1), (CS, 1), (CS + 1, 2), (2 * CS, 2), (5 * CS + 7, 6)],
)
def test_chunk_count(size: int, count: int) -> None:
    assert chunk_count(size) == count


def test_chunk_length_last_chunk_is_shorter() -> None:
    assert chunk_length(CS + 1, 0) == CS
    assert chunk_length(CS + 1, 1) == 1
    assert chunk_length(2 * CS, 1) == CS
    assert chunk_length(4 * 2**30, 65535) == CS
    for size, index in [(0, 0), (CS, 1), (CS, -1), (CS + 1, 2)]:
        with pytest.raises(IndexError):
            chunk_length(size, index)


@pytest.mark.parametrize(
    ("nchunks", "pages"), [(0, 0), (1, 1), (PAGE - 1, 1), (PAGE, 1), (PAGE + 1, 2), (65536, 32)]
)
def test_page_count(nchunks: int, pages: int) -> None:
    assert page_count(nchunks) == pages


# -- chunk boundaries against the independent computation --------------------------------------

BOUNDARY_SIZES = [0, 1, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, 2 * CS + 1, 3 * CS, 7 * CS + 123]


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_chunk_table_and_root_at_boundaries(size: int) -> None:
    data = pattern(size, seed=size)
    expected = ref_info(data)
    got = hasher_info(data)
    assert got == expected
    assert got.nchunks == chunk_count(size)
    assert [len(h) for h in got.chunk_hashes] == [HASH_LEN] * got.nchunks
    if size:
        assert got.chunk_hashes[-1] == blake3.blake3(data[(got.nchunks - 1) * CS :]).digest()


def test_empty_package_has_zero_chunks_and_fixed_root() -> None:
    info = hasher_info(b"")
    assert info.chunk_hashes == ()
    assert info.size == 0
    assert info.page_hashes() == []
    assert info.package_id == blake3.blake3(b"").digest()
    assert info.root == blake3.blake3(b"p2pupdate/table-root/v1\x00").digest()


def test_domain_prefixes_are_the_documented_ones() -> None:
    assert PAGE_DOMAIN == b"p2pupdate/table-page/v1\x00"
    assert ROOT_DOMAIN == b"p2pupdate/table-root/v1\x00"


def test_full_page_boundary_with_real_content() -> None:
    # 2049 chunks: one full page of 2048 entries plus a page of one short chunk (~128 MiB
    # would be slow to make random; a 251-byte period shifts by 25 bytes per chunk).
    size = PAGE * CS + 10
    unit = bytes(range(251))
    data = (unit * (size // 251 + 1))[:size]
    info = hasher_info(data)
    hashes = ref_chunk_hashes(data)
    assert info.chunk_hashes == tuple(hashes)
    assert len(info.page_hashes()) == 2
    assert info.page_hashes() == ref_page_hashes(hashes)
    assert info.root == ref_root(hashes)
    assert info.package_id == blake3.blake3(data).digest()


# -- table pages (synthetic chunk hashes: pages are about the list, not the bytes) -------------


@pytest.mark.parametrize("n", [0, 1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 2 * PAGE + 1, 3 * PAGE])
def test_pages_and_root_at_page_boundaries(n: int) -> None:
    rnd = random.Random(n)
    hashes = [rnd.randbytes(32) for _ in range(n)]
    expected_pages = ref_page_hashes(hashes)
    assert page_hashes(hashes) == expected_pages
    assert table_root(hashes) == ref_root(hashes)
    assert root_from_page_hashes(expected_pages) == ref_root(hashes)
    assert len(expected_pages) == page_count(n)
    for p in range(page_count(n)):
        page = page_of_table(hashes, p)
        assert page == b"".join(hashes[p * PAGE : (p + 1) * PAGE])
        assert page_hash(page) == expected_pages[p]
        # a page is checked on its own: any change to it changes its hash
        flipped = bytes([page[0] ^ 1]) + page[1:]
        assert page_hash(flipped) != expected_pages[p]


def test_page_size_parameter() -> None:
    hashes = [bytes([i]) * 32 for i in range(10)]
    assert page_hashes(hashes, page_entries=4) == ref_page_hashes(hashes, entries=4)
    assert table_root(hashes, page_entries=4) == ref_root(hashes, entries=4)
    assert page_of_table(hashes, 2, page_entries=4) == hashes[8] + hashes[9]


def test_root_depends_on_page_order() -> None:
    rnd = random.Random(1)
    hashes = [rnd.randbytes(32) for _ in range(2 * PAGE)]
    pages = page_hashes(hashes)
    assert root_from_page_hashes(pages) != root_from_page_hashes(pages[::-1])


# -- ChunkHasher fed in pieces -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    size=st.one_of(
        st.integers(0, 4 * CS + 3),
        st.sampled_from([CS - 1, CS, CS + 1, 2 * CS, 3 * CS - 1]),
    ),
    cuts=st.lists(st.integers(0, 4 * CS + 3), max_size=12),
    seed=st.integers(0, 2**32),
)
def test_hasher_fed_random_pieces_matches(size: int, cuts: list[int], seed: int) -> None:
    data = pattern(size, seed)
    points = sorted({0, size, *(c for c in cuts if c <= size)})
    h = ChunkHasher()
    for a, b in itertools.pairwise(points):
        h.feed_whole(data[a:b])
    assert h.finish() == ref_info(data)
    # chunk-only feeding with the id supplied from outside (what hash_file does)
    h2 = ChunkHasher()
    for a, b in itertools.pairwise(points):
        h2.feed(memoryview(data)[a:b])
    assert h2.finish(package_id=blake3.blake3(data).digest()) == ref_info(data)


@pytest.mark.parametrize("size", [0, 1, 2, 100, CS - 1, CS, CS + 1])
def test_hasher_fed_byte_by_byte(size: int) -> None:
    data = pattern(size, seed=3)
    h = ChunkHasher()
    for i in range(size):
        h.feed_whole(data[i : i + 1])
    assert h.finish() == ref_info(data)


def test_hasher_empty_pieces_change_nothing() -> None:
    data = pattern(CS + 9)
    h = ChunkHasher()
    h.feed_whole(b"")
    h.feed_whole(data[:CS])
    h.feed_whole(b"")
    h.feed_whole(data[CS:])
    h.feed_whole(b"")
    assert h.finish() == ref_info(data)


def test_chunk_hashes_so_far_include_the_partial_chunk() -> None:
    data = pattern(CS + 10)
    h = ChunkHasher()
    h.feed(data)
    assert h.chunk_hashes() == ref_chunk_hashes(data)
    h.feed(b"x")
    assert h.chunk_hashes() == ref_chunk_hashes(data + b"x")


def test_feed_whole_after_feed_is_refused() -> None:
    h = ChunkHasher()
    h.feed(b"abc")
    with pytest.raises(ValueError, match="incomplete"):
        h.feed_whole(b"def")


def test_finish_needs_package_id_after_feed_only() -> None:
    h = ChunkHasher()
    h.feed(b"abc")
    with pytest.raises(ValueError, match="package_id"):
        h.finish()
    # an empty stream needs none: the id of no bytes is known
    assert ChunkHasher().finish().package_id == blake3.blake3(b"").digest()


def test_content_info_properties() -> None:
    info = hasher_info(pattern(3 * CS))
    assert info.nchunks == 3
    assert info.page_hashes() == ref_page_hashes(list(info.chunk_hashes))
