"""The node's network side: listener, dialer, handshake, membership, gossip.

A :class:`Node` is a library object: several run in one trio run in tests,
and ``p2pupdate node`` wraps one. It receives a Transport (TCP or in-memory)
and never opens sockets itself. Protocol decisions live in the pure core
(``core.gossip``, ``core.membership``, ``core.policy``); the shell carries them
out. Package transfer is delegated to a :class:`PackageService`
(``shell.transfer.swarm``); what to do with an accepted announcement is
delegated to an ``on_announcement`` callback (the agent).

The node is split by concern, one module each, put together here:

- :mod:`.nodebase`: the state, per-peer throttled logs/events, drop, strikes, bans;
- :mod:`.connections`: accept and dial loops, handshake, admission, serving a peer
  (reader, writer with a bounded outbox, keepalive);
- :mod:`.members`: fleet membership and revocation lists;
- :mod:`.announcements`: announcement gossip (take, relay, persist, refuse);
- :mod:`.reports` and :mod:`.yanks`: node reports and yanks, carried by the node
  through the small :class:`~p2pupdate.shell.net.host.GossipHost` protocol.

The concerns share one state (the peers, the books), so they are mixins of one
class rather than objects passing the node around; each stays under 300 lines.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from p2pupdate.core.admission import netgroup
from p2pupdate.core.membership import format_addr
from p2pupdate.core.messages import (
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
from p2pupdate.errors import RemoteProtocolError
from p2pupdate.shell.net.announcements import AnnouncementGossip
from p2pupdate.shell.net.connections import Connections
from p2pupdate.shell.net.options import NodeOptions
from p2pupdate.shell.net.peerconn import EmitFn, PackageService, PeerConn, peer_error

__all__ = ["EmitFn", "Node", "NodeOptions", "PackageService", "PeerConn", "peer_error"]

log = logging.getLogger("p2pupdate.node")


class Node(Connections, AnnouncementGossip):
    """One node: its connections, fleet membership and announcement gossip together.

    The concerns live in their own modules (see the module doc); this class runs
    them (:meth:`run`), routes each message to its handler (:meth:`_dispatch`) and
    keeps the periodic duties (anti-entropy, ban expiry, isolation warning).
    """

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

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "listen": format_addr(*self.listen_addr),
            "peers": sorted(p.label for p in self.peers.values()),
            "known_peers": len(self.peerbook.known()),
            "encrypted": self.tls is not None,
            "fleet": self.fleet_status(),
        }
