"""Fleet membership and encrypted transport over real TCP on loopback.

Nodes run with ``fleet`` keys (TLS on by default); intruders and relays are
real sockets too. Every wait is on a condition.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import nacl.signing
import trio

from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.fleet import sign_admission, sign_revocations
from p2pupdate.core.handshake import sign_proof
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    TABLE_PAGE_LIST,
    Chunk,
    GetTable,
    Hello,
    HelloProof,
    Inventory,
    Message,
    Peers,
    Request,
    Table,
)
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.peer import Timeouts
from p2pupdate.shell.net.tls import TlsIdentity, TlsStream
from p2pupdate.shell.net.transport import MemoryNetwork, TcpTransport
from tests.helpers import make_announcement

AUTHORITY = nacl.signing.SigningKey(b"\x01" * 32)
TRUST = TrustConfig(frozenset({bytes(AUTHORITY.verify_key)}))
FAST = Timeouts(handshake=3, idle=5, frame=2, send=5, keepalive=1)
FLEET_A = nacl.signing.SigningKey(b"\xa1" * 32)
FLEET_B = nacl.signing.SigningKey(b"\xb1" * 32)
YEAR = 365 * 86400


def key_of(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([i + 100]) * 32)


def admit(fleet: nacl.signing.SigningKey, key: nacl.signing.SigningKey, span: int = YEAR) -> bytes:
    now = int(time.time())
    return sign_admission(fleet, bytes(key.verify_key), now - 60, now + span).raw


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, **fields: Any) -> None:
        self.seen.append((name, fields))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for n, f in self.seen if n == name]


@asynccontextmanager
async def fleet_nodes(
    specs: list[dict[str, Any]],
) -> AsyncIterator[tuple[list[Node], list[Events]]]:
    """Start one node per spec (NodeOptions overrides plus 'key' and 'peers_idx')."""
    nodes: list[Node] = []
    events: list[Events] = []
    async with trio.open_nursery() as nursery:
        for i, spec in enumerate(specs):
            spec = dict(spec)
            key = spec.pop("key", key_of(i))
            peers = tuple(nodes[j].listen_addr for j in spec.pop("peers_idx", range(i)))
            ev = Events()
            options = NodeOptions(
                listen=("127.0.0.1", 0),
                trust=TRUST,
                peers=peers,
                timeouts=FAST,
                check_interval=0.2,
                pex_interval=0.2,
                **spec,
            )
            node = Node(options, TcpTransport(), key, emit=ev, rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
            events.append(ev)
        yield nodes, events
        nursery.cancel_scope.cancel()


def member(fleet: nacl.signing.SigningKey, i: int, **extra: Any) -> dict[str, Any]:
    return {"fleet": (bytes(fleet.verify_key),), "admission": admit(fleet, key_of(i)), **extra}


async def wait_for(cond: Any, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def intruder(
    addr: tuple[str, int],
    key: nacl.signing.SigningKey,
    admission: bytes = b"",
    *,
    tls: bool = True,
    until: type[Message] | None = None,
) -> list[Message]:
    """Handshake like a node, ask for everything, return what the node sent until EOF."""
    raw = await trio.open_tcp_stream(*addr)
    try:
        return await _intrude(raw, key, admission, tls=tls, until=until)
    finally:
        raw.socket.close()


async def _intrude(
    raw: trio.SocketStream,
    key: nacl.signing.SigningKey,
    admission: bytes,
    *,
    tls: bool,
    until: type[Message] | None,
) -> list[Message]:
    stream: trio.abc.Stream = raw
    binding = b""
    if tls:
        stream, binding = await TlsIdentity().wrap(stream, server_side=False, seconds=5)
    node_id = bytes(key.verify_key)
    mine = Hello(PROTOCOL_VERSION, node_id, 0, "intruder", os.urandom(32))
    decoder = FrameDecoder()
    got: list[Message] = []
    sent_proof = False
    with trio.fail_after(20):
        await stream.send_all(encode(mine))
        while True:
            try:
                data = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            decoder.receive_data(data)
            for msg in decoder.messages():
                got.append(msg)
                if until is not None and isinstance(msg, until):
                    return got
                if isinstance(msg, Hello) and not sent_proof:
                    sent_proof = True
                    proof = sign_proof(key, mine, msg, binding=binding, admission=admission)
                    # Ask straight away for a table, a chunk and peers.
                    pid = b"\x00" * 32
                    asks = [proof, GetTable(pid, TABLE_PAGE_LIST), Request(pid, 0)]
                    await stream.send_all(b"".join(encode(m) for m in asks))
    return got


def nothing_given(got: list[Message]) -> bool:
    """Only the node's own HELLO and HELLO_PROOF: no data, no table, no address."""
    return all(isinstance(m, (Hello, HelloProof)) for m in got) and not any(
        isinstance(m, (Peers, Inventory, Table, Chunk)) for m in got
    )


