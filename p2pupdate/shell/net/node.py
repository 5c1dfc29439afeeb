"""The node's network side: listener, dialer, handshake, membership, gossip.

A :class:`Node` is a library object: several run in one trio run in tests,
and ``p2pupdate node`` wraps one. It receives a Transport (TCP or in-memory)
and never opens sockets itself. Protocol decisions live in the pure core
(``core.gossip``, ``core.membership``, ``core.policy``); this module runs the
connections and carries the decisions out. Package transfer is delegated to a
:class:`PackageService` (``shell.transfer.swarm``); what to do with an accepted
announcement is delegated to an ``on_announcement`` callback (the agent).

Every connection runs the same loops: a reader that feeds one message at a
time to the handlers, a writer that drains a bounded outbox (so one slow peer
never holds up gossip to the others), and a keepalive. Any error closes that
connection only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nacl.signing
import trio

from p2pupdate import __version__
from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.admission import (
    ConnectionSlots,
    EvictionCandidate,
    choose_eviction,
    netgroup,
)
from p2pupdate.core.announcement import Announcement, decode_announcement
from p2pupdate.core.codec import encode
from p2pupdate.core.fleet import Admission, FleetPolicy, decode_admission, decode_revocations
from p2pupdate.core.gossip import AnnouncementBook, choose_fanout
from p2pupdate.core.membership import Addr, PeerBook, format_addr
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    Announce,
    GetAnnounce,
    Hello,
    Inventory,
    Message,
    Peers,
    Ping,
    Pong,
    Report,
    ReportSummary,
    Revoke,
    Yank,
)
from p2pupdate.core.policy import Decision, TrustConfig
from p2pupdate.core.throttle import Throttle
from p2pupdate.errors import IncompatiblePeerError, RemoteProtocolError, TransferError
from p2pupdate.shell.fsutil import atomic_write_bytes
from p2pupdate.shell.net.peer import Connection, Timeouts, new_nonce
from p2pupdate.shell.net.reports import ReportGossip
from p2pupdate.shell.net.tls import TlsIdentity
from p2pupdate.shell.net.transport import Listener, Transport
from p2pupdate.shell.net.yanks import YankGossip

__all__ = ["EmitFn", "Node", "NodeOptions", "PackageService", "PeerConn", "peer_error"]

log = logging.getLogger("p2pupdate.node")

EmitFn = Callable[..., object]

# Outbox depth per connection (Limits.outbox_size says why).
OUTBOX_SIZE = DEFAULT_LIMITS.outbox_size
# Queued frames are coalesced into writes of up to this many bytes.
WRITE_BATCH = 64 * 1024


@dataclass
class NodeOptions:
    listen: Addr
    trust: TrustConfig
    peers: tuple[Addr, ...] = ()
    data_dir: Path | None = None
    auto_check: bool = True
    check_interval: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 64
    max_handshakes: int = 16
    target_connections: int = 8
    fanout: int = 8
    ban_period: float = 600.0
    pex_interval: float = 10.0
    agent: str = f"p2pupdate/{__version__}"
    # Node reports (docs/protocol.md): issue our own (False: a publisher only listens).
    report_self: bool = True
    report_interval: float = DEFAULT_LIMITS.report_interval
    limits: Limits = DEFAULT_LIMITS
    # Dial until at least this many connections are ones we chose, however many
    # inbound peers we have (an inbound flood must not stop us dialling).
    min_outbound: int = 2
    # Treat loopback peers as one shared host (the simulation runs every node on
    # 127.0.0.1): no per-IP/netgroup caps and never an IP ban for them. Tests turn
    # it off to play a single-IP attacker.
    shared_loopback: bool = True
    # Fleet membership (core.fleet; docs/security.md): the fleet public keys whose
    # admissions this node accepts (empty: an open swarm), this node's own admission
    # certificate (raw bytes) and revocation lists to start with.
    fleet: tuple[bytes, ...] = ()
    admission: bytes = b""
    revocations: tuple[bytes, ...] = ()
    # TLS 1.3 on every connection (shell.net.tls). None: on exactly when ``fleet`` is
    # set. Every node of one swarm must agree (a TLS node and a plain one cannot talk).
    encrypt: bool | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.fleet) if self.encrypt is None else self.encrypt


class PeerConn:
    """A connection after its handshake, with its outbox and bookkeeping."""

    def __init__(
        self, conn: Connection, addr: Addr, *, configured: bool = False, now: float = 0.0
    ) -> None:
        self.conn = conn
        self.addr = addr
        self.host = conn.remote_host
        self.outbound = conn.outbound
        self.configured = configured
        self.connected_at = now
        self.last_useful = 0.0  # when it last gave us a new announcement or good chunks
        self.admission: Admission | None = None  # its fleet admission (membership on)
        self.node_id = conn.node_id
        self.label = format_addr(*addr)
        self._out_send, self._out_recv = trio.open_memory_channel[bytes | Message](OUTBOX_SIZE)
        self.cancel_scope = trio.CancelScope()
        self.strikes = 0
        self.closing = False
        self.pex_sent_at = -math.inf  # when we last posted it our PEERS

    def post(self, msg: Message | bytes) -> bool:
        """Queue a message without waiting; False (the peer is dropped) if the outbox is full."""
        if self.closing:
            return False
        try:
            self._out_send.send_nowait(msg)
        except trio.WouldBlock:
            log.warning("%s: outbox full, dropping the connection", self.label)
            self.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    async def send(self, msg: Message) -> None:
        """Send now (used for bulk data, under the connection's send lock)."""
        await self.conn.send(msg)

    def close(self) -> None:
        self.closing = True
        self.cancel_scope.cancel()

    def mark_useful(self, now: float) -> None:
        """It gave us something new: eviction protects it."""
        self.last_useful = now

    async def writer(self) -> None:
        # Everything queued is sent in one write: many small REQUEST/HAVE/CANCEL frames
        # cost one system call instead of one each.
        async for item in self._out_recv:
            frames = [item if isinstance(item, bytes) else encode(item)]
            size = len(frames[0])
            while size < WRITE_BATCH:
                try:
                    more = self._out_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                frame = more if isinstance(more, bytes) else encode(more)
                frames.append(frame)
                size += len(frame)
            await self.conn.send_raw(frames[0] if len(frames) == 1 else b"".join(frames))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def peer_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a connection's task group failed with (protocol before transfer).

    Anything that is not a peer's fault (a bug, KeyboardInterrupt) is returned
    as the group itself, so it propagates.
    """
    leaves = _leaves(group)
    if all(isinstance(e, (RemoteProtocolError, TransferError, trio.Cancelled)) for e in leaves):
        for kind in (RemoteProtocolError, TransferError, trio.Cancelled):
            for e in leaves:
                if isinstance(e, kind):
                    return e
    return group


class PackageService(Protocol):
    """What the node needs from the swarm (package transfer)."""

    def on_peer_up(self, peer: PeerConn) -> None: ...

    def on_peer_down(self, peer: PeerConn) -> None: ...

    async def run_peer(self, peer: PeerConn) -> None:
        """Runs beside the peer's reader for the life of the connection (uploads)."""
        ...

    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        """Handle a package message; False if it is not one."""
        ...


class Node:
    def __init__(
        self,
        options: NodeOptions,
        transport: Transport,
        key: nacl.signing.SigningKey,
        *,
        emit: EmitFn | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.transport = transport
        self.key = key
        self.node_id = bytes(key.verify_key)
        self.emit: EmitFn = emit or (lambda name, **fields: None)
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.book = AnnouncementBook(options.trust)
        self.limits = options.limits
        self.peerbook = PeerBook(
            self.rng,
            list(options.peers),
            target=options.target_connections,
            limits=options.limits,
            strike_window=options.ban_period,
        )
        self.slots = ConnectionSlots(
            max_connections=options.max_connections,
            max_handshakes=options.max_handshakes,
            shared_loopback=options.shared_loopback,
            limits=options.limits,
        )
        self.throttle = Throttle(options.limits)
        self.fleet = FleetPolicy(options.fleet, options.limits)
        self.admission: Admission | None = (
            decode_admission(options.admission, options.limits) if options.admission else None
        )
        self.tls: TlsIdentity | None = TlsIdentity() if options.encrypted else None
        # Inbound handshakes in progress: when every slot is busy the oldest goes.
        self._pending: dict[object, tuple[float, trio.CancelScope]] = {}
        self.peers: dict[bytes, PeerConn] = {}
        self.listener: Listener | None = None
        self.listen_port = options.listen[1]
        self.package_service: PackageService | None = None
        self.on_announcement: Callable[[Announcement, PeerConn | None], Awaitable[None]] | None = (
            None
        )
        self._connections = 0
        self._dialing: set[Addr] = set()
        self._wake_dialer = trio.Event()
        # PEX pull (see _pex_pull): when the next one may go, and the wait after it.
        self._pull_wait = self.limits.pex_pull_interval
        self._pull_at = 0.0
        self._nursery: trio.Nursery | None = None
        self.handshakes_completed = 0
        self.first_handshake = trio.Event()
        self.messages_sent: dict[str, int] = {}
        # Node reports: this node's own and everyone else's (shell.net.reports).
        self.reports = ReportGossip(self, limits=options.limits, interval=options.report_interval)
        # Signed revocations (shell.net.yanks).
        self.yanks = YankGossip(self, options.limits)

    # -- lifecycle ------------------------------------------------------------
    @property
    def listen_addr(self) -> Addr:
        return (self.options.listen[0], self.listen_port)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "node is not running"
        return self._nursery

    def load_announcements(self) -> None:
        """Restore announcements persisted in the data dir (a restart keeps them).

        Each goes through the same checks as one from the network, with the trust
        settings and clock of *this* start: one whose signer was removed from the trust
        set, that expired meanwhile, or that is valid for longer than the current cap
        is refused (``update_refused``), its file removed, and never becomes the
        channel's newest, so it blocks no later release.
        """
        if self.options.data_dir is None:
            return
        directory = self.options.data_dir / "announcements"
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.ann")):
            try:
                ann = decode_announcement(path.read_bytes())
            except (OSError, RemoteProtocolError) as exc:
                log.warning("dropping unreadable stored announcement %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            decision = self.book.restore(ann, self.wall_clock())
            if not decision.ok:
                log.warning(
                    "dropping stored announcement %s %s: %s",
                    ann.body.channel,
                    ann.body.version,
                    decision.reason,
                )
                self._refused(None, ann, decision)
                path.unlink(missing_ok=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial, gossip until cancelled. ``task_status.started()`` once listening."""
        self.load_announcements()
        self.yanks.load()
        self.load_revocations()
        listener = await self.transport.listen(*self.options.listen)
        self.listener = listener
        self.listen_port = listener.port
        self.peerbook.mark_self(self.listen_addr)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._accept_loop, listener)
                nursery.start_soon(self._dial_loop)
                nursery.start_soon(self._anti_entropy_loop)
                nursery.start_soon(self.reports.run)
                nursery.start_soon(self._isolation_watch)
                task_status.started()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await listener.aclose()

    # -- accepting and dialing --------------------------------------------------
    async def _accept_loop(self, listener: Listener) -> None:
        while True:
            stream, host = await listener.accept()
            now = trio.current_time()
            verdict = "ip_banned" if self.peerbook.is_ip_banned(host, now) else "ok"
            if verdict == "ok":
                verdict = self.slots.handshake_verdict(host)
            if verdict == "evict_oldest":
                verdict = "ok" if self._evict_oldest_handshake() else "handshakes_full"
            if verdict != "ok":
                # Refused cheaply: no task, no handshake.
                self._log_throttled(
                    logging.DEBUG, "refused", host, "refusing %s: %s", host, verdict
                )
                with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                    await stream.aclose()
                continue
            # Counted here, before the task starts, so a burst of accepts sees it.
            self.slots.begin_handshake(host)
            self.nursery.start_soon(self._run_connection, stream, host, None)

    def _evict_oldest_handshake(self) -> bool:
        """Every handshake slot is busy: cancel the oldest pending inbound handshake.

        An honest peer finishes its handshake in a round trip; a silent socket waits
        for the timeout. Dropping the oldest keeps slots turning over for the honest.
        """
        if not self._pending:
            return False
        key = min(self._pending, key=lambda k: self._pending[k][0])
        _, scope = self._pending.pop(key)
        scope.cancel()
        return True

    async def _dial_loop(self) -> None:
        while True:
            now = trio.current_time()
            outbound = sum(1 for p in self.peers.values() if p.outbound)
            short = max(0, self.options.min_outbound - outbound)
            # Inbound peers count towards the target only as far as they leave room
            # for min_outbound dials of our own choosing (eclipse resistance).
            active = min(len(self.peers), max(0, self.options.target_connections - short))
            for addr in self.peerbook.to_dial(now, active, self._dialing):
                if not self.slots.may_dial():
                    break
                self._dialing.add(addr)
                self.nursery.start_soon(self._dial, addr)
            wait = self._pex_pull(now, active)
            deadline = self.peerbook.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.05, deadline - now))
            with trio.move_on_after(wait):
                await self._wake_dialer.wait()
            self._wake_dialer = trio.Event()

    def _pex_pull(self, now: float, active: int) -> float:
        """Below target with no address left to dial: send our PEERS to every peer, which
        answers with its own (``_send_pex``), first ``pex_pull_interval`` after we ran
        short, then at doubling intervals up to ``pex_interval``. Returns how long the
        dial loop may sleep (at most 1 s)."""
        if not self.peers or not self.peerbook.short_of_addresses(now, active, self._dialing):
            self._pull_wait = self.limits.pex_pull_interval
            self._pull_at = now + self._pull_wait
            return 1.0
        if now >= self._pull_at:
            for peer in list(self.peers.values()):
                self._send_pex(peer, now)
            self._pull_wait = min(2 * self._pull_wait, self.options.pex_interval)
            self._pull_at = now + self._pull_wait
        return max(0.05, min(1.0, self._pull_at - now))

    def _send_pex(self, peer: PeerConn, now: float) -> None:
        peer.pex_sent_at = now
        peer.post(Peers(self._pex_sample()))

    async def _dial(self, addr: Addr) -> None:
        try:
            try:
                with trio.fail_after(self.options.timeouts.handshake):
                    stream = await self.transport.connect(*addr)
            except (OSError, trio.TooSlowError) as exc:
                log.debug("dial %s:%s failed: %s", addr[0], addr[1], exc)
                self.peerbook.on_dial_failed(addr, trio.current_time())
                return
            await self._run_connection(stream, addr[0], addr)
        finally:
            self._dialing.discard(addr)

    # -- one connection --------------------------------------------------------
    async def _run_connection(
        self, stream: trio.abc.Stream, host: str, dialed: Addr | None
    ) -> None:
        conn = Connection(
            stream,
            host,
            outbound=dialed is not None,
            timeouts=self.options.timeouts,
            limits=self.limits,
        )
        self._connections += 1
        peer: PeerConn | None = None
        counted = False
        try:
            if dialed is None:
                # begin_handshake was called by the accept loop.
                token = object()
                scope = trio.CancelScope()
                self._pending[token] = (trio.current_time(), scope)
                try:
                    with scope:
                        hello = await self._handshake(conn)
                finally:
                    self._pending.pop(token, None)
                    self.slots.end_handshake(host)
                if scope.cancelled_caught:
                    log.debug("%s: pending handshake dropped for a newer one", conn.label)
                    return
            else:
                hello = await self._handshake(conn)
            peer = self._admit(conn, hello, dialed)
            if peer is None:
                return
            self.slots.begin_connection(host, peer.outbound)
            counted = True
            await self._serve_peer(peer)
        except RemoteProtocolError as exc:
            self._log_throttled(
                logging.INFO,
                "protocol_error",
                self._who(host, conn.hello.node_id if conn.hello else None),
                "%s: protocol error, closing: %s",
                conn.label,
                exc,
            )
            if not isinstance(exc, IncompatiblePeerError):
                self._strike(conn, str(exc))
            if dialed is not None and peer is None:
                self.peerbook.on_dial_failed(dialed, trio.current_time())
        except TransferError as exc:
            log.debug("%s: connection ended: %s", conn.label, exc)
            if dialed is not None and peer is None:
                self.peerbook.on_dial_failed(dialed, trio.current_time())
        except Exception:
            # A bug in handling one peer must not take the node down: say so loudly,
            # close this connection only, and keep serving everyone else.
            log.exception("%s: internal error, closing this connection", conn.label)
        finally:
            self._connections -= 1
            if counted:
                self.slots.end_connection(host, conn.outbound)
            if peer is not None:
                self._drop(peer)
            await conn.aclose()

    async def _handshake(self, conn: Connection) -> Hello:
        """TLS first when encryption is on, then HELLO/HELLO_PROOF bound to the channel."""
        binding = b""
        if self.tls is not None:
            conn.stream, binding = await self.tls.wrap(
                conn.stream, server_side=not conn.outbound, seconds=self.options.timeouts.handshake
            )
        return await conn.handshake(
            self._hello(),
            PROTOCOL_VERSION,
            self.key,
            binding=binding,
            admission=self.admission.raw if self.admission is not None else b"",
        )

    def _hello(self) -> Hello:
        return Hello(
            PROTOCOL_VERSION, self.node_id, self.listen_port, self.options.agent, new_nonce()
        )

    def _admit(self, conn: Connection, hello: Hello, dialed: Addr | None) -> PeerConn | None:
        now = trio.current_time()
        if hello.node_id == self.node_id:
            if dialed is not None:
                self.peerbook.mark_self(dialed)
            log.debug("closing a connection to ourselves")
            return None
        addr = dialed if dialed is not None else (conn.remote_host, hello.listen_port)
        configured = dialed is not None and self.peerbook.is_bootstrap(dialed)
        if self.peerbook.is_node_banned(hello.node_id, now) or (
            self.peerbook.is_banned(addr, now) and not configured
        ):
            log.debug("%s: banned peer, closing", conn.label)
            return None
        # The node id is proven (HELLO_PROOF): only its key holder gets this far.
        admission: Admission | None = None
        if self.fleet.enabled:
            admission, reason = self._membership(conn.admission, hello.node_id)
            if reason is not None:
                self._refuse_member(conn, hello.node_id, reason)
                if dialed is not None:
                    self.peerbook.on_dial_failed(dialed, now)
                return None
        existing = self.peers.get(hello.node_id)
        if existing is not None:
            # One connection per pair: keep the one dialed by the smaller node id.
            new_initiator = self.node_id if conn.outbound else hello.node_id
            old_initiator = self.node_id if existing.conn.outbound else hello.node_id
            if new_initiator == old_initiator or old_initiator < new_initiator:
                return None
            existing.close()
            self._drop(existing)
        elif dialed is None:
            verdict = self.slots.inbound_verdict(conn.remote_host)
            if verdict == "evict" and not self._evict_inbound():
                verdict = "inbound_full"
            if verdict not in ("ok", "evict"):
                self._log_throttled(
                    logging.DEBUG,
                    "refused",
                    conn.remote_host,
                    "refusing %s: %s",
                    conn.label,
                    verdict,
                )
                return None
        peer = PeerConn(conn, addr, configured=configured, now=now)
        peer.admission = admission
        self.peers[hello.node_id] = peer
        if hello.listen_port:
            self.peerbook.add(addr)
        self.peerbook.on_connected(addr)
        self.handshakes_completed += 1
        self.first_handshake.set()
        self._log_throttled(
            logging.INFO,
            "connected",
            self._who(peer.host, peer.node_id),
            "connected to %s (%s)",
            peer.label,
            hello.node_id.hex()[:16],
        )
        self.emit_peer(
            "peer_connected",
            self._who(peer.host, peer.node_id),
            peer=peer.label,
            peer_id=hello.node_id.hex(),
        )
        return peer

    # -- fleet membership ------------------------------------------------------------
    def _membership(self, raw: bytes, node_id: bytes) -> tuple[Admission | None, str | None]:
        """The peer's admission and None, or why it is not a member."""
        if not raw:
            return None, "no_admission"
        try:
            admission = decode_admission(raw, self.limits)
        except RemoteProtocolError:
            return None, "malformed_admission"
        return admission, self.fleet.check(admission, node_id, self.wall_clock())

    def _refuse_member(self, conn: Connection, node_id: bytes, reason: str) -> None:
        who = self._who(conn.remote_host, node_id)
        self._log_throttled(
            logging.INFO, "not_member", who, "refusing %s: not a member (%s)", conn.label, reason
        )
        self.emit_peer("peer_refused", who, peer=conn.label, peer_id=node_id.hex(), reason=reason)

    def is_member(self, node_id: bytes) -> bool:
        """Whether reports from or about ``node_id`` count: always in an open swarm; with
        membership on, only a node that showed a valid admission, not expired or revoked
        since. The hook for the fleet-report relay (issue 14)."""
        return node_id == self.node_id or self.fleet.is_member(node_id, self.wall_clock())

    def _pex_sample(self) -> tuple[Addr, ...]:
        """Addresses we share: any known one in an open swarm, only those of connected
        members when membership is on (we never hand out a non-member's address)."""
        if not self.fleet.enabled:
            return tuple(self.peerbook.sample(32))
        addrs = [p.addr for p in self.peers.values() if p.addr[1] and not p.closing]
        self.rng.shuffle(addrs)
        return tuple(addrs[:32])

    def recheck_members(self) -> None:
        """Close peers whose admission expired or was revoked since they connected."""
        if not self.fleet.enabled:
            return
        now = self.wall_clock()
        for peer in list(self.peers.values()):
            reason = self.fleet.check(peer.admission, peer.node_id, now)
            if reason is not None:
                self._refuse_member(peer.conn, peer.node_id, reason)
                peer.close()
                self._drop(peer)

    def load_revocations(self) -> None:
        """Revocation lists from the options and the data dir, checked as if from a peer."""
        if not self.fleet.enabled:
            return
        datas = list(self.options.revocations)
        directory = self.options.data_dir / "revocations" if self.options.data_dir else None
        if directory is not None and directory.is_dir():
            datas += [p.read_bytes() for p in sorted(directory.glob("*.rev"))]
        for data in datas:
            try:
                rev = decode_revocations(data, self.limits)
            except RemoteProtocolError as exc:
                log.warning("ignoring a stored revocation list: %s", exc)
                continue
            if self.fleet.offer(rev) is None:
                self._persist_revocations(rev.fleet_key, rev.raw)

    def _persist_revocations(self, fleet_key: bytes, raw: bytes) -> None:
        if self.options.data_dir is None:
            return
        directory = self.options.data_dir / "revocations"
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / (fleet_key.hex() + ".rev"), raw)

    async def _on_revoke(self, peer: PeerConn | None, data: bytes) -> bool:
        """A revocation list: taken if newer for one of our fleet keys, then relayed to
        every member and acted on (revoked peers are disconnected)."""
        if not self.fleet.enabled:
            return False
        rev = decode_revocations(data, self.limits)  # RemoteProtocolError closes the peer
        reason = self.fleet.offer(rev)
        if reason is not None:
            if reason == "bad_signature" and peer is not None:
                self._strike(peer.conn, "bad revocation signature")
            return False
        log.info(
            "revocation list of %s: %d node(s) revoked", rev.fleet_key.hex()[:16], len(rev.revoked)
        )
        self.emit(
            "revocations_received",
            fleet=rev.fleet_key.hex(),
            issued=rev.issued,
            revoked=len(rev.revoked),
            via=peer.label if peer is not None else None,
        )
        self.broadcast_all(Revoke(rev.raw), exclude=peer)
        await trio.to_thread.run_sync(self._persist_revocations, rev.fleet_key, rev.raw)
        self.recheck_members()
        return True

    async def inject_revocations(self, data: bytes) -> bool:
        """Take a revocation list from this process (a file, tests) and gossip it."""
        return await self._on_revoke(None, data)

    def _evict_inbound(self) -> bool:
        """Inbound slots are full: drop the least useful inbound peer (if any may go)."""
        candidates = [
            EvictionCandidate(
                p.node_id, p.host, p.outbound, p.configured, p.connected_at, p.last_useful
            )
            for p in self.peers.values()
            if not p.closing
        ]
        victim = choose_eviction(candidates, self.limits)
        if victim is None:
            return False
        peer = self.peers[victim.key]
        self._log_throttled(
            logging.INFO,
            "evicted",
            self._who(peer.host, peer.node_id),
            "evicting %s to make room",
            peer.label,
        )
        peer.close()
        self._drop(peer)
        return True

    def _who(self, host: str, node_id: bytes | None = None) -> str:
        """Whom a per-peer line is counted against: the IP, or on a shared host (the
        simulation's loopback, many honest nodes) the IP and the proven node id."""
        if node_id is None or not self.slots.exempt(host):
            return host
        return f"{host}/{node_id.hex()[:16]}"

    def _log_throttled(self, level: int, kind: str, who: str, msg: str, *args: object) -> None:
        """A per-peer log line, at most ``log_burst`` per kind and source per window."""
        if log.isEnabledFor(level) and self.throttle.allow(kind, who, trio.current_time()):
            log.log(level, msg, *args)

    def emit_peer(self, name: str, who: str, **fields: object) -> None:
        """A per-peer event, rate-limited per event name and source (count, summarise)."""
        if self.throttle.allow("event:" + name, who, trio.current_time()):
            self.emit(name, **fields)

    def flush_suppressed(self) -> None:
        """Write one summary per throttled key whose window has ended."""
        for s in self.throttle.summaries(trio.current_time()):
            if s.kind.startswith("event:"):
                self.emit("events_suppressed", event=s.kind[6:], source=s.peer, count=s.count)
            else:
                log.info("%d more %r lines from %s suppressed", s.count, s.kind, s.peer)

    def _drop(self, peer: PeerConn) -> None:
        if self.peers.get(peer.node_id) is peer:
            del self.peers[peer.node_id]
            self.emit_peer(
                "peer_disconnected",
                self._who(peer.host, peer.node_id),
                peer=peer.label,
                peer_id=peer.node_id.hex(),
            )
            self.peerbook.on_disconnected(peer.addr, trio.current_time())
            self.reports.on_peer_down(peer)
            if self.package_service is not None:
                self.package_service.on_peer_down(peer)
            self._wake_dialer.set()

    async def _serve_peer(self, peer: PeerConn) -> None:
        try:
            await self._serve_peer_tasks(peer)
        except BaseExceptionGroup as group:
            raise peer_error(group) from None

    async def _serve_peer_tasks(self, peer: PeerConn) -> None:
        with peer.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, peer)
                nursery.start_soon(self._keepalive, peer)
                peer.post(Inventory(self.book.inventory()))
                self._send_pex(peer, trio.current_time())
                for rev in self.fleet.lists.values():
                    peer.post(Revoke(rev.raw))
                self.reports.on_peer_up(peer)
                self.yanks.on_peer_up(peer)
                if self.package_service is not None:
                    self.package_service.on_peer_up(peer)
                    nursery.start_soon(self.package_service.run_peer, peer)
                while True:
                    msg = await peer.conn.receive()
                    await self._dispatch(peer, msg)

    async def _writer(self, peer: PeerConn) -> None:
        try:
            await peer.writer()
        except TransferError as exc:
            log.debug("%s: %s", peer.label, exc)
            peer.close()

    async def _keepalive(self, peer: PeerConn) -> None:
        while True:
            await trio.sleep(self.options.timeouts.keepalive)
            peer.post(Ping(self.rng.getrandbits(32)))

    def _strike(self, conn: Connection, reason: str) -> None:
        """A protocol offence: counted against the observed IP and the proven node id.

        ``conn.hello`` is set only once the handshake proved the node id, so a peer
        that fails the proof is charged to its IP alone. The claimed listen port is
        never the key: rotating it evades nothing.
        """
        host = conn.remote_host
        node_id = conn.hello.node_id if conn.hello is not None else None
        now = trio.current_time()
        verdict = self.peerbook.strike(host, node_id, now, shared=self.slots.exempt(host))
        if verdict.ban_node and conn.hello is not None:
            self.ban(conn.listen_addr, conn.hello.node_id, f"protocol errors: {reason}")
        if verdict.ban_ip and not self.peerbook.is_ip_banned(host, now):
            self.ban_ip(host, f"repeated protocol errors: {reason}")

    def strike(self, peer: PeerConn, reason: str) -> None:
        """Count one strike against a connected peer (banned at ``Limits.strikes_to_ban``)."""
        self._strike(peer.conn, reason)

    def ban(self, addr: Addr, node_id: bytes, reason: str) -> None:
        """Ban a peer's node id and (IP, listen port) for the ban period; close it."""
        until = trio.current_time() + self.options.ban_period
        self.peerbook.ban(addr, node_id, until)
        self._log_throttled(
            logging.WARNING,
            "ban",
            self._who(addr[0], node_id),
            "banning %s (%s): %s",
            format_addr(*addr),
            node_id.hex()[:16],
            reason,
        )
        self.emit_peer(
            "peer_banned",
            self._who(addr[0], node_id),
            peer=format_addr(*addr),
            node=node_id.hex(),
            reason=reason,
        )
        peer = self.peers.get(node_id)
        if peer is not None:
            peer.close()

    def ban_ip(self, host: str, reason: str) -> None:
        """Ban a whole IP (never a shared host; never our dials to configured peers)."""
        until = trio.current_time() + self.options.ban_period
        self.peerbook.ban_ip(host, until)
        log.warning("banning every peer at %s: %s", host, reason)
        self.emit("ip_banned", ip=host, reason=reason)
        for peer in list(self.peers.values()):
            if peer.host == host and not peer.configured:
                peer.close()

    # -- messages ----------------------------------------------------------------
    async def _dispatch(self, peer: PeerConn, msg: Message) -> None:
        if isinstance(msg, Ping):
            peer.post(Pong(msg.nonce))
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Peers):
            source = netgroup(peer.host)
            added = sum(self.peerbook.add(a, source) for a in msg.peers)
            if added:
                self._wake_dialer.set()
            now = trio.current_time()
            if now - peer.pex_sent_at >= self.limits.pex_reply_interval:
                self._send_pex(peer, now)  # a pull (or news): answer with what we know
        elif isinstance(msg, Inventory):
            for ann_id in self.book.wants(msg.entries):
                peer.post(GetAnnounce(ann_id))
        elif isinstance(msg, GetAnnounce):
            ann = self.book.by_id(msg.announcement_id)
            if ann is not None:
                peer.post(Announce(ann.encode()))
        elif isinstance(msg, Announce):
            await self._on_announce(peer, msg.data)
        elif isinstance(msg, (Report, ReportSummary)):
            await self.reports.handle(peer, msg)
        elif isinstance(msg, Yank):
            await self.yanks.handle(peer, msg.data)
        elif isinstance(msg, Revoke):
            await self._on_revoke(peer, msg.data)
        elif isinstance(msg, Hello):
            raise RemoteProtocolError("HELLO after the handshake")
        elif self.package_service is None or not await self.package_service.handle(peer, msg):
            log.debug("%s: ignoring %s", peer.label, type(msg).__name__)

    async def _on_announce(self, peer: PeerConn | None, data: bytes) -> Decision | None:
        ann = decode_announcement(data)  # RemoteProtocolError closes the connection
        if self.book.seen_message(ann):
            return None
        decision = self.book.offer(ann, self.wall_clock())
        if not decision.ok:
            self._refused(peer, ann, decision)
            return decision
        if peer is not None:
            peer.mark_useful(trio.current_time())
        # Forward first, persist at the same time: duplicates are harmless.
        self.broadcast(Announce(ann.encode()), exclude=peer)
        self.nursery.start_soon(self._persist_announcement, ann)
        self.emit(
            "announcement_received",
            channel=ann.body.channel,
            version=ann.body.version,
            package_id=ann.body.package_id.hex(),
            size=ann.body.size,
            announcement_id=ann.id.hex(),
            critical=ann.body.critical,
            via=peer.label if peer is not None else None,
        )
        if self.on_announcement is not None:
            await self.on_announcement(ann, peer)
        return decision

    def _refused(self, peer: PeerConn | None, ann: Announcement, decision: Decision) -> None:
        body = ann.body
        if decision.reason == "duplicate":
            return
        if decision.reason == "equivocation":
            log.error(
                "EQUIVOCATION: the authority signed two packages for %s %s; refusing %s",
                body.channel,
                body.version,
                body.package_id.hex(),
            )
        elif peer is not None:  # per peer: throttled (signing junk announcements is cheap)
            self._log_throttled(
                logging.INFO,
                "refused_announcement",
                self._who(peer.host, peer.node_id),
                "not relaying %s %s: %s",
                body.channel,
                body.version,
                decision.reason,
            )
        else:
            log.info("not relaying %s %s: %s", body.channel, body.version, decision.reason)
        if decision.reason in ("bad_signature",) and peer is not None:
            self._strike(peer.conn, "bad signature")
        fields: dict[str, object] = {
            "channel": body.channel,
            "version": body.version,
            "package_id": body.package_id.hex(),
            "reason": decision.reason,
            "relay": False,
        }
        if peer is None:
            self.emit("update_refused", **fields)
        else:  # per peer: throttled, like the log line
            self.emit_peer("update_refused", self._who(peer.host, peer.node_id), **fields)

    async def inject(self, ann: Announcement) -> Decision | None:
        """Accept an announcement from this process (publish, tests) and gossip it."""
        return await self._on_announce(None, ann.encode())

    def broadcast(self, msg: Message, *, exclude: PeerConn | None = None) -> None:
        """Send to connected peers except ``exclude`` (a random fan-out when many)."""
        targets = choose_fanout(
            list(self.peers.values()), self.rng, exclude=exclude, fanout=self.options.fanout
        )
        name = type(msg).__name__
        for p in targets:
            if p.post(msg):
                self.messages_sent[name] = self.messages_sent.get(name, 0) + 1

    def reload_trust(self, trust: TrustConfig) -> list[Announcement]:
        """New trust settings from a config reload (SIGHUP), with no connection dropped.

        Announcements held under keys no longer trusted are dropped as at a restart
        (``update_refused``, their stored file removed): a key removed from the trust
        set is revoked at once. Anti-entropy runs at once so announcements of newly
        trusted keys are pulled from the peers. Returns the dropped announcements.
        """
        self.options = dataclasses.replace(self.options, trust=trust)
        dropped = self.book.retrust(trust, self.wall_clock())
        for ann, decision in dropped:
            log.warning(
                "reload: dropping %s %s: %s", ann.body.channel, ann.body.version, decision.reason
            )
            self._refused(None, ann, decision)
            if self.options.data_dir is not None:
                name = ann.body.channel.replace("/", "+") + ".ann"
                (self.options.data_dir / "announcements" / name).unlink(missing_ok=True)
        # One anti-entropy round now: peers answer with what we lack under the new keys.
        self.broadcast_all(Inventory(self.book.inventory()))
        return [ann for ann, _ in dropped]

    async def _persist_announcement(self, ann: Announcement) -> None:
        if self.options.data_dir is None:
            return
        directory = self.options.data_dir / "announcements"
        name = ann.body.channel.replace("/", "+") + ".ann"

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(directory / name, ann.encode())

        await trio.to_thread.run_sync(write)

    async def _anti_entropy_loop(self) -> None:
        last_pex = trio.current_time()
        while True:
            await trio.sleep(self.options.check_interval)
            for gone in self.book.expire(self.wall_clock()):
                log.info("announcement %s %s expired", gone.body.channel, gone.body.version)
            self.peerbook.lift_expired_bans(trio.current_time())
            self.recheck_members()
            self.flush_suppressed()
            if self.options.auto_check:
                self.broadcast_all(Inventory(self.book.inventory()))
            if trio.current_time() - last_pex >= self.options.pex_interval and self.peers:
                last_pex = trio.current_time()
                target = self.rng.choice(list(self.peers.values()))
                self._send_pex(target, trio.current_time())

    async def _isolation_watch(self) -> None:
        """One WARNING once the node has had no connected peer for a while (again only
        after it had one in between): names the peers it cannot reach."""
        alone_since = trio.current_time()
        warned = False
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            if self.peers:
                alone_since, warned = now, False
                continue
            if not warned and now - alone_since >= self.options.limits.isolation_warning:
                warned = True
                known = sorted(format_addr(*a) for a in self.peerbook.known())
                names = ", ".join(known[:10]) + (
                    f" and {len(known) - 10} more" if len(known) > 10 else ""
                )
                log.warning(
                    "no connected peer for %.0f s; cannot reach %s",
                    now - alone_since,
                    names or "any peer (none known: give --peer)",
                )

    def broadcast_all(self, msg: Message, *, exclude: PeerConn | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not exclude:
                p.post(msg)

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "listen": format_addr(*self.listen_addr),
            "peers": sorted(p.label for p in self.peers.values()),
            "known_peers": len(self.peerbook.known()),
            "encrypted": self.tls is not None,
            "fleet": self.fleet_status(),
        }

    def fleet_status(self) -> dict[str, Any] | None:
        """Membership for ``status``: fleet keys, our admission, an expiry warning."""
        if not self.fleet.enabled:
            return None
        adm = self.admission
        now = self.wall_clock()
        return {
            "fleet_keys": sorted(k.hex() for k in self.fleet.fleet_keys),
            "admission_fleet": adm.fleet_key.hex() if adm else None,
            "admission_expires": adm.expires if adm else None,
            "warning": self.fleet.expiry_warning(adm, now) if adm else "no admission",
            "revoked": sum(len(r.revoked) for r in self.fleet.lists.values()),
        }
