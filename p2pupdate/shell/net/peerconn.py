"""A connection after its handshake (:class:`PeerConn`), and what serves it.

:class:`PeerConn` holds one peer's bounded outbox and its bookkeeping (eviction,
strikes); :func:`peer_error` picks the one error a connection's task group failed
with; :class:`PackageService` is what the node needs from the swarm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.codec import encode
from p2pupdate.core.fleet import Admission
from p2pupdate.core.membership import Addr, format_addr
from p2pupdate.core.messages import Message
from p2pupdate.errors import RemoteProtocolError, TransferError
from p2pupdate.shell.net.peer import Buffer, Connection

__all__ = ["EmitFn", "PackageService", "PeerConn", "peer_error"]

log = logging.getLogger("p2pupdate.node")

EmitFn = Callable[..., object]


# Outbox depth per connection (Limits.outbox_size says why).
OUTBOX_SIZE = DEFAULT_LIMITS.outbox_size
# Queued frames are coalesced into writes of up to this many bytes.
WRITE_BATCH = 64 * 1024


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

    async def send_chunk(self, package_id: bytes, index: int, data: Buffer) -> None:
        """Send a CHUNK now without copying ``data`` into a frame (reusable on return)."""
        await self.conn.send_chunk(package_id, index, data)

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
            await self.conn.send_frames(frames)  # one writev, no join on plain TCP


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
