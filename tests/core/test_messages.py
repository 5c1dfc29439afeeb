"""Wire messages: construction validates every field; codes are stable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.codec import decode_body, encode
from p2pupdate.core.messages import (
    MAX_INVENTORY,
    MAX_PEERS,
    MAX_SUMMARY,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    TABLE_PAGE_LIST,
    Announce,
    Bitfield,
    Cancel,
    Chunk,
    Complete,
    GetAnnounce,
    GetTable,
    Have,
    Hello,
    HelloProof,
    Inventory,
    Message,
    Peers,
    Ping,
    Pong,
    Reject,
    Report,
    ReportSummary,
    Request,
    Revoke,
    Table,
    Yank,
)
from tests.core.message_strategies import MESSAGE_STRATEGIES, sample_messages

PID = b"\x05" * 32


def test_type_codes_are_stable() -> None:
    assert {code: cls.__name__ for code, cls in MESSAGE_TYPES.items()} == {
        1: "Hello",
        2: "Peers",
        3: "Announce",
        4: "Inventory",
        5: "GetAnnounce",
        6: "GetTable",
        7: "Table",
        8: "Bitfield",
        9: "Have",
        10: "Request",
        11: "Chunk",
        12: "Reject",
        13: "Cancel",
        14: "Ping",
        15: "Pong",
        16: "Complete",
        17: "HelloProof",
        30: "Revoke",
        40: "Report",
        41: "ReportSummary",
        42: "Yank",
    }
    assert PROTOCOL_VERSION == 2
    assert TABLE_PAGE_LIST == -1


def test_hello_proof_without_admission_is_the_protocol_2_encoding() -> None:
    # A node without membership must stay byte-compatible with protocol-2 nodes.
    body = encode(HelloProof(b"\x08" * 64))[4:]
    assert body == b"\x92\x11\xc4\x40" + b"\x08" * 64


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_sample_round_trip(msg: Message) -> None:
    assert decode_body(encode(msg)[4:]) == msg


@pytest.mark.parametrize("cls", list(MESSAGE_STRATEGIES), ids=lambda c: c.__name__)
def test_every_message_round_trips(cls: type[Message]) -> None:
    @settings(max_examples=40, deadline=None)
    @given(MESSAGE_STRATEGIES[cls])
    def check(msg: Message) -> None:
        frame = encode(msg)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        back = decode_body(frame[4:])
        assert back == msg
        assert type(back) is cls
        assert hash(back) == hash(msg)  # frozen, hashable: tuples, not lists

    check()


def test_messages_are_immutable() -> None:
    msg = Ping(1)
    with pytest.raises(AttributeError):
        msg.nonce = 2  # type: ignore[misc]


INVALID: list[tuple[type[Message], tuple[Any, ...]]] = [
    (Hello, (-1, PID, 1, "a")),
    (Hello, (2**16 + 1, PID, 1, "a")),
    (Hello, (1, PID[:31], 1, "a")),
    (Hello, (1, PID, 65536, "a")),
    (Hello, (1, PID, -1, "a")),
    (Hello, (1, PID, 1, "a" * 129)),
    (Hello, (1, PID, 1, "é" * 65)),  # 130 bytes
    (Hello, (1, PID, 1, b"agent")),
    (Hello, (True, PID, 1, "a")),
    (Hello, (2, PID, 1, "a", b"n" * 33)),
    (Hello, (2, PID, 1, "a", "nonce")),
    (HelloProof, (b"s" * 63,)),
    (HelloProof, (b"s" * 65,)),
    (Peers, ([("h", 1)],)),  # list, not tuple
    (Peers, ((("h", 1),) * 201,)),
    (Peers, ((("h", 0),),)),
    (Peers, ((("h", 65536),),)),
    (Peers, ((("h" * 254, 1),),)),
    (Peers, ((("h", 1, 2),),)),
    (Peers, ((("h",),),)),
    (Announce, (b"x" * 1025,)),
    (Announce, ("x",)),
    (Inventory, ((("app", PID),) * 201,)),
    (Inventory, ((("App", PID),),)),
    (Inventory, ((("../x", PID),),)),
    (Inventory, ((("app", PID[:31]),),)),
    (Inventory, ((("app",),),)),
    (GetAnnounce, (PID + b"x",)),
    (GetTable, (PID, -2)),
    (GetTable, (PID, 1024)),
    (Table, (PID, 0, b"x" * 31)),
    (Table, (PID, 0, b"x" * (2048 * 32 + 32))),
    (Table, (PID, -2, b"")),
    (Bitfield, (PID, 9, b"\xff")),  # too short
    (Bitfield, (PID, 9, b"\xff\x80\x00")),  # too long
    (Bitfield, (PID, 9, b"\xff\x40")),  # bit 10 set: past the end
    (Bitfield, (PID, 1, b"\x01")),
    (Bitfield, (PID, 65537, b"\x00" * 8193)),
    (Bitfield, (PID, -1, b"")),
    (Have, (PID, (65536,))),
    (Have, (PID, (-1,))),
    (Have, (PID, [1])),
    (Have, (PID, (0,) * 4097)),
    (Request, (PID, 65536)),
    (Request, (PID, "1")),
    (Chunk, (PID, 0, b"x" * 65537)),
    (Chunk, (PID, 0, bytearray(b"x"))),
    (Chunk, (PID, 1.0, b"x")),
    (Reject, (PID, -1)),
    (Cancel, (PID, 65536)),
    (Ping, (-1,)),
    (Ping, (2**32,)),
    (Pong, (None,)),
    (Complete, (None,)),
]


@pytest.mark.parametrize(
    ("cls", "args"), INVALID, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(INVALID)]
)
def test_invalid_fields_are_refused(cls: type[Message], args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        cls(*args)


def test_field_edges_are_accepted() -> None:
    Hello(2**16, PID, 65535, "x" * 128)
    Peers((("h" * 253, 65535),) * 200)
    Announce(b"x" * 1024)
    Inventory((("a" * 64 + "/b", PID),) * 200)
    Table(PID, 1023, b"x" * (2048 * 32))
    Bitfield(PID, 65536, b"\xff" * 8192)
    Bitfield(PID, 0, b"")
    Bitfield(PID, 9, b"\xff\x80")
    Have(PID, (65535,) * 4096)
    Chunk(PID, 65535, b"x" * 65536)
    Chunk(PID, 0, b"")
    Ping(0)


def test_largest_valid_message_of_every_type_fits_a_frame() -> None:
    channel = "/".join(c * 64 for c in "abcd")
    largest = [
        Hello(2**16, PID, 65535, "x" * 128, b"n" * 32),
        HelloProof(b"s" * 64, b"a" * 512),
        Revoke(b"r" * (1024 * 35 + 128)),
        Peers((("h" * 253, 65535),) * MAX_PEERS),
        Announce(b"x" * 1024),
        Inventory(((channel, PID),) * MAX_INVENTORY),
        GetAnnounce(PID),
        GetTable(PID, 1023),
        Table(PID, 1023, b"x" * (2048 * 32)),
        Bitfield(PID, 65536, b"\xff" * 8192),
        Have(PID, (65535,) * 4096),
        Request(PID, 65535),
        Chunk(PID, 65535, b"x" * 65536),
        Reject(PID, 65535),
        Cancel(PID, 65535),
        Ping(2**32 - 1),
        Pong(2**32 - 1),
        Complete(PID),
        Report(b"\xff" * DEFAULT_LIMITS.max_report),
        ReportSummary(tuple((b"\xff" * 8, 2**63 - 1) for _ in range(MAX_SUMMARY)), False),
        Yank(b"\xff" * DEFAULT_LIMITS.max_announcement),
    ]
    assert {type(m) for m in largest} == set(MESSAGE_TYPES.values())
    for msg in largest:
        assert decode_body(encode(msg)[4:]) == msg


def test_other_classes_exist_for_every_code() -> None:
    for cls in (Cancel, Complete, GetAnnounce, GetTable, Pong, Reject, Request):
        assert MESSAGE_TYPES[cls.TYPE] is cls
