"""In-process nodes with swarms, for swarm tests (real TCP on 127.0.0.1 or in memory)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import trio

from p2pupdate.core.announcement import Announcement, AnnouncementBody, sign_announcement
from p2pupdate.core.chunks import ContentInfo
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.peer import Timeouts
from p2pupdate.shell.net.transport import TcpTransport, Transport
from p2pupdate.shell.transfer.memstore import MemoryStore
from p2pupdate.shell.transfer.store import ChunkStore
from p2pupdate.shell.transfer.swarm import Swarm, SwarmOptions
from tests.helpers import content_of

AUTHORITY = nacl.signing.SigningKey(b"\x07" * 32)
TRUST = TrustConfig(frozenset({bytes(AUTHORITY.verify_key)}))
FAST = Timeouts(handshake=2, idle=10, frame=5, send=10, keepalive=2)


@dataclass
class Peer:
    node: Node
    swarm: Swarm
    store: ChunkStore
    events: list[tuple[str, dict[str, object]]]


def package(size: int, seed: int = 1) -> tuple[bytes, ContentInfo, Announcement]:
    data = random.Random(seed).randbytes(size)
    info = content_of(data)
    import time

    now = int(time.time())
    body = AnnouncementBody(
        channel="app/stable",
        version="2.0.0",
        package_id=info.package_id,
        size=info.size,
        table_root=info.root,
        created=now,
        expires=now + 3600,
    )
    return data, info, sign_announcement(body, [AUTHORITY])


async def start_peer(
    nursery: trio.Nursery,
    i: int,
    peers: list[tuple[str, int]],
    *,
    store: ChunkStore | None = None,
    transport: Transport | None = None,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    swarm_options: SwarmOptions | None = None,
    data_dir: Path | None = None,
    seed: int | None = None,
) -> Peer:
    events: list[tuple[str, dict[str, object]]] = []

    def emit(name: str, **fields: object) -> None:
        events.append((name, fields))

    options = NodeOptions(
        listen=listen,
        trust=TRUST,
        peers=tuple(peers),
        timeouts=FAST,
        check_interval=0.3,
        data_dir=data_dir,
    )
    key = nacl.signing.SigningKey(os.urandom(32) if seed is None else bytes([seed]) * 32)
    node = Node(options, transport or TcpTransport(), key, emit=emit, rng=random.Random(i))
    st = store if store is not None else MemoryStore()
    swarm = Swarm(
        node, st, swarm_options or SwarmOptions(request_timeout=2.0), rng=random.Random(i)
    )
    await nursery.start(node.run)
    return Peer(node, swarm, st, events)


async def seed_with(peer: Peer, ann: Announcement, info: ContentInfo, data: bytes) -> None:
    """Make ``peer`` hold the complete package (as a publisher would)."""
    assert isinstance(peer.store, MemoryStore)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    peer.store.add_complete_chunks(info.package_id, chunks)
    peer.swarm.set_table(ann, list(info.chunk_hashes))
    await peer.swarm.add_complete(ann)
    await peer.node.inject(ann)


async def read_all(store: ChunkStore, info: ContentInfo) -> bytes:
    parts = []
    for i in range(info.nchunks):
        length = min(65536, info.size - i * 65536)
        parts.append(await store.read_chunk(info.package_id, i, length))
    return b"".join(parts)


async def wait_connected(peers: list[Peer], n: int, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while any(len(p.node.peers) < n for p in peers):
            await trio.sleep(0.02)
