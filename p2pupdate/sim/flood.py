"""A message flood from many fresh node ids, for memory checks of a running node.

Each worker loops until the deadline: it opens a connection, passes the
handshake with a freshly generated node key, sends batches of one message type
(every type in turn, or the kinds asked for), and after each batch a PING it
waits the PONG of - so the flood runs at the speed the node handles it, never
just filling socket buffers - then closes and starts over with a new key.
Half the workers keep one connection for the whole flood (what a per-connection
structure would grow with); the others churn through fresh node ids (what a
per-node-id structure would). Package ids come from one shared pool, so many
node ids advertise the same unknown packages.
``rate`` caps the messages per second of all workers together (0: as fast as
the node answers). Everything the node sends is read and dropped.

The message bodies are what costs a node memory if it keeps them: BITFIELDs of
unknown 4 GiB packages (8 KiB each), CANCELs and REQUESTs for random chunks,
HAVEs, PEERS full of fake addresses, INVENTORY and GET_* for unknown ids,
ANNOUNCEs with bad signatures, TABLE and CHUNK nobody asked for, COMPLETE.
Used by ``tests/e2e/test_hostile_flood.py`` (a few seconds) and
``benchmarks/bench_flood.py`` (60 s). Loopback only; meant for tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import nacl.signing
import trio

from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.handshake import sign_proof
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    Announce,
    Bitfield,
    Cancel,
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
    Reject,
    Request,
    Table,
)
from p2pupdate.errors import RemoteProtocolError

__all__ = ["KINDS", "FloodStats", "flood", "make_message"]

KINDS = (
    "bitfield",
    "cancel",
    "request",
    "have",
    "peers",
    "inventory",
    "get_announce",
    "get_table",
    "announce",
    "table",
    "chunk",
    "reject",
    "complete",
)


def make_message(kind: str, rng: random.Random, pool: list[bytes] | None = None) -> Message:
    """One message of ``kind`` with random ids (never anything the node holds);
    package ids from ``pool`` if given."""
    pid = rng.choice(pool) if pool else rng.randbytes(32)
    if kind == "bitfield":
        return Bitfield(pid, 65536, b"\xff" * 8192)
    if kind == "cancel":
        return Cancel(pid, rng.randrange(65536))
    if kind == "request":
        return Request(pid, rng.randrange(65536))
    if kind == "have":
        return Have(pid, tuple(rng.randrange(65536) for _ in range(512)))
    if kind == "peers":
        # Loopback addresses with a closed port: the node may dial them (and fail at
        # once); a test never sends traffic off the machine.
        return Peers(
            tuple((f"127.{rng.randrange(256)}.{rng.randrange(256)}.1", 1) for _ in range(200))
        )
    if kind == "inventory":
        return Inventory(tuple((f"c{i}/x", rng.randbytes(32)) for i in range(50)))
    if kind == "get_announce":
        return GetAnnounce(pid)
    if kind == "get_table":
        return GetTable(pid, rng.randrange(-1, 32))
    if kind == "announce":
        return Announce(rng.randbytes(400))
    if kind == "table":
        return Table(pid, 0, rng.randbytes(32 * 2048))
    if kind == "chunk":
        return Chunk(pid, rng.randrange(65536), rng.randbytes(65536))
    if kind == "reject":
        return Reject(pid, rng.randrange(65536))
    if kind == "complete":
        return Complete(pid)
    raise ValueError(f"unknown flood kind {kind!r}")


@dataclass
class FloodStats:
    connections: int = 0
    refused: int = 0  # connections closed before or during the handshake
    dropped: int = 0  # connections the node closed later (protocol error, ban, eviction)
    messages: int = 0
    bytes_sent: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def recv(self) -> Message | None:
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(1 << 18)
            if not data:
                return None
            self.decoder.receive_data(data)


async def flood(
    addr: tuple[str, int],
    *,
    seconds: float,
    kinds: tuple[str, ...] = KINDS,
    workers: int = 8,
    batch: int = 32,
    batches_per_connection: int = 8,
    rate: float = 0.0,
    pool_size: int = 200,
    rng: random.Random | None = None,
) -> FloodStats:
    """Flood ``addr`` for ``seconds``; returns what was sent."""
    rng = rng or random.Random()
    pool = [rng.randbytes(32) for _ in range(pool_size)]
    stats = FloodStats()
    deadline = trio.current_time() + seconds
    per_worker = rate / workers if rate > 0 else 0.0

    async def worker(w: int) -> None:
        wrng = random.Random(rng.getrandbits(64))
        turn = w
        # Even workers: one long-lived connection; odd ones: fresh node ids.
        batches = 1 << 30 if w % 2 == 0 else batches_per_connection
        while trio.current_time() < deadline:
            turn = await _one_connection(
                addr, wrng, pool, kinds, turn, batch, batches, per_worker, deadline, stats
            )

    with trio.move_on_at(deadline + 5):  # a stuck node must not hang the caller
        async with trio.open_nursery() as nursery:
            for w in range(workers):
                nursery.start_soon(worker, w)
    return stats


async def _one_connection(
    addr: tuple[str, int],
    rng: random.Random,
    pool: list[bytes],
    kinds: tuple[str, ...],
    turn: int,
    batch: int,
    batches: int,
    per_worker_rate: float,
    deadline: float,
    stats: FloodStats,
) -> int:
    try:
        stream = await trio.open_tcp_stream(*addr)
    except OSError:
        stats.refused += 1
        await trio.sleep(0.05)
        return turn
    stats.connections += 1
    conn = _Conn(stream)
    key = nacl.signing.SigningKey(rng.randbytes(32))
    try:
        with trio.move_on_at(deadline):
            mine = Hello(PROTOCOL_VERSION, bytes(key.verify_key), 0, "flood", rng.randbytes(32))
            await stream.send_all(encode(mine))
            theirs = await conn.recv()
            if not isinstance(theirs, Hello):
                stats.refused += 1
                return turn
            await stream.send_all(encode(sign_proof(key, mine, theirs)))
            for _ in range(batches):
                kind = kinds[turn % len(kinds)]
                turn += 1
                started = trio.current_time()
                frames = b"".join(encode(make_message(kind, rng, pool)) for _ in range(batch))
                nonce = rng.getrandbits(32)
                await stream.send_all(frames + encode(Ping(nonce)))
                stats.messages += batch
                stats.bytes_sent += len(frames)
                stats.by_kind[kind] = stats.by_kind.get(kind, 0) + batch
                while True:
                    msg = await conn.recv()
                    if msg is None:
                        stats.dropped += 1
                        return turn
                    if isinstance(msg, Pong) and msg.nonce == nonce:
                        break
                if per_worker_rate > 0:
                    await trio.sleep_until(started + batch / per_worker_rate)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, RemoteProtocolError):
        stats.dropped += 1
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    return turn
