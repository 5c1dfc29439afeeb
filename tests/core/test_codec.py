"""Framing codec: any input gives messages or RemoteProtocolError, and nothing else."""

from __future__ import annotations

import contextlib
import itertools
import random
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.codec import HEADER, FrameDecoder, decode_body, encode, encode_chunk_header
from p2pupdate.core.messages import Bitfield, Chunk, Hello, Message, Ping
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError
from tests.core.message_strategies import any_message, sample_messages

PID = b"\x05" * 32
SAMPLES = sample_messages()
SAMPLE_FRAMES = [encode(m) for m in SAMPLES]


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def feed_all(pieces: list[bytes], limits: Limits = DEFAULT_LIMITS) -> list[Message]:
    dec = FrameDecoder(limits)
    out: list[Message] = []
    for piece in pieces:
        dec.receive_data(piece)
        out.extend(dec.messages())
    return out


# -- framing -----------------------------------------------------------------------------------


def test_frame_layout() -> None:
    data = encode(Ping(7))
    assert data == b"\x00\x00\x00\x03\x92\x0e\x07"  # length 3, then msgpack [14, 7]
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4


def test_whole_stream_at_once() -> None:
    stream = b"".join(SAMPLE_FRAMES)
    assert feed_all([stream]) == SAMPLES


def test_byte_by_byte() -> None:
    stream = b"".join(SAMPLE_FRAMES)
    dec = FrameDecoder()
    out: list[Message] = []
    for i in range(len(stream)):
        dec.receive_data(stream[i : i + 1])
        msg = dec.next_message()
        if msg is not None:
            out.append(msg)
            assert dec.next_message() is None
    assert out == SAMPLES
    assert dec.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_random_splits(messages: list[Message], rnd: random.Random) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted({0, len(stream), *(rnd.randrange(len(stream) + 1) for _ in range(6))})
    pieces = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    assert feed_all(pieces) == messages


def test_trailing_partial_frame_is_kept_for_later() -> None:
    first, second = SAMPLE_FRAMES[0], SAMPLE_FRAMES[1]
    dec = FrameDecoder()
    dec.receive_data(first + second[:5])
    assert dec.next_message() == SAMPLES[0]
    assert dec.next_message() is None
    assert dec.buffered == 5
    dec.receive_data(second[5:])
    assert dec.messages() == [SAMPLES[1]]
    assert dec.buffered == 0


def test_accepts_bytearray_and_memoryview() -> None:
    data = SAMPLE_FRAMES[10]  # the 64 KiB chunk
    dec0 = FrameDecoder()
    dec0.receive_data(bytearray(data))
    assert dec0.messages() == [SAMPLES[10]]
    dec = FrameDecoder()
    dec.receive_data(memoryview(data)[:100])
    dec.receive_data(memoryview(data)[100:])
    assert dec.messages() == [SAMPLES[10]]


def test_decoded_chunk_does_not_alias_the_buffer() -> None:
    dec = FrameDecoder()
    dec.receive_data(SAMPLE_FRAMES[10] + SAMPLE_FRAMES[10][:10])
    msg = dec.next_message()
    assert isinstance(msg, Chunk) and type(msg.data) is bytes
    dec.receive_data(SAMPLE_FRAMES[10][10:])  # grows and shifts the internal buffer
    assert msg == SAMPLES[10]


# -- truncation and extension --------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[type(m).__name__ for m in SAMPLES])
def test_every_truncation_of_a_body_is_rejected(index: int) -> None:
    body = SAMPLE_FRAMES[index][4:]
    step = max(1, len(body) // 600)  # the 64 KiB chunk: sample its prefixes
    for n in [*range(0, len(body), step), len(body) - 1]:
        with pytest.raises(RemoteProtocolError):
            decode_body(body[:n])


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[type(m).__name__ for m in SAMPLES])
def test_every_truncated_frame_waits_for_more(index: int) -> None:
    data = SAMPLE_FRAMES[index]
    step = max(1, len(data) // 600)
    for n in [*range(0, len(data), step), len(data) - 1]:
        dec = FrameDecoder()
        dec.receive_data(data[:n])
        assert dec.next_message() is None
        assert dec.buffered == n


@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=[type(m).__name__ for m in SAMPLES])
def test_every_extension_of_a_body_is_rejected(index: int) -> None:
    body = SAMPLE_FRAMES[index][4:]
    for extra in [bytes([b]) for b in range(256)] + [b"\x00" * 7, body]:
        extended = body + extra
        if len(extended) > DEFAULT_LIMITS.max_frame:
            continue
        with pytest.raises(RemoteProtocolError):
            decode_body(extended)
        with pytest.raises(RemoteProtocolError):
            feed_all([frame(extended)])