async def test_members_connect_and_a_non_member_gets_nothing() -> None:
    async with fleet_nodes([member(FLEET_A, 0), member(FLEET_A, 1)]) as (nodes, events):
        a, b = nodes
        await wait_for(lambda: b.node_id in a.peers and a.node_id in b.peers)
        assert a.peers[b.node_id].conn.stream.__class__ is TlsStream  # encrypted
        ann = make_announcement([AUTHORITY], version="1.0.0")
        await a.inject(ann)
        await wait_for(lambda: b.book.newest("app/stable") is not None)
        # Strangers: no admission, another fleet's admission, a stolen admission of b.
        stranger = nacl.signing.SigningKey(os.urandom(32))
        for adm in (b"", admit(FLEET_B, stranger), admit(FLEET_A, key_of(1))):
            got = await intruder(a.listen_addr, stranger, adm)
            assert nothing_given(got), got
        reasons = {e["reason"] for e in events[0].named("peer_refused")}
        assert reasons == {"no_admission", "foreign_fleet", "wrong_node"}
        assert stranger.verify_key.encode() not in a.peers
        # The members are still connected.
        assert b.node_id in a.peers


async def test_a_member_is_served() -> None:
    # The same intruder code with a valid admission gets the inventory and peers: the
    # test above would pass for the wrong reason otherwise.
    async with fleet_nodes([member(FLEET_A, 0)]) as (nodes, _):
        guest = key_of(7)
        got = await intruder(nodes[0].listen_addr, guest, admit(FLEET_A, guest), until=Peers)
        assert any(isinstance(m, Inventory) for m in got)


async def test_expired_and_revoked_admissions_are_refused() -> None:
    expired = sign_admission(FLEET_A, bytes(key_of(1).verify_key), 1000, 2000).raw
    specs = [
        member(FLEET_A, 0),
        {"fleet": (bytes(FLEET_A.verify_key),), "admission": expired},
        member(FLEET_A, 2),
    ]
    async with fleet_nodes(specs) as (nodes, events):
        a, old, c = nodes
        await wait_for(lambda: c.node_id in a.peers)
        await wait_for(
            lambda: any(e["reason"] == "expired" for e in events[0].named("peer_refused"))
        )
        assert old.node_id not in a.peers and old.node_id not in c.peers
        # Revoke c: a learns the list, gossips it to c's peers, drops c; c stays out.
        rev = sign_revocations(FLEET_A, [c.node_id], int(time.time()))
        assert await a.inject_revocations(rev.raw)
        await wait_for(lambda: c.node_id not in a.peers)
        assert a.fleet.is_revoked(c.node_id)
        assert events[0].named("revocations_received")
        await wait_for(
            lambda: any(e["reason"] == "revoked" for e in events[0].named("peer_refused"))
        )
        assert not a.is_member(c.node_id)
        assert c.node_id not in a.peers


