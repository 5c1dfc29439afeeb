"""An adversarial peer for the simulation: speaks the real protocol, serves garbage.

It listens like a node and dials every honest node it is given, sends HELLO,
INVENTORY and PEERS like a node, learns announcements the way a node does
(ANNOUNCE pushed to it, or INVENTORY then GET_ANNOUNCE), and then claims a
complete copy of every package it hears of: a full BITFIELD to each peer.
Every REQUEST is answered with a CHUNK of the right length and wrong bytes.

Modes:

- ``bad-chunks``: the chunk table it serves is the real one (fetched from an
  honest peer and checked against the signed root, before it claims anything),
  so the only lie is in the chunks;
- ``bad-tables``: the page-hash list and every table page are random too.

Honest nodes must reject every bad chunk and table page, ban this peer, and
still finish with the right bytes. Counters of what it served are in
:class:`AdversaryStats` for the report. It never sends COMPLETE (a publisher
counting replicas must not count it). It is meant for the harness only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.signing
import trio

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement, decode_announcement
from p2pupdate.core.chunks import (
    HASH_LEN,
    chunk_count,
    chunk_length,
    page_count,
    page_hash,
    root_from_page_hashes,
)
from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.handshake import sign_proof
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    TABLE_PAGE_LIST,
    Announce,
    Bitfield,
    Chunk,
    Complete,
    GetAnnounce,
    GetTable,
    Have,
    Hello,
    Inventory,
    Message,
    Peers,
    Ping,
    Pong,
    Request,
    Table,
)
from p2pupdate.errors import ProtocolError, RemoteProtocolError

__all__ = ["ADVERSARY_AGENT", "Adversary", "AdversaryStats"]

ADVERSARY_AGENT = "p2pupdate-sim-adversary"
_PAGE = DEFAULT_LIMITS.table_page_entries
_REDIAL = 1.0
_TABLE_RETRY = 0.3
_IDLE = 120.0


@dataclass
class AdversaryStats:
    """What the adversary did, for the report."""

    address: str = ""
    mode: str = ""
    connections: int = 0
    closed_by_peer: int = 0
    announcements: int = 0
    requests: int = 0
    bad_chunks_served: int = 0
    bad_table_pages_served: int = 0
    true_table_pages_served: int = 0
    bad_chunks_to: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class _Package:
    ann: Announcement
    nchunks: int
    page_list: list[bytes] | None = None  # verified page hashes
    pages: dict[int, bytes] = field(default_factory=dict)  # verified pages
    waiting: list[tuple[_Conn, int]] = field(default_factory=list)  # unanswered GetTable
    asked: dict[str, float] = field(default_factory=dict)  # peer -> when asked for the table
    advertised: bool = False

    @property
    def table_complete(self) -> bool:
        return self.page_list is not None and len(self.pages) == len(self.page_list)


class _Conn:
    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.hello: Hello | None = None
        self.mine: Hello | None = None
        self.lock = trio.Lock()
        self.decoder = FrameDecoder()
        self.closed = False

    @property
    def label(self) -> str:
        port = self.hello.listen_port if self.hello is not None else 0
        return f"{self.host}:{port}"

    async def send(self, msg: Message) -> None:
        if self.closed:
            return
        async with self.lock:
            try:
                await self.stream.send_all(encode(msg))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closed = True

    async def receive(self) -> Message | None:
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            try:
                with trio.fail_after(_IDLE):
                    data = await self.stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.TooSlowError):
                return None
            if not data:
                return None
            self.decoder.receive_data(data)


class Adversary:
    """Listens on ``host:port`` (0: any free port) and dials ``targets`` until stopped."""

    def __init__(
        self,
        mode: str,
        host: str,
        targets: Sequence[tuple[str, int]],
        *,
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in ("bad-chunks", "bad-tables"):
            raise ValueError(f"unknown adversary mode {mode!r}")
        self.mode = mode
        self.host = host
        self.port = port
        self.targets = list(targets)
        self.rng = rng or random.Random()
        # A real node key: the handshake makes every peer prove the id it claims.
        self.key = nacl.signing.SigningKey(self.rng.randbytes(32))
        self.node_id = bytes(self.key.verify_key)
        self.stats = AdversaryStats(mode=mode)
        self.packages: dict[bytes, _Package] = {}  # package id -> package
        self.announcements: dict[bytes, Announcement] = {}  # announcement id -> it
        self.conns: dict[int, _Conn] = {}
        self._connected: set[tuple[str, int]] = set()

    # -- running ------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self.stats.address = f"{self.host}:{self.port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_inbound, listeners)
            for target in self.targets:
                nursery.start_soon(self._dial_loop, target)
            nursery.start_soon(self._table_fetcher)
            task_status.started()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        host = str(stream.socket.getpeername()[0])
        await self._session(stream, host)

    async def _dial_loop(self, target: tuple[str, int]) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(*target)
            except OSError:
                await trio.sleep(_REDIAL)
                continue
            self._connected.add(target)
            await self._session(stream, target[0])
            await trio.sleep(_REDIAL)

    async def _session(self, stream: trio.SocketStream, host: str) -> None:
        conn = _Conn(stream, host)
        self.conns[id(conn)] = conn
        self.stats.connections += 1
        try:
            conn.mine = Hello(
                PROTOCOL_VERSION, self.node_id, self.port, ADVERSARY_AGENT, self.rng.randbytes(32)
            )
            await conn.send(conn.mine)
            # Their HELLO first, answered with our proof, before anything else.
            try:
                first = await conn.receive()
            except ProtocolError:
                return
            if first is None:
                self.stats.closed_by_peer += 1
                return
            await self._handle(conn, first)
            entries = tuple((a.body.channel, a.id) for a in self.announcements.values())
            await conn.send(Inventory(entries))
            await conn.send(Peers(()))
            for pkg in self.packages.values():
                if pkg.advertised:
                    await self._advertise(conn, pkg)
            while not conn.closed:
                try:
                    msg = await conn.receive()
                except ProtocolError:
                    break
                if msg is None:
                    self.stats.closed_by_peer += 1
                    break
                await self._handle(conn, msg)
        finally:
            conn.closed = True
            self.conns.pop(id(conn), None)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # -- protocol -----------------------------------------------------------------
    async def _handle(self, conn: _Conn, msg: Message) -> None:
        if isinstance(msg, Hello):
            conn.hello = msg
            if conn.mine is not None and len(msg.nonce) == 32:
                await conn.send(sign_proof(self.key, conn.mine, msg))
        elif isinstance(msg, Ping):
            await conn.send(Pong(msg.nonce))
        elif isinstance(msg, Inventory):
            for _channel, ann_id in msg.entries:
                if ann_id not in self.announcements:
                    await conn.send(GetAnnounce(ann_id))
        elif isinstance(msg, GetAnnounce):
            ann = self.announcements.get(msg.announcement_id)
            if ann is not None:
                await conn.send(Announce(ann.encode()))
        elif isinstance(msg, Announce):
            await self._on_announce(msg.data)
        elif isinstance(msg, (Bitfield, Have, Complete)):
            await self._maybe_fetch_table(conn, msg.package_id)
        elif isinstance(msg, GetTable):
            await self._on_get_table(conn, msg)
        elif isinstance(msg, Table):
            await self._on_table(conn, msg)
        elif isinstance(msg, Request):
            await self._on_request(conn, msg)

    async def _on_announce(self, data: bytes) -> None:
        try:
            ann = decode_announcement(data)
        except RemoteProtocolError:
            return
        if ann.id in self.announcements:
            return
        self.announcements[ann.id] = ann
        self.stats.announcements += 1
        pid = ann.body.package_id
        if pid in self.packages:
            return
        pkg = _Package(ann, chunk_count(ann.body.size))
        self.packages[pid] = pkg
        for conn in list(self.conns.values()):
            await conn.send(Inventory(((ann.body.channel, ann.id),)))
            await self._maybe_fetch_table(conn, pid)
        if self.mode == "bad-tables":
            await self._advertise_all(pkg)

    async def _advertise_all(self, pkg: _Package) -> None:
        """Claim the package to every peer. In ``bad-chunks`` mode only once the true
        table is in hand, so every table request it gets is answered at once (a
        peer that stalls table requests is another attack, not this one)."""
        pkg.advertised = True
        for conn in list(self.conns.values()):
            await self._advertise(conn, pkg)

    async def _advertise(self, conn: _Conn, pkg: _Package) -> None:
        """Claim every chunk: a full bitfield (bits past the end stay clear)."""
        n = pkg.nchunks
        bits = bytearray(b"\xff" * (-(-n // 8)))
        if n % 8:
            bits[-1] = (0xFF << (8 - n % 8)) & 0xFF
        await conn.send(Bitfield(pkg.ann.body.package_id, n, bytes(bits)))

    async def _table_fetcher(self) -> None:
        """Until it holds the true table of each package, keep asking every peer.

        Honest nodes answer once they hold the table themselves (a node that has
        not got it yet stays silent), so asking again now and then is how it gets
        one as early as the swarm allows.
        """
        while True:
            await trio.sleep(_TABLE_RETRY)
            for pid, pkg in list(self.packages.items()):
                if not pkg.table_complete:
                    for conn in list(self.conns.values()):
                        await self._maybe_fetch_table(conn, pid)

    async def _maybe_fetch_table(self, conn: _Conn, package_id: bytes) -> None:
        """Ask a peer for what we lack of a package's table (at most every retry interval)."""
        pkg = self.packages.get(package_id)
        if pkg is None or self.mode != "bad-chunks" or pkg.table_complete:
            return
        if conn.hello is None or conn.closed:
            return
        now = trio.current_time()
        if now - pkg.asked.get(conn.label, -math.inf) < _TABLE_RETRY:
            return
        pkg.asked[conn.label] = now
        if pkg.page_list is None:
            await conn.send(GetTable(package_id, TABLE_PAGE_LIST))
            return
        for p in range(len(pkg.page_list)):
            if p not in pkg.pages:
                await conn.send(GetTable(package_id, p))

    async def _on_table(self, conn: _Conn, msg: Table) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None:
            return
        npages = page_count(pkg.nchunks)
        if msg.page == TABLE_PAGE_LIST:
            if pkg.page_list is not None or len(msg.hashes) != npages * HASH_LEN:
                return
            hashes = [msg.hashes[i : i + HASH_LEN] for i in range(0, len(msg.hashes), HASH_LEN)]
            if root_from_page_hashes(hashes) != pkg.ann.body.table_root:
                return
            pkg.page_list = hashes
            for p in range(npages):
                await conn.send(GetTable(msg.package_id, p))
        elif (
            pkg.page_list is not None
            and 0 <= msg.page < npages
            and page_hash(msg.hashes) == pkg.page_list[msg.page]
        ):
            pkg.pages[msg.page] = msg.hashes
        await self._answer_waiting(pkg)
        if pkg.table_complete and not pkg.advertised:
            await self._advertise_all(pkg)

    async def _answer_waiting(self, pkg: _Package) -> None:
        still: list[tuple[_Conn, int]] = []
        for conn, page in pkg.waiting:
            answer = self._true_table(pkg, page)
            if answer is None:
                still.append((conn, page))
            else:
                self.stats.true_table_pages_served += 1
                await conn.send(answer)
        pkg.waiting = still

    def _true_table(self, pkg: _Package, page: int) -> Table | None:
        pid = pkg.ann.body.package_id
        if page == TABLE_PAGE_LIST:
            if pkg.page_list is None:
                return None
            return Table(pid, page, b"".join(pkg.page_list))
        data = pkg.pages.get(page)
        return None if data is None else Table(pid, page, data)

    def _bad_table(self, pkg: _Package, page: int) -> Table:
        npages = page_count(pkg.nchunks)
        n = npages if page == TABLE_PAGE_LIST else max(0, min(_PAGE, pkg.nchunks - page * _PAGE))
        return Table(pkg.ann.body.package_id, page, self.rng.randbytes(n * HASH_LEN))

    async def _on_get_table(self, conn: _Conn, msg: GetTable) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None:
            return
        if msg.page != TABLE_PAGE_LIST and not 0 <= msg.page < page_count(pkg.nchunks):
            return
        if self.mode == "bad-tables":
            self.stats.bad_table_pages_served += 1
            await conn.send(self._bad_table(pkg, msg.page))
            return
        answer = self._true_table(pkg, msg.page)
        if answer is None:
            pkg.waiting.append((conn, msg.page))
            for other in list(self.conns.values()):
                await self._maybe_fetch_table(other, msg.package_id)
        else:
            self.stats.true_table_pages_served += 1
            await conn.send(answer)

    async def _on_request(self, conn: _Conn, msg: Request) -> None:
        self.stats.requests += 1
        pkg = self.packages.get(msg.package_id)
        if pkg is None or msg.index >= pkg.nchunks:
            return
        length = chunk_length(pkg.ann.body.size, msg.index)
        self.stats.bad_chunks_served += 1
        self.stats.bad_chunks_to[conn.label] = self.stats.bad_chunks_to.get(conn.label, 0) + 1
        await conn.send(Chunk(msg.package_id, msg.index, self.rng.randbytes(length)))