def test_frame_length_one_short_is_rejected() -> None:
    # a frame header that claims fewer bytes than the message: the body is truncated
    for data in SAMPLE_FRAMES:
        body = data[4:]
        with pytest.raises(RemoteProtocolError):
            feed_all([frame(body[:-1]) + body[-1:]])


# -- random input ----------------------------------------------------------------------------------


def _only_protocol_errors(pieces: list[bytes]) -> None:
    dec = FrameDecoder()
    try:
        for piece in pieces:
            dec.receive_data(piece)
            for msg in dec.messages():
                assert isinstance(msg, Message)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # and the error is sticky
            dec.next_message()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_bytes_give_only_protocol_errors(pieces: list[bytes]) -> None:
    _only_protocol_errors(pieces)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bodies_give_only_protocol_errors(body: bytes) -> None:
    _only_protocol_errors([frame(body)])
    with contextlib.suppress(RemoteProtocolError):
        decode_body(body)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=250, deadline=None)
@given(st.integers(-2, 20), st.lists(msgpack_values, max_size=5))
def test_structured_garbage_gives_only_protocol_errors(code: int, fields: list[object]) -> None:
    body = pack([code, *fields])
    try:
        msg = decode_body(body)
    except RemoteProtocolError:
        return
    assert code == msg.TYPE


@settings(max_examples=200, deadline=None)
@given(any_message, st.data())
def test_mutated_valid_frames_give_only_protocol_errors(msg: Message, data: st.DataObject) -> None:
    body = bytearray(encode(msg)[4:])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    _only_protocol_errors([frame(bytes(body))])


# -- limits ----------------------------------------------------------------------------------------


def test_oversized_frame_length_rejected_from_the_header_alone() -> None:
    dec = FrameDecoder()
    header = HEADER.pack(DEFAULT_LIMITS.max_frame + 1)
    for b in header[:3]:
        dec.receive_data(bytes([b]))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        dec.receive_data(header[3:])  # no body byte has arrived
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError):
        dec.next_message()


def test_huge_frame_length_rejected() -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(b"\xff\xff\xff\xff")


def test_frame_at_the_limit_is_read() -> None:
    limits = Limits(max_frame=100)
    msg = Chunk(PID, 1, b"x" * 50)
    data = encode(msg, limits)
    assert feed_all([data], limits) == [msg]
    with pytest.raises(RemoteProtocolError):
        feed_all([frame(pack([11, PID, 1, b"x" * 100]))], limits)


def test_largest_chunk_fits_default_frame() -> None:
    msg = Chunk(PID, 65535, b"\xab" * 65536)
    assert len(encode(msg)) - 4 <= DEFAULT_LIMITS.max_frame
    assert feed_all([encode(msg)]) == [msg]


# -- CHUNK header without the payload (the sender writes header and payload apart) ----------


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, DEFAULT_LIMITS.max_package_size // DEFAULT_LIMITS.chunk_size - 1),
    st.one_of(
        st.integers(0, DEFAULT_LIMITS.chunk_size),
        st.sampled_from([0, 255, 256, 65535, 65536]),  # each msgpack bin size boundary
    ),
)
def test_chunk_header_plus_payload_is_the_encoded_chunk(pid: bytes, index: int, n: int) -> None:
    data = random.Random(n).randbytes(n)
    frame_bytes = encode_chunk_header(pid, index, n) + data
    assert frame_bytes == encode(Chunk(pid, index, data))
    assert feed_all([frame_bytes]) == [Chunk(pid, index, data)]