async def test_revocation_spreads_and_latest_wins() -> None:
    specs = [member(FLEET_A, i) for i in range(3)]
    async with fleet_nodes(specs) as (nodes, _):
        a, b, c = nodes
        await wait_for(lambda: len(a.peers) == 2 and len(b.peers) == 2)
        victim = os.urandom(32)
        now = int(time.time())
        await a.inject_revocations(sign_revocations(FLEET_A, [victim], now).raw)
        await wait_for(lambda: all(n.fleet.is_revoked(victim) for n in nodes))
        # An older list does not undo it.
        assert not await c.inject_revocations(sign_revocations(FLEET_A, [], now - 10).raw)
        assert all(n.fleet.is_revoked(victim) for n in nodes)
        await c.inject_revocations(sign_revocations(FLEET_A, [], now + 10).raw)
        await wait_for(lambda: not any(n.fleet.is_revoked(victim) for n in nodes))


async def test_two_fleets_on_one_host_do_not_mix() -> None:
    # Everybody is told about everybody: A nodes and B nodes dial each other.
    specs = [member(FLEET_A, 0), member(FLEET_B, 1), member(FLEET_A, 2), member(FLEET_B, 3)]
    async with fleet_nodes(specs) as (nodes, events):
        a0, b1, a2, b3 = nodes
        await wait_for(lambda: a2.node_id in a0.peers and b3.node_id in b1.peers)
        await wait_for(lambda: all(ev.named("peer_refused") for ev in events))
        for n in (a0, a2):
            assert set(n.peers) <= {a0.node_id, a2.node_id}
        for n in (b1, b3):
            assert set(n.peers) <= {b1.node_id, b3.node_id}


async def test_rotation_to_a_new_fleet_key_keeps_peers() -> None:
    both = (bytes(FLEET_A.verify_key), bytes(FLEET_B.verify_key))
    specs = [
        {"fleet": both, "admission": admit(FLEET_A, key_of(0))},  # not yet re-admitted
        {"fleet": both, "admission": admit(FLEET_B, key_of(1))},  # already on the new key
        {"fleet": (bytes(FLEET_B.verify_key),), "admission": admit(FLEET_B, key_of(2))},
    ]
    async with fleet_nodes(specs) as (nodes, events):
        old, new, done = nodes
        await wait_for(lambda: new.node_id in old.peers and done.node_id in new.peers)
        # The node that only knows the new key refuses the one still on the old key.
        await wait_for(
            lambda: any(e["reason"] == "foreign_fleet" for e in events[2].named("peer_refused"))
        )
        assert old.node_id not in done.peers


async def test_open_swarm_unchanged_and_plain() -> None:
    async with fleet_nodes([{}, {}]) as (nodes, _):
        a, b = nodes
        await wait_for(lambda: b.node_id in a.peers)
        assert a.tls is None
        assert not isinstance(a.peers[b.node_id].conn.stream, TlsStream)
        assert a.status()["fleet"] is None
        assert a.is_member(os.urandom(32))


async def test_open_swarm_may_encrypt() -> None:
    async with fleet_nodes([{"encrypt": True}, {"encrypt": True}]) as (nodes, _):
        a, b = nodes
        await wait_for(lambda: b.node_id in a.peers)
        assert isinstance(a.peers[b.node_id].conn.stream, TlsStream)


# ---------------------------------------------------------------- men in the middle


