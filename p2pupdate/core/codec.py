"""Length-prefixed msgpack framing, sans-IO.

A frame is a 4-byte big-endian body length followed by the body, a msgpack
array ``[type code, field, ...]``. :class:`FrameDecoder` is fed byte pieces
of any size and yields typed messages; :func:`encode` does the reverse.

The frame length is checked before its body is buffered, msgpack is run
with caps on every length, and any failure at all (framing, msgpack, field
validation) surfaces as one :class:`RemoteProtocolError`. After an error the
decoder is broken for good: the connection must be closed.
"""

from __future__ import annotations

import struct

import msgpack

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.announcement import MAX_CHANNEL_LEN
from p2pupdate.core.messages import (
    MESSAGE_TYPES,
    Chunk,
    Have,
    Inventory,
    Message,
    Peers,
    ReportSummary,
)
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["HEADER", "FrameDecoder", "decode_body", "encode", "encode_chunk_header"]

HEADER = struct.Struct(">I")


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """One frame carrying ``msg``."""
    body: bytes = msgpack.packb([msg.TYPE, *msg.to_fields()], use_bin_type=True)
    if len(body) > limits.max_frame:
        raise LocalProtocolError(f"message of {len(body)} bytes exceeds the frame limit")
    return HEADER.pack(len(body)) + body


_BIN8, _BIN16, _BIN32 = struct.Struct(">BB"), struct.Struct(">BH"), struct.Struct(">BI")
_CHUNK_LEAD = bytes([0x94, Chunk.TYPE, 0xC4, 32])  # array of 4, type code, bin8 of 32 bytes


def encode_chunk_header(
    package_id: bytes, index: int, length: int, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Everything of a CHUNK frame before its payload of ``length`` bytes.

    ``encode_chunk_header(p, i, len(d)) + d == encode(Chunk(p, i, d))``: the sender writes
    this header and the payload buffer one after the other, so the payload is never
    copied into a frame. Arguments are checked as :class:`Chunk` checks them.
    """
    Chunk(package_id, index, b"")  # the same checks on the id and the index
    if not 0 <= length <= limits.chunk_size:
        raise ValueError(f"data must be at most {limits.chunk_size} bytes")
    if length < 0x100:
        size = _BIN8.pack(0xC4, length)
    elif length < 0x10000:
        size = _BIN16.pack(0xC5, length)
    else:
        size = _BIN32.pack(0xC6, length)
    packed_index: bytes = msgpack.packb(index)
    lead = _CHUNK_LEAD + package_id + packed_index + size
    body = len(lead) + length
    if body > limits.max_frame:
        raise LocalProtocolError(f"message of {body} bytes exceeds the frame limit")
    return HEADER.pack(body) + lead


def _check_depth(obj: object, depth: int, limit: int) -> None:
    if depth > limit:
        raise RemoteProtocolError("message nested too deeply")
    if isinstance(obj, list):
        for item in obj:
            if isinstance(item, list):
                _check_depth(item, depth + 1, limit)


def _tuplify(msg_type: type[Message], fields: list[object]) -> list[object]:
    # msgpack gives lists; the dataclasses hold tuples (hashable, immutable).
    if msg_type in (Peers, Inventory):
        items = fields[0]
        if not isinstance(items, list):
            raise ValueError("expected a list")
        fields = [tuple(tuple(x) if isinstance(x, list) else x for x in items)]
    elif msg_type is ReportSummary:
        if not isinstance(fields[0], list):
            raise ValueError("expected a list of entries")
        fields = [tuple(tuple(x) if isinstance(x, list) else x for x in fields[0]), *fields[1:]]
    elif msg_type is Have:
        if not isinstance(fields[1], list):
            raise ValueError("expected a list of indices")
        fields = [fields[0], tuple(fields[1])]
    return fields


def decode_body(body: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one frame body into a message, or raise RemoteProtocolError."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            # Each message caps its own strings; this bounds them all (channels are longer).
            max_str_len=max(limits.max_str, MAX_CHANNEL_LEN),
            max_bin_len=limits.max_frame,
            max_array_len=limits.max_list,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; translate them all once
        raise RemoteProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, list) or not obj:
        raise RemoteProtocolError("frame body must be a non-empty array")
    _check_depth(obj, 1, limits.max_depth)
    code, *fields = obj
    # bool is an int in Python: msgpack true must not pass as type code 1.
    msg_type = MESSAGE_TYPES.get(code) if type(code) is int else None
    if msg_type is None:
        raise RemoteProtocolError(f"unknown message type {code!r}")
    try:
        fields = _tuplify(msg_type, fields)
        msg = msg_type(*fields)
    except (TypeError, ValueError, IndexError) as exc:
        raise RemoteProtocolError(f"bad {msg_type.__name__}: {exc}") from exc
    return msg


class FrameDecoder:
    """Incremental decoder: ``receive_data`` pieces, then ``next_message`` until None."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (non-zero: a frame is in progress)."""
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data
        if len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > self._limits.max_frame:
                self._error = RemoteProtocolError(
                    f"frame of {length} bytes exceeds the limit of {self._limits.max_frame}"
                )
                raise self._error

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        if length > self._limits.max_frame:
            self._error = RemoteProtocolError(f"frame of {length} bytes exceeds the limit")
            raise self._error
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        # Decode straight from the buffer (no copy of the body; bin fields come out as new
        # bytes objects), then drop the frame: deleting from the front of a bytearray is cheap.
        with memoryview(self._buf) as view, view[HEADER.size : end] as body:
            try:
                msg = decode_body(body, self._limits)
            except RemoteProtocolError as exc:
                self._error = exc
                raise
        del self._buf[:end]
        return msg

    def messages(self) -> list[Message]:
        """All complete messages buffered now."""
        out: list[Message] = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out
