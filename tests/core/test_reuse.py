"""Local chunk reuse decisions: file pieces, the hashing budget, what a piece fills."""

from __future__ import annotations

import pytest
from bitarray import bitarray
from bitarray.util import zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.chunks import hash_chunk
from p2pupdate.core.reuse import Wanted, file_pieces, may_hold_chunks, select_files, verified

C = 16  # a small chunk size keeps the examples readable


def chunks_of(data: bytes, size: int = C) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_file_pieces_cut_like_a_package() -> None:
    assert file_pieces(0, C) == []
    assert file_pieces(16, C) == [(0, 16)]
    assert file_pieces(40, C) == [(0, 16), (16, 16), (32, 8)]
    with pytest.raises(ValueError):
        file_pieces(-1, C)


def test_only_files_that_can_hold_a_chunk_are_looked_at() -> None:
    # A 40-byte package: chunks of 16, 16 and 8 bytes.
    assert may_hold_chunks(16, 40, C) and may_hold_chunks(1000, 40, C)
    assert may_hold_chunks(8, 40, C)  # as long as the short last chunk
    assert not may_hold_chunks(7, 40, C) and not may_hold_chunks(9, 40, C)
    assert not may_hold_chunks(0, 40, C) and not may_hold_chunks(16, 0, C)
    assert may_hold_chunks(15, 32 + 15, C) and not may_hold_chunks(15, 32, C)


def test_select_files_spends_the_budget_in_order() -> None:
    # 3 pieces, empty (skipped), 5 pieces of which 2 fit, then nothing.
    assert select_files([40, 0, 80, 16], budget=5, chunk_size=C) == [(0, 3), (2, 2)]
    assert select_files([40], budget=0, chunk_size=C) == []
    assert select_files([16, 16], budget=10, chunk_size=C) == [(0, 1), (1, 1)]


def fill(wanted: Wanted, files: list[bytes]) -> dict[int, bytes]:
    """What the shell does: offer every piece of every file; chunk -> bytes written."""
    out: dict[int, bytes] = {}
    for data in files:
        for off, length in file_pieces(len(data), C):
            piece = data[off : off + length]
            for i in wanted.take(hash_chunk(piece), length):
                out[i] = piece
    return out


def test_only_missing_chunks_found_locally_are_filled() -> None:
    old = bytes(range(64))  # 4 chunks
    new = old[:16] + b"X" * 16 + old[32:]  # chunk 1 changed
    table = [hash_chunk(c) for c in chunks_of(new)]
    wanted = Wanted(table, bitarray("0001"), len(new), C)  # chunk 3 already downloaded
    assert len(wanted) == 3
    assert fill(wanted, [old]) == {0: old[:16], 2: old[32:48]}
    assert len(wanted) == 1 and wanted.wants(table[1], 16)


def test_chunks_that_moved_or_repeat_are_found_in_any_file() -> None:
    a, b = b"A" * 16, b"B" * 16
    new = b + a + a + b"tail"
    table = [hash_chunk(c) for c in chunks_of(new)]
    wanted = Wanted(table, zeros(4), len(new), C)
    got = fill(wanted, [a + b"Z" * 16, b"Q" * 16 + b])
    assert got == {0: b, 1: a, 2: a}  # one piece fills both copies of chunk "A"
    assert len(wanted) == 1


def test_a_piece_fills_only_chunks_of_its_own_length() -> None:
    full = b"F" * 16
    table = [hash_chunk(full)]
    wanted = Wanted(table, zeros(1), 16, C)
    assert wanted.take(hash_chunk(full), 8) == []  # same hash claimed for 8 bytes: refused
    assert wanted.take(hash_chunk(full), 16) == [0]
    assert wanted.take(hash_chunk(full), 16) == []  # handed out once


def test_put_back_makes_chunks_wanted_again() -> None:
    table = [hash_chunk(b"a" * 16)] * 2
    wanted = Wanted(table, zeros(2), 32, C)
    assert wanted.digests() == frozenset({table[0]})
    taken = wanted.take(table[0], 16)
    assert taken == [0, 1] and len(wanted) == 0 and not wanted.digests()
    wanted.put_back(table[0], 16, taken)
    assert len(wanted) == 2 and wanted.take(table[0], 16) == [0, 1]


def test_wanted_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError):
        Wanted([hash_chunk(b"a")], zeros(2), 16, C)


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
def test_filled_are_exactly_the_missing_chunks_whose_bytes_exist_locally(
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
    wanted = Wanted(table, have, len(new_b), C)
    got = fill(wanted, [old])
    # Exactly the missing chunks whose bytes are a piece of the old file ...
    assert sorted(got) == [i for i, c in enumerate(pieces) if not have[i] and c in local]
    # ... each filled with bytes the table vouches for ...
    assert all(verified(table, i, data) for i, data in got.items())
    # ... and the rest still wanted.
    assert len(wanted) == (~have).count() - len(got)


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
