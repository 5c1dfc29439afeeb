"""Local chunk reuse decisions: file pieces, the bounded index, the copy plan."""

from __future__ import annotations

import pytest
from bitarray import bitarray
from bitarray.util import zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.chunks import hash_chunk
from p2pupdate.core.reuse import (
    ChunkSource,
    ReuseIndex,
    file_pieces,
    plan_reuse,
    select_files,
    verified,
)

C = 16  # a small chunk size keeps the examples readable


def chunks_of(data: bytes, size: int = C) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def index_of(files: list[bytes], max_entries: int = 1000) -> ReuseIndex:
    idx = ReuseIndex(max_entries)
    for f, data in enumerate(files):
        for off, length in file_pieces(len(data), C):
            idx.add(hash_chunk(data[off : off + length]), ChunkSource(f, off, length))
    return idx


def test_file_pieces_cut_like_a_package() -> None:
    assert file_pieces(0, C) == []
    assert file_pieces(16, C) == [(0, 16)]
    assert file_pieces(40, C) == [(0, 16), (16, 16), (32, 8)]
    with pytest.raises(ValueError):
        file_pieces(-1, C)


def test_select_files_spends_the_budget_in_order() -> None:
    # 3 pieces, empty (skipped), 5 pieces of which 2 fit, then nothing.
    assert select_files([40, 0, 80, 16], budget=5, chunk_size=C) == [(0, 3), (2, 2)]
    assert select_files([40], budget=0, chunk_size=C) == []
    assert select_files([16, 16], budget=10, chunk_size=C) == [(0, 1), (1, 1)]


def test_plan_copies_only_missing_chunks_found_locally() -> None:
    old = bytes(range(64))  # 4 chunks
    new = old[:16] + b"X" * 16 + old[32:]  # chunk 1 changed
    table = [hash_chunk(c) for c in chunks_of(new)]
    have = bitarray("0001")  # chunk 3 already downloaded
    plan = plan_reuse(table, have, index_of([old]), len(new), C)
    assert plan == [(0, ChunkSource(0, 0, 16)), (2, ChunkSource(0, 32, 16))]


def test_plan_finds_chunks_that_moved_and_in_other_files() -> None:
    a, b = b"A" * 16, b"B" * 16
    new = b + a + b"tail"
    table = [hash_chunk(c) for c in chunks_of(new)]
    plan = plan_reuse(table, zeros(3), index_of([a + b"Z" * 16, b"Q" * 16 + b]), len(new), C)
    assert plan == [(0, ChunkSource(1, 16, 16)), (1, ChunkSource(0, 0, 16))]


def test_a_short_piece_never_stands_in_for_a_full_chunk() -> None:
    # Same hash registered for a short piece (a forged index entry): refused by length.
    full = b"F" * 16
    table = [hash_chunk(full)]
    idx = ReuseIndex(10)
    idx.add(hash_chunk(full), ChunkSource(0, 0, 8))
    assert plan_reuse(table, zeros(1), idx, 16, C) == []


def test_index_is_bounded_and_first_location_wins() -> None:
    idx = ReuseIndex(2)
    h = hash_chunk(b"x")
    assert idx.add(h, ChunkSource(0, 0, 1))
    assert idx.add(h, ChunkSource(1, 0, 1))
    assert idx.full
    assert not idx.add(hash_chunk(b"y"), ChunkSource(2, 0, 1))
    assert idx.get(h) == ChunkSource(0, 0, 1)
    assert idx.get(hash_chunk(b"y")) is None
    with pytest.raises(ValueError):
        idx.add(b"short", ChunkSource(0, 0, 1))
    with pytest.raises(ValueError):
        ReuseIndex(5).add(h, ChunkSource(0, -1, 1))


def test_plan_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError):
        plan_reuse([hash_chunk(b"a")], zeros(2), ReuseIndex(1), 16, C)


def test_verified_checks_the_signed_hash() -> None:
    table = [hash_chunk(b"a" * 16), hash_chunk(b"b" * 4)]
    assert verified(table, 0, b"a" * 16)
    assert not verified(table, 0, b"b" * 16)
    assert not verified(table, 2, b"a" * 16)
    assert verified(table, 1, memoryview(b"b" * 4))


@settings(max_examples=200, deadline=None)
@given(
    old=st.binary(max_size=200),
    edits=st.lists(st.tuples(st.integers(0, 199), st.binary(min_size=1, max_size=20))),
    have_seed=st.integers(0, 2**32),
)
def test_plan_is_exactly_the_missing_chunks_whose_bytes_exist_locally(
    old: bytes, edits: list[tuple[int, bytes]], have_seed: int
) -> None:
    new = bytearray(old)
    for pos, data in edits:
        new[pos : pos + len(data)] = data
    new_b = bytes(new)
    pieces = chunks_of(new_b)
    table = [hash_chunk(c) for c in pieces]
    have = bitarray([(have_seed >> (i % 32)) & 1 == 1 for i in range(len(pieces))])
    local = {old[o : o + n] for o, n in file_pieces(len(old), C)}
    plan = plan_reuse(table, have, index_of([old]), len(new_b), C)
    planned = [i for i, _ in plan]
    # Exactly the missing chunks whose bytes are a piece of the old file ...
    assert planned == [i for i, c in enumerate(pieces) if not have[i] and c in local]
    # ... and each source really holds those bytes.
    for i, src in plan:
        assert verified(table, i, old[src.offset : src.offset + src.length])


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(0, 200)), budget=st.integers(0, 40))
def test_select_files_never_exceeds_the_budget(sizes: list[int], budget: int) -> None:
    picked = select_files(sizes, budget, C)
    assert sum(n for _, n in picked) <= budget
    assert [i for i, _ in picked] == sorted({i for i, _ in picked})
    for i, n in picked:
        assert 0 < n <= len(file_pieces(sizes[i], C))
    # Only the last picked file can be cut short, and only when the budget ran out.
    for i, n in picked[:-1]:
        assert n == len(file_pieces(sizes[i], C))
