"""The node's state and the per-peer bookkeeping every part of it shares.

:class:`NodeBase` holds what a :class:`~p2pupdate.shell.net.node.Node` knows (the
peers, the announcement and peer books, connection slots, fleet policy, throttle)
and does what every concern of the node needs: rate-limited per-peer log lines and
events, dropping a peer, broadcasting, and strikes and bans (an offence found by
the handshake, the announcement gossip, the fleet gossip or the swarm ends here).
The concerns themselves live beside it: :mod:`.connections` (accepting, dialing,
handshake, admission), :mod:`.members` (fleet membership), :mod:`.announcements`
(announcement gossip); :mod:`.node` puts them together.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import nacl.signing
import trio

from p2pupdate.core.admission import ConnectionSlots, EvictionCandidate, choose_eviction
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.fleet import Admission, FleetPolicy, decode_admission
from p2pupdate.core.gossip import AnnouncementBook, choose_fanout
from p2pupdate.core.membership import Addr, PeerBook, format_addr
from p2pupdate.core.messages import Message
from p2pupdate.core.reasons import Reason
from p2pupdate.core.throttle import Throttle
from p2pupdate.shell.net.options import NodeOptions
from p2pupdate.shell.net.peer import Connection
from p2pupdate.shell.net.peerconn import EmitFn, PackageService, PeerConn
from p2pupdate.shell.net.reports import ReportGossip
from p2pupdate.shell.net.tls import TlsIdentity
from p2pupdate.shell.net.transport import Listener, Transport
from p2pupdate.shell.net.yanks import YankGossip

__all__ = ["NodeBase"]

log = logging.getLogger("p2pupdate.node")


class NodeBase:
    """What a node holds, and the per-peer bookkeeping its parts share (module doc)."""

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
        # PEX pull (shell.net.connections): when the next one may go, and the wait after it.
        self._pull_wait = options.limits.pex_pull_interval
        self._pull_at = 0.0
        self._nursery: trio.Nursery | None = None
        self.handshakes_completed = 0
        self.first_handshake = trio.Event()
        self.messages_sent: dict[str, int] = {}
        # Node reports: this node's own and everyone else's (shell.net.reports).
        self.reports = ReportGossip(self, limits=options.limits, interval=options.report_interval)
        # Signed revocations (shell.net.yanks).
        self.yanks = YankGossip(self, options.limits)

    @property
    def listen_addr(self) -> Addr:
        return (self.options.listen[0], self.listen_port)

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "node is not running"
        return self._nursery

    def _who(self, host: str, node_id: bytes | None = None) -> str:
        """Whom a per-peer line is counted against: the IP, or on a shared host (the
        simulation's loopback, many honest nodes) the IP and the proven node id."""
        if node_id is None or not self.slots.exempt(host):
            return host
        return f"{host}/{node_id.hex()[:16]}"

    def _log_throttled(self, level: int, kind: str, who: str, msg: str, *args: object) -> None:
        """A per-peer log line, at most ``log_burst`` per kind and source per window."""
        kind = str(kind)  # a Reason counts (and is summarised) as its plain code
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
            self.ban(conn.listen_addr, conn.hello.node_id, Reason.PROTOCOL_ERRORS, reason)
        if verdict.ban_ip and not self.peerbook.is_ip_banned(host, now):
            self.ban_ip(host, Reason.PROTOCOL_ERRORS, reason)

    def strike(self, peer: PeerConn, reason: str) -> None:
        """Count one strike against a connected peer (banned at ``Limits.strikes_to_ban``)."""
        self._strike(peer.conn, reason)

    def ban(self, addr: Addr, node_id: bytes, reason: str, detail: str = "") -> None:
        """Ban a peer's node id and (IP, listen port) for the ban period; close it.

        ``reason`` is a code (:class:`Reason`), ``detail`` free words about it."""
        until = trio.current_time() + self.options.ban_period
        self.peerbook.ban(addr, node_id, until)
        self._log_throttled(
            logging.WARNING,
            "ban",
            self._who(addr[0], node_id),
            "banning %s (%s): %s%s",
            format_addr(*addr),
            node_id.hex()[:16],
            reason,
            f" ({detail})" if detail else "",
        )
        self.emit_peer(
            "peer_banned",
            self._who(addr[0], node_id),
            peer=format_addr(*addr),
            node=node_id.hex(),
            reason=str(reason),
            detail=detail,
        )
        peer = self.peers.get(node_id)
        if peer is not None:
            peer.close()

    def ban_ip(self, host: str, reason: str, detail: str = "") -> None:
        """Ban a whole IP (never a shared host; never our dials to configured peers)."""
        until = trio.current_time() + self.options.ban_period
        self.peerbook.ban_ip(host, until)
        log.warning("banning every peer at %s: %s (%s)", host, reason, detail)
        self.emit("ip_banned", ip=host, reason=str(reason), detail=detail)
        for peer in list(self.peers.values()):
            if peer.host == host and not peer.configured:
                peer.close()

    def broadcast(self, msg: Message, *, exclude: PeerConn | None = None) -> None:
        """Send to connected peers except ``exclude`` (a random fan-out when many)."""
        targets = choose_fanout(
            list(self.peers.values()), self.rng, exclude=exclude, fanout=self.options.fanout
        )
        name = type(msg).__name__
        for p in targets:
            if p.post(msg):
                self.messages_sent[name] = self.messages_sent.get(name, 0) + 1

    def broadcast_all(self, msg: Message, *, exclude: PeerConn | None = None) -> None:
        for p in list(self.peers.values()):
            if p is not exclude:
                p.post(msg)

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
