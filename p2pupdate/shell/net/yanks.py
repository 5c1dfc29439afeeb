"""Carrying yanks (signed revocations, ``core.yank``) over the gossip.

:class:`YankGossip` keeps every accepted yank (newest first past
``Limits.max_yanks``), persists each in ``DATA_DIR/yanks/`` and re-checks them at
start under the node's current trust settings, sends them all to every new peer,
relays a new one to every connected peer, and tells its listeners (the agent,
which refuses and rolls back). A yank that fails the signature rules is dropped
and strikes its sender, as a bad announcement does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.messages import Yank as YankMsg
from p2pupdate.core.yank import Yank, decode_yank, yank_decision
from p2pupdate.errors import RemoteProtocolError
from p2pupdate.shell.fsutil import atomic_write_bytes
from p2pupdate.shell.net.host import GossipHost
from p2pupdate.shell.net.peerconn import PeerConn

__all__ = ["YankGossip"]

log = logging.getLogger("p2pupdate.yank")


class YankGossip:
    def __init__(self, node: GossipHost, limits: Limits = DEFAULT_LIMITS) -> None:
        self.node = node
        self.limits = limits
        self._yanks: dict[bytes, Yank] = {}
        self.listeners: list[Callable[[Yank], None]] = []

    def yanked(self, channel: str, version: str) -> Yank | None:
        for y in self._yanks.values():
            if y.body.channel == channel and y.body.version == version:
                return y
        return None

    def all(self) -> list[Yank]:
        return list(self._yanks.values())

    def load(self) -> None:
        """Yanks stored in the data dir, each checked as if it had just arrived."""
        if self.node.options.data_dir is None:
            return
        directory = self.node.options.data_dir / "yanks"
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.yank")):
            try:
                yank = decode_yank(path.read_bytes(), self.limits)
            except (OSError, RemoteProtocolError) as exc:
                log.warning("dropping unreadable stored yank %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            if yank_decision(yank, self.node.book.trust, self.node.wall_clock()).ok:
                self._keep(yank)
            else:
                path.unlink(missing_ok=True)

    def _keep(self, yank: Yank) -> None:
        self._yanks[yank.id] = yank
        while len(self._yanks) > self.limits.max_yanks:
            oldest = min(self._yanks.values(), key=lambda y: y.body.created)
            del self._yanks[oldest.id]

    def on_peer_up(self, peer: PeerConn) -> None:
        for yank in self._yanks.values():
            peer.post(YankMsg(yank.encode()))

    async def handle(self, peer: PeerConn | None, data: bytes) -> bool:
        """A YANK from ``peer`` (None: this process). True if it was new and accepted."""
        yank = decode_yank(data, self.limits)  # RemoteProtocolError closes the connection
        if yank.id in self._yanks:
            return False
        decision = yank_decision(yank, self.node.book.trust, self.node.wall_clock())
        if not decision.ok:
            log.info("refusing a yank of %s %s: %s", yank.body.channel, yank.body.version,
                     decision.reason)  # fmt: skip
            if peer is not None and decision.reason == "bad_signature":
                self.node.strike(peer, "bad yank signature")
            return False
        self._keep(yank)
        for p in list(self.node.peers.values()):
            if p is not peer:
                p.post(YankMsg(yank.encode()))
        await self._persist(yank)
        for fn in list(self.listeners):
            fn(yank)
        return True

    async def _persist(self, yank: Yank) -> None:
        data_dir = self.node.options.data_dir
        if data_dir is None:
            return
        directory = data_dir / "yanks"
        name = yank.id.hex() + ".yank"

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(directory / name, yank.encode())

        await trio.to_thread.run_sync(write)
