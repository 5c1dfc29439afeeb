"""What the report and yank gossip need of the node (:class:`GossipHost`).

:mod:`shell.net.reports` and :mod:`shell.net.yanks` are carried by the node and
talk back to it; they depend on this small protocol, not on the node itself, so
the imports run one way only (node -> reports/yanks -> host).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

import nacl.signing
import trio

from p2pupdate.core.gossip import AnnouncementBook
from p2pupdate.core.membership import Addr
from p2pupdate.core.messages import Message
from p2pupdate.shell.net.options import NodeOptions
from p2pupdate.shell.net.peerconn import PeerConn

__all__ = ["GossipHost"]


class GossipHost(Protocol):
    """The node as seen by a gossip it carries (reports, yanks)."""

    options: NodeOptions
    key: nacl.signing.SigningKey
    node_id: bytes
    rng: random.Random
    wall_clock: Callable[[], float]
    book: AnnouncementBook
    peers: dict[bytes, PeerConn]
    messages_sent: dict[str, int]

    @property
    def listen_addr(self) -> Addr: ...

    @property
    def nursery(self) -> trio.Nursery: ...

    def broadcast(self, msg: Message, *, exclude: PeerConn | None = None) -> None:
        """Send to a fan-out of connected peers except ``exclude``."""
        ...

    def strike(self, peer: PeerConn, reason: str) -> None:
        """Count one protocol offence against a connected peer."""
        ...