@pytest.mark.parametrize(
    ("pid", "index", "n"),
    [
        (b"\x01" * 31, 0, 10),  # short package id
        (b"\x01" * 32, -1, 10),  # negative index
        (b"\x01" * 32, DEFAULT_LIMITS.max_package_size // DEFAULT_LIMITS.chunk_size, 1),
        (b"\x01" * 32, 0, DEFAULT_LIMITS.chunk_size + 1),  # payload over a chunk
        (b"\x01" * 32, 0, -1),
    ],
)
def test_chunk_header_checks_like_chunk(pid: bytes, index: int, n: int) -> None:
    with pytest.raises(ValueError):
        encode_chunk_header(pid, index, n)


def test_chunk_header_refuses_a_frame_over_the_limit() -> None:
    small = Limits(max_frame=1000)
    assert len(encode_chunk_header(PID, 0, 900, small)) < 100
    with pytest.raises(LocalProtocolError):
        encode_chunk_header(PID, 0, 990, small)


def test_encoder_refuses_message_over_the_limit() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Chunk(PID, 1, b"x" * 200), Limits(max_frame=100))


def test_deep_nesting_rejected() -> None:
    for depth in (5, 50, 2000, 60000):
        body = b"\x91" * depth + b"\xc0"
        with pytest.raises(RemoteProtocolError):
            decode_body(body)
    with pytest.raises(RemoteProtocolError, match="deep"):
        decode_body(pack([2, [[[["h", 1]]]]]))


def test_long_lists_and_strings_rejected_by_msgpack_caps() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(pack([9, PID, list(range(5000))]))
    with pytest.raises(RemoteProtocolError):
        decode_body(pack([1, 1, PID, 1, "x" * 300]))
    # a length header promising more than the frame holds
    with pytest.raises(RemoteProtocolError):
        decode_body(b"\x94\x0b" + pack(PID) + b"\x01\xc6\xff\xff\xff\xff")


@pytest.mark.parametrize("code", [0, 18, 255, -1, 2**40, "1", True, False, 1.0, None, b"\x01", [1]])
def test_unknown_type_codes(code: object) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown"):
        decode_body(pack([code, 7]))


@pytest.mark.parametrize(
    "body",
    [
        pack([]),
        pack(14),
        pack({"type": 14}),
        pack({14: 7}),
        pack([14, {}]),
        pack([14, 7, 8]),
        pack([14]),
        pack([11, PID, 0]),
        b"\xd4\x01\x00",  # ext
        pack([14, msgpack.ExtType(1, b"x")]),
        msgpack.packb([14, msgpack.Timestamp(1)]),
        b"",
        b"\xc1",  # never used
        pack([1, 1, PID, 1, b"\xff"]),  # agent as bin
        b"\x94\x01\x01" + pack(PID) + b"\x01\xa2\xff\xfe",  # invalid UTF-8 agent
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(body)


def test_bitfield_with_stray_bits_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="past its end"):
        decode_body(pack([8, PID, 9, b"\xff\xc0"]))
    assert decode_body(pack([8, PID, 9, b"\xff\x80"])) == Bitfield(PID, 9, b"\xff\x80")
    assert decode_body(pack([8, PID, 16, b"\xff\xff"])) == Bitfield(PID, 16, b"\xff\xff")


def test_error_is_sticky_and_reported_once_per_call() -> None:
    dec = FrameDecoder()
    dec.receive_data(frame(pack([99])) + encode(Ping(1)))
    with pytest.raises(RemoteProtocolError):
        dec.next_message()
    with pytest.raises(RemoteProtocolError):
        dec.next_message()
    with pytest.raises(RemoteProtocolError):
        dec.receive_data(encode(Ping(2)))


def test_hello_round_trip_through_decoder() -> None:
    msg = Hello(1, b"\x09" * 32, 0, "")
    assert feed_all([encode(msg)]) == [msg]