async def _relay(
    listener: trio.SocketListener,
    target: tuple[str, int],
    alter: Any,
    log: list[bytes],
    done: list[str],
) -> None:
    """Forward each accepted connection to ``target``; ``alter(direction, n, data)``
    may rewrite the n-th segment. Client->server bytes are recorded in ``log``."""

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, direction: str) -> None:
        n = 0
        try:
            while data := await src.receive_some(1 << 16):
                if direction == "up":
                    log.append(bytes(data))
                await dst.send_all(alter(direction, n, data))
                n += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            done.append(direction)
            await dst.aclose()

    async def one(client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(pump, client, server, "up")
            nursery.start_soon(pump, server, client, "down")

    async with trio.open_nursery() as nursery:
        while True:
            client = await listener.accept()
            nursery.start_soon(one, client)


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


async def test_a_relay_that_rewrites_bytes_breaks_the_connection() -> None:
    async with AsyncExitStack() as closer:
        await _test_a_relay_that_rewrites_bytes_breaks_the_connection(closer)


async def _test_a_relay_that_rewrites_bytes_breaks_the_connection(closer: AsyncExitStack) -> None:
    async with fleet_nodes([member(FLEET_A, 0)]) as (nodes, events):
        server = nodes[0]
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        closer.push_async_callback(listeners[0].aclose)
        port = listeners[0].socket.getsockname()[1]

        def alter(direction: str, n: int, data: bytes) -> bytes:
            # Leave the TLS handshake alone, rewrite from the client's first
            # application data on (its HELLO; an encrypted record).
            return _flip_last(data) if direction == "up" and n >= 1 else data

        log: list[bytes] = []
        done: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_relay, listeners[0], server.listen_addr, alter, log, done)
            client_events = Events()
            client = Node(
                NodeOptions(
                    listen=("127.0.0.1", 0),
                    trust=TRUST,
                    peers=(("127.0.0.1", port),),
                    timeouts=FAST,
                    check_interval=0.2,
                    **member(FLEET_A, 1),
                ),
                TcpTransport(),
                key_of(1),
                emit=client_events,
            )
            await nursery.start(client.run)
            # The rewritten connection breaks: both directions of the relay end.
            await wait_for(lambda: len(log) >= 2 and len(done) == 2)
            assert not server.peers and not client.peers
            assert not events[0].named("peer_connected")
            assert not client_events.named("peer_connected")
            nursery.cancel_scope.cancel()


async def test_replayed_bytes_are_refused() -> None:
    async with AsyncExitStack() as closer:
        await _test_replayed_bytes_are_refused(closer)


async def _test_replayed_bytes_are_refused(closer: AsyncExitStack) -> None:
    async with fleet_nodes([member(FLEET_A, 0), member(FLEET_A, 1, peers_idx=[])]) as (
        nodes,
        events,
    ):
        server, client = nodes
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        closer.push_async_callback(listeners[0].aclose)
        port = listeners[0].socket.getsockname()[1]
        log: list[bytes] = []
        done: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _relay, listeners[0], server.listen_addr, lambda d, n, b: b, log, done
            )
            client.peerbook.add(("127.0.0.1", port))
            client._wake_dialer.set()
            await wait_for(lambda: client.node_id in server.peers)
            recorded = b"".join(log)
            connected = len(events[0].named("peer_connected"))
            # Replay everything the client sent, on a new connection, as fast as it goes.
            stream = await trio.open_tcp_stream(*server.listen_addr)
            closer.push_async_callback(stream.aclose)
            await stream.send_all(recorded)
            with trio.fail_after(10):
                try:
                    while await stream.receive_some(1 << 16):
                        pass
                except trio.BrokenResourceError:
                    pass
            assert len(events[0].named("peer_connected")) == connected
            nursery.cancel_scope.cancel()


async def test_a_relay_that_terminates_tls_cannot_forward_the_proofs() -> None:
    async with AsyncExitStack() as closer:
        await _test_a_relay_that_terminates_tls_cannot_forward_the_proofs(closer)


