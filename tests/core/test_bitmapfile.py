"""The persisted bitmap: round trips, and every kind of damage is a ValueError."""

from __future__ import annotations

import contextlib

import blake3
import pytest
from bitarray import bitarray
from bitarray.util import ones, zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.bitmapfile import BITMAP_MAGIC, decode_bitmap, encode_bitmap

PID = bytes(range(32))

bitmaps = st.lists(st.booleans(), max_size=300).map(lambda bs: bitarray(bs) if bs else bitarray())


def reseal(body: bytes) -> bytes:
    """A body with a valid checksum, to reach the checks behind it."""
    return body + blake3.blake3(body).digest()


def test_round_trip_and_layout() -> None:
    bits = bitarray("1011000011")
    data = encode_bitmap(PID, bits)
    assert data[:4] == BITMAP_MAGIC and len(data) == 4 + 2 + 32 + 4 + 2 + 32
    assert decode_bitmap(data, package_id=PID, nchunks=10) == bits
    assert decode_bitmap(data) == bits


def test_empty_and_exact_byte_bitmaps() -> None:
    for bits in (zeros(0), ones(8), ones(65536)):
        assert decode_bitmap(encode_bitmap(PID, bits)) == bits


def test_little_endian_input_is_stored_by_value() -> None:
    bits = bitarray("110", endian="little")
    assert decode_bitmap(encode_bitmap(PID, bits)).tolist() == [1, 1, 0]


def test_mismatched_package_or_count_is_refused() -> None:
    data = encode_bitmap(PID, ones(5))
    with pytest.raises(ValueError, match="another package"):
        decode_bitmap(data, package_id=bytes(32))
    with pytest.raises(ValueError, match="expected 6"):
        decode_bitmap(data, nchunks=6)


def test_damage_behind_a_valid_checksum_is_still_caught() -> None:
    good = encode_bitmap(PID, bitarray("101"))[:-32]
    with pytest.raises(ValueError, match="magic"):
        decode_bitmap(reseal(b"XXXX" + good[4:]))
    with pytest.raises(ValueError, match="version"):
        decode_bitmap(reseal(good[:4] + b"\x00\x02" + good[6:]))
    with pytest.raises(ValueError, match="padding"):
        decode_bitmap(reseal(good[:-1] + bytes([good[-1] | 1])))
    with pytest.raises(ValueError, match="bytes of bits"):
        decode_bitmap(reseal(good + b"\x00"))
    with pytest.raises(ValueError, match="bytes of bits"):
        decode_bitmap(reseal(good[:38] + (2**32 - 1).to_bytes(4, "big") + good[42:]))


def test_encode_rejects_a_bad_package_id() -> None:
    with pytest.raises(ValueError):
        encode_bitmap(b"short", ones(3))


@settings(max_examples=200, deadline=None)
@given(bits=bitmaps)
def test_round_trip(bits: bitarray) -> None:
    assert decode_bitmap(encode_bitmap(PID, bits), package_id=PID, nchunks=len(bits)) == bits


@settings(max_examples=200, deadline=None)
@given(bits=bitmaps, data=st.data())
def test_any_single_bit_flip_is_detected(bits: bitarray, data: st.DataObject) -> None:
    raw = bytearray(encode_bitmap(PID, bits))
    pos = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(ValueError):
        decode_bitmap(bytes(raw))


@settings(max_examples=200, deadline=None)
@given(bits=bitmaps, data=st.data())
def test_truncation_and_extension_are_detected(bits: bitarray, data: st.DataObject) -> None:
    raw = encode_bitmap(PID, bits)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ValueError):
        decode_bitmap(raw[:cut])
    with pytest.raises(ValueError):
        decode_bitmap(raw + data.draw(st.binary(min_size=1, max_size=40)))


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_give_a_bitmap_or_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_bitmap(raw)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=120), magic=st.booleans())
def test_resealed_arbitrary_bodies_give_a_bitmap_or_value_error(body: bytes, magic: bool) -> None:
    if magic:
        body = BITMAP_MAGIC + b"\x00\x01" + body
    try:
        bits = decode_bitmap(reseal(body))
    except ValueError:
        return
    assert decode_bitmap(encode_bitmap(body[6:38], bits)) == bits


@settings(max_examples=200, deadline=None)
@given(bits=bitmaps, data=st.data())
def test_any_changed_span_is_detected(bits: bitarray, data: st.DataObject) -> None:
    raw = encode_bitmap(PID, bits)
    start = data.draw(st.integers(0, len(raw) - 1))
    end = data.draw(st.integers(start + 1, len(raw)))
    patch = data.draw(st.binary(min_size=end - start, max_size=end - start))
    damaged = raw[:start] + patch + raw[end:]
    if damaged == raw:
        return
    with pytest.raises(ValueError):
        decode_bitmap(damaged)
