"""Wire message types: frozen dataclasses that validate themselves.

Every message is encoded as a msgpack array ``[type code, field, ...]``
(see ``p2pupdate.core.codec``). Construction checks every type, length and
range, so a message object that exists is well-formed; the codec turns a
failed construction from peer bytes into RemoteProtocolError.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import validate_channel

__all__ = [
    "MAX_INVENTORY",
    "MAX_PEERS",
    "MAX_SUMMARY",
    "MESSAGE_TYPES",
    "NONCE_LEN",
    "PROTOCOL_VERSION",
    "TABLE_PAGE_LIST",
    "Announce",
    "Bitfield",
    "Cancel",
    "Chunk",
    "Complete",
    "GetAnnounce",
    "GetTable",
    "Have",
    "Hello",
    "HelloProof",
    "Inventory",
    "Message",
    "Peers",
    "Ping",
    "Pong",
    "Reject",
    "Report",
    "ReportSummary",
    "Request",
    "Revoke",
    "Table",
    "Yank",
]

# 2: HELLO carries a nonce and is followed by HELLO_PROOF (docs/protocol.md).
PROTOCOL_VERSION = 2
NONCE_LEN = 32
TABLE_PAGE_LIST = -1  # GET_TABLE page number asking for the list of page hashes
_L = DEFAULT_LIMITS
_MAX_INDEX = _L.max_package_size // _L.chunk_size  # chunk indices are below this
# List lengths and the page range: Limits (config.py) says why.
MAX_PEERS = _L.max_peers_per_message
MAX_INVENTORY = _L.max_inventory
_MAX_PAGE = _L.max_table_page


def _bytes(name: str, value: object, exact: int | None = None, maximum: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes")
    if exact is not None and len(value) != exact:
        raise ValueError(f"{name} must be {exact} bytes")
    if maximum is not None and len(value) > maximum:
        raise ValueError(f"{name} longer than {maximum} bytes")


def _int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}")


def _str(name: str, value: object, maximum: int = _L.max_str) -> None:
    if not isinstance(value, str) or len(value.encode()) > maximum:
        raise ValueError(f"{name} must be a string of at most {maximum} bytes")


def _index(value: object) -> None:
    _int("index", value, 0, _MAX_INDEX - 1)


class Message:
    """Base of all messages; ``TYPE`` is the wire code."""

    TYPE: ClassVar[int] = 0

    def to_fields(self) -> list[object]:
        return [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Hello(Message):
    """First message each way. ``nonce`` (protocol 2) is the challenge the other side
    must sign in its HELLO_PROOF; it is optional in the encoding only so that a
    version-1 HELLO still decodes and gets the clear "incompatible version" answer."""

    TYPE: ClassVar[int] = 1
    protocol: int
    node_id: bytes
    listen_port: int
    agent: str
    nonce: bytes = b""

    def __post_init__(self) -> None:
        _int("protocol", self.protocol, 0, 2**16)
        _bytes("node_id", self.node_id, exact=32)
        _int("listen_port", self.listen_port, 0, 65535)
        _str("agent", self.agent, 128)
        _bytes("nonce", self.nonce, maximum=NONCE_LEN)


@dataclass(frozen=True)
class Peers(Message):
    TYPE: ClassVar[int] = 2
    peers: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.peers, tuple) or len(self.peers) > MAX_PEERS:
            raise ValueError(f"peers must be a list of at most {MAX_PEERS} addresses")
        for item in self.peers:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError("a peer is [host, port]")
            _str("host", item[0], 253)
            _int("port", item[1], 1, 65535)

    def to_fields(self) -> list[object]:
        return [[list(p) for p in self.peers]]


@dataclass(frozen=True)
class Announce(Message):
    TYPE: ClassVar[int] = 3
    data: bytes

    def __post_init__(self) -> None:
        _bytes("announcement", self.data, maximum=_L.max_announcement)


@dataclass(frozen=True)
class Inventory(Message):
    """channel -> id of the newest announcement the sender holds for it."""

    TYPE: ClassVar[int] = 4
    entries: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple) or len(self.entries) > MAX_INVENTORY:
            raise ValueError(f"inventory must list at most {MAX_INVENTORY} channels")
        for item in self.entries:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError("an inventory entry is [channel, id]")
            validate_channel(item[0])  # checks the type too
            _bytes("announcement id", item[1], exact=32)

    def to_fields(self) -> list[object]:
        return [[list(e) for e in self.entries]]


@dataclass(frozen=True)
class GetAnnounce(Message):
    TYPE: ClassVar[int] = 5
    announcement_id: bytes

    def __post_init__(self) -> None:
        _bytes("announcement id", self.announcement_id, exact=32)


@dataclass(frozen=True)
class GetTable(Message):
    """Ask for page ``page`` of a chunk table, or (page -1) the page-hash list."""

    TYPE: ClassVar[int] = 6
    package_id: bytes
    page: int

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _int("page", self.page, -1, _MAX_PAGE)


@dataclass(frozen=True)
class Table(Message):
    """Concatenated 32-byte hashes: the page-hash list (page -1) or one page."""

    TYPE: ClassVar[int] = 7
    package_id: bytes
    page: int
    hashes: bytes

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _int("page", self.page, -1, _MAX_PAGE)
        _bytes("hashes", self.hashes, maximum=_L.table_page_entries * 32)
        if len(self.hashes) % 32:
            raise ValueError("hashes must be a multiple of 32 bytes")


@dataclass(frozen=True)
class Bitfield(Message):
    TYPE: ClassVar[int] = 8
    package_id: bytes
    nchunks: int
    bits: bytes

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _int("nchunks", self.nchunks, 0, _MAX_INDEX)
        _bytes("bits", self.bits, exact=-(-self.nchunks // 8))
        # Bits are most significant first; the padding bits of the last byte must be 0.
        if self.nchunks % 8 and self.bits[-1] & (0xFF >> (self.nchunks % 8)):
            raise ValueError("bitfield has bits set past its end")


@dataclass(frozen=True)
class Have(Message):
    TYPE: ClassVar[int] = 9
    package_id: bytes
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        if not isinstance(self.indices, tuple) or len(self.indices) > _L.max_list:
            raise ValueError(f"HAVE lists at most {_L.max_list} indices")
        for i in self.indices:
            _index(i)

    def to_fields(self) -> list[object]:
        return [self.package_id, list(self.indices)]


@dataclass(frozen=True)
class Request(Message):
    TYPE: ClassVar[int] = 10
    package_id: bytes
    index: int

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _index(self.index)


@dataclass(frozen=True)
class Chunk(Message):
    TYPE: ClassVar[int] = 11
    package_id: bytes
    index: int
    data: bytes

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _index(self.index)
        _bytes("data", self.data, maximum=_L.chunk_size)


@dataclass(frozen=True)
class Reject(Message):
    TYPE: ClassVar[int] = 12
    package_id: bytes
    index: int

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _index(self.index)


@dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[int] = 13
    package_id: bytes
    index: int

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)
        _index(self.index)


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[int] = 14
    nonce: int

    def __post_init__(self) -> None:
        _int("nonce", self.nonce, 0, 2**32 - 1)


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[int] = 15
    nonce: int

    def __post_init__(self) -> None:
        _int("nonce", self.nonce, 0, 2**32 - 1)


@dataclass(frozen=True)
class Complete(Message):
    """The sender holds a complete, verified copy of the package."""

    TYPE: ClassVar[int] = 16
    package_id: bytes

    def __post_init__(self) -> None:
        _bytes("package_id", self.package_id, exact=32)


@dataclass(frozen=True)
class HelloProof(Message):
    """Second message each way: the sender's node key signs the other side's nonce,
    proving it holds the key its HELLO claims (``core.handshake``)."""

    TYPE: ClassVar[int] = 17
    signature: bytes
    # The sender's fleet admission certificate (``core.fleet``), when it runs with one.
    # Left out of the encoding when empty, so a node without membership sends exactly
    # the protocol-2 HELLO_PROOF.
    admission: bytes = b""

    def __post_init__(self) -> None:
        _bytes("signature", self.signature, exact=64)
        _bytes("admission", self.admission, maximum=_L.max_admission)

    def to_fields(self) -> list[object]:
        return [self.signature, self.admission] if self.admission else [self.signature]


@dataclass(frozen=True)
class Revoke(Message):
    """A fleet revocation list (``core.fleet``), gossiped between members like an
    announcement: the latest list of each fleet key wins. Type 30 leaves room below."""

    TYPE: ClassVar[int] = 30
    data: bytes

    def __post_init__(self) -> None:
        _bytes("revocation list", self.data, maximum=_L.max_revoked * 35 + 128)


# Entries per REPORT_SUMMARY: (8-byte node id prefix, sequence) is at most 20 bytes
# packed, so 2000 of them stay well inside one frame.
MAX_SUMMARY = 2000


@dataclass(frozen=True)
class Report(Message):
    """One signed node report (``core.reports``), relayed as received."""

    TYPE: ClassVar[int] = 40
    data: bytes

    def __post_init__(self) -> None:
        _bytes("report", self.data, maximum=_L.max_report)


@dataclass(frozen=True)
class ReportSummary(Message):
    """Anti-entropy for reports: (node id prefix, seq) of the reports the sender holds.

    Long summaries come in parts; ``done`` marks the last. The receiver answers
    with every report it holds that the sender lacks or holds older.
    """

    TYPE: ClassVar[int] = 41
    entries: tuple[tuple[bytes, int], ...]
    done: bool

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple) or len(self.entries) > MAX_SUMMARY:
            raise ValueError(f"a report summary lists at most {MAX_SUMMARY} entries")
        for item in self.entries:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError("a summary entry is [id prefix, seq]")
            _bytes("node id prefix", item[0], exact=8)
            _int("seq", item[1], 0, 2**63 - 1)
        if not isinstance(self.done, bool):
            raise ValueError("done must be a boolean")

    def to_fields(self) -> list[object]:
        return [[list(e) for e in self.entries], self.done]


@dataclass(frozen=True)
class Yank(Message):
    """A signed revocation of one channel version (``core.yank``), relayed as received."""

    TYPE: ClassVar[int] = 42
    data: bytes

    def __post_init__(self) -> None:
        _bytes("yank", self.data, maximum=_L.max_announcement)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Peers,
        Announce,
        Inventory,
        GetAnnounce,
        GetTable,
        Table,
        Bitfield,
        Have,
        Request,
        Chunk,
        Reject,
        Cancel,
        Ping,
        Pong,
        Complete,
        HelloProof,
        Revoke,
        Report,
        ReportSummary,
        Yank,
    )
}