async def _test_a_relay_that_terminates_tls_cannot_forward_the_proofs(
    closer: AsyncExitStack,
) -> None:
    """Identity misbinding: the relay runs TLS with each side itself and forwards the
    (decrypted) protocol both ways. The proofs sign the server certificate each side
    saw, so both refuse."""
    async with fleet_nodes([member(FLEET_A, 0)]) as (nodes, events):
        server = nodes[0]
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        closer.push_async_callback(listeners[0].aclose)
        port = listeners[0].socket.getsockname()[1]
        mitm = TlsIdentity()
        forwarded: list[int] = []
        ended: list[bool] = []

        async def one(raw: trio.SocketStream) -> None:
            async with raw, await trio.open_tcp_stream(*server.listen_addr) as up_raw:
                await mitm_session(raw, up_raw)

        async def mitm_session(raw: trio.SocketStream, up_raw: trio.SocketStream) -> None:
            down, _ = await mitm.wrap(raw, server_side=True, seconds=5)
            up, _ = await mitm.wrap(up_raw, server_side=False, seconds=5)

            async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
                try:
                    while data := await src.receive_some(1 << 16):
                        forwarded.append(len(data))
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    ended.append(True)
                    await dst.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, down, up)
                nursery.start_soon(pump, up, down)

        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                while True:
                    raw = await listeners[0].accept()
                    nursery.start_soon(one, raw)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client_events = Events()
            client = Node(
                NodeOptions(
                    listen=("127.0.0.1", 0),
                    trust=TRUST,
                    peers=(("127.0.0.1", port),),
                    timeouts=FAST,
                    check_interval=0.2,
                    **member(FLEET_A, 1),
                ),
                TcpTransport(),
                key_of(1),
                emit=client_events,
            )
            await nursery.start(client.run)
            # Both HELLOs and proofs went through the relay, and were refused.
            await wait_for(lambda: len(forwarded) >= 4 and len(ended) >= 2)
            assert not server.peers and not client.peers
            assert not events[0].named("peer_connected")
            nursery.cancel_scope.cancel()


async def test_status_reports_the_admission_and_warns_a_week_before_expiry() -> None:
    specs = [
        member(FLEET_A, 0),
        {**member(FLEET_A, 1), "admission": admit(FLEET_A, key_of(1), 3 * 86400)},
    ]
    async with fleet_nodes(specs) as (nodes, _):
        fine, soon = (n.status()["fleet"] for n in nodes)
        assert fine["admission_fleet"] == bytes(FLEET_A.verify_key).hex()
        assert fine["admission_expires"] > time.time() + 300 * 86400
        assert fine["warning"] is None
        assert soon["warning"].startswith("admission expires in 3.0 days")
        assert nodes[0].status()["encrypted"] is True


async def test_membership_and_tls_over_the_memory_network(autojump_clock: trio.abc.Clock) -> None:
    """The in-memory transport (tests, virtual simulation) carries TLS too, and a fleet
    may run without it there."""
    net = MemoryNetwork()
    for encrypt in (True, False):
        await _memory_fleet(net, encrypt)


async def _memory_fleet(net: MemoryNetwork, encrypt: bool) -> None:
    nodes: list[Node] = []
    events: list[Events] = []
    async with trio.open_nursery() as nursery:
        for i in range(3):
            spec = member(FLEET_A, i) if i < 2 else {"fleet": member(FLEET_A, 0)["fleet"]}
            options = NodeOptions(
                listen=(f"10.0.{int(encrypt)}.{i + 1}", 4000),
                trust=TRUST,
                peers=tuple(n.listen_addr for n in nodes),
                timeouts=FAST,
                check_interval=0.2,
                encrypt=encrypt,
                **spec,
            )
            ev = Events()
            host = f"10.0.{int(encrypt)}.{i + 1}"
            node = Node(options, net.transport(host), key_of(i), emit=ev)
            await nursery.start(node.run)
            nodes.append(node)
            events.append(ev)
        a, b, outsider = nodes
        await wait_for(lambda: b.node_id in a.peers and a.node_id in b.peers)
        stream = a.peers[b.node_id].conn.stream
        assert isinstance(stream, TlsStream) == encrypt
        # The outsider (no admission of its own) is refused by both members.
        await wait_for(
            lambda: all(
                any(e["reason"] == "no_admission" for e in ev.named("peer_refused"))
                for ev in events[:2]
            )
        )
        assert outsider.node_id not in a.peers and outsider.node_id not in b.peers
        nursery.cancel_scope.cancel()
