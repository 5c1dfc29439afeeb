"""Hypothesis strategies: one per wire message type, covering each field's whole range."""

from __future__ import annotations

from hypothesis import strategies as st

from p2pupdate.core.messages import (
    MESSAGE_TYPES,
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

__all__ = ["MESSAGE_STRATEGIES", "any_message", "sample_messages"]

MAX_INDEX = 65535
ids = st.binary(min_size=32, max_size=32)
indices = st.integers(0, MAX_INDEX)
channels = st.from_regex(
    r"[a-z0-9][a-z0-9._-]{0,20}(/[a-z0-9][a-z0-9._-]{0,20}){0,3}", fullmatch=True
)


@st.composite
def bitfields(draw: st.DrawFn) -> Bitfield:
    n = draw(st.integers(0, 3000))
    bits = bytearray(draw(st.binary(min_size=-(-n // 8), max_size=-(-n // 8))))
    if n % 8:
        bits[-1] &= (0xFF << (8 - n % 8)) & 0xFF  # padding bits clear
    return Bitfield(draw(ids), n, bytes(bits))


MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(
        Hello,
        st.integers(0, 2**16),
        ids,
        st.integers(0, 65535),
        st.text(max_size=40).filter(lambda s: len(s.encode()) <= 128),
        st.binary(max_size=32),
    ),
    HelloProof: st.builds(HelloProof, st.binary(min_size=64, max_size=64), st.binary(max_size=512)),
    Revoke: st.builds(Revoke, st.binary(max_size=2000)),
    Peers: st.builds(
        Peers,
        st.lists(
            st.tuples(st.text(min_size=1, max_size=30), st.integers(1, 65535)), max_size=20
        ).map(tuple),
    ),
    Announce: st.builds(Announce, st.binary(max_size=1024)),
    Inventory: st.builds(Inventory, st.lists(st.tuples(channels, ids), max_size=10).map(tuple)),
    GetAnnounce: st.builds(GetAnnounce, ids),
    GetTable: st.builds(GetTable, ids, st.integers(TABLE_PAGE_LIST, 1023)),
    Table: st.builds(
        Table,
        ids,
        st.integers(TABLE_PAGE_LIST, 1023),
        st.integers(0, 64).flatmap(lambda n: st.binary(min_size=32 * n, max_size=32 * n)),
    ),
    Bitfield: bitfields(),
    Have: st.builds(Have, ids, st.lists(indices, max_size=50).map(tuple)),
    Request: st.builds(Request, ids, indices),
    Chunk: st.builds(Chunk, ids, indices, st.binary(max_size=2000)),
    Reject: st.builds(Reject, ids, indices),
    Cancel: st.builds(Cancel, ids, indices),
    Ping: st.builds(Ping, st.integers(0, 2**32 - 1)),
    Pong: st.builds(Pong, st.integers(0, 2**32 - 1)),
    Complete: st.builds(Complete, ids),
    Report: st.builds(Report, st.binary(max_size=1024)),
    ReportSummary: st.builds(
        ReportSummary,
        st.lists(
            st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 2**63 - 1)), max_size=20
        ).map(tuple),
        st.booleans(),
    ),
    Yank: st.builds(Yank, st.binary(max_size=1024)),
}
assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES.values())

any_message: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())


def sample_messages() -> list[Message]:
    """One fixed, largest-reasonable instance of every message type."""
    pid = bytes(range(32))
    return [
        Hello(2, b"\x01" * 32, 4242, "p2pupdate/0.1.0", b"\x07" * 32),
        Peers((("127.0.0.1", 4000), ("node-b.example", 65535))),
        Announce(b"\x92" + b"\x00" * 300),
        Inventory((("app/stable", b"\x02" * 32), ("db", b"\x03" * 32))),
        GetAnnounce(b"\x04" * 32),
        GetTable(pid, TABLE_PAGE_LIST),
        Table(pid, 3, bytes(range(256)) * 4),
        Bitfield(pid, 13, b"\xff\xf8"),
        Have(pid, (0, 1, 65535)),
        Request(pid, 65535),
        Chunk(pid, 7, bytes(range(256)) * 256),
        Reject(pid, 1),
        Cancel(pid, 2),
        Ping(2**32 - 1),
        Pong(0),
        Complete(pid),
        HelloProof(b"\x08" * 64),
        HelloProof(b"\x08" * 64, b"\x09" * 512),
        Revoke(b"\x0a" * (1024 * 35 + 128)),
        Report(b"\x92" + b"\x00" * 1000),
        ReportSummary(tuple((i.to_bytes(8, "big"), 2**63 - 1) for i in range(2000)), True),
        Yank(b"\x92" + b"\x00" * 500),
    ]
