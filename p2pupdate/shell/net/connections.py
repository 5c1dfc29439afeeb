"""The node's connections: accepting, dialing, handshake, admission, serving a peer.

Every inbound connection passes the IP ban and the handshake slots before any task
starts; every connection then runs the same loops: a reader that feeds one message
at a time to the node's dispatcher, a writer that drains a bounded outbox (so one
slow peer never holds up gossip to the others), and a keepalive. Any error closes
that connection only; a protocol error also strikes the peer.
"""

from __future__ import annotations

import logging

import trio

from p2pupdate.core.fleet import Admission
from p2pupdate.core.membership import Addr
from p2pupdate.core.messages import PROTOCOL_VERSION, Hello, Inventory, Message, Ping, Revoke
from p2pupdate.core.reasons import Reason
from p2pupdate.errors import IncompatiblePeerError, RemoteProtocolError, TransferError
from p2pupdate.shell.net.members import FleetMembership
from p2pupdate.shell.net.peer import Connection, new_nonce
from p2pupdate.shell.net.peerconn import PeerConn, peer_error
from p2pupdate.shell.net.transport import Listener

__all__ = ["Connections"]

log = logging.getLogger("p2pupdate.node")


class Connections(FleetMembership):
    """Accept, dial, handshake, admit and serve peers; :meth:`_dispatch` is the node's."""

    async def _dispatch(self, peer: PeerConn, msg: Message) -> None:
        raise NotImplementedError  # the node's message dispatch (shell.net.node)

    # -- accepting and dialing --------------------------------------------------
    async def _accept_loop(self, listener: Listener) -> None:
        while True:
            stream, host = await listener.accept()
            now = trio.current_time()
            verdict: str = Reason.IP_BANNED if self.peerbook.is_ip_banned(host, now) else "ok"
            if verdict == "ok":
                verdict = self.slots.handshake_verdict(host)
            if verdict == "evict_oldest":
                verdict = "ok" if self._evict_oldest_handshake() else Reason.HANDSHAKES_FULL
            if verdict != "ok":
                # Refused cheaply: no task, no handshake.
                self._log_throttled(
                    logging.DEBUG, Reason.REFUSED, host, "refusing %s: %s", host, verdict
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
        answers with its own (``_dispatch``), first ``pex_pull_interval`` after we ran
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
                verdict = Reason.INBOUND_FULL
            if verdict not in ("ok", "evict"):
                self._log_throttled(
                    logging.DEBUG,
                    Reason.REFUSED,
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
