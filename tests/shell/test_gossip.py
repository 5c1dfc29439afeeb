"""Gossip over real TCP and over the in-memory transport."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import nacl.signing
import pytest
import trio
import trio.testing

from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.peer import Timeouts
from p2pupdate.shell.net.transport import (
    MemoryNetwork,
    MemoryTransport,
    TcpTransport,
    Transport,
)
from tests.helpers import make_announcement

AUTHORITY = nacl.signing.SigningKey(b"\x01" * 32)
TRUST = TrustConfig(frozenset({bytes(AUTHORITY.verify_key)}))
FAST = Timeouts(handshake=2, idle=5, frame=2, send=5, keepalive=1)


def tcp_factory(i: int) -> Transport:
    return TcpTransport()


@asynccontextmanager
async def running_nodes(
    n: int,
    peers_of: Callable[[int, list[tuple[str, int]]], list[tuple[str, int]]],
    transport_for: Callable[[int], Transport],
    tmp: Path | None = None,
    **opts: object,
) -> AsyncIterator[list[Node]]:
    """Start n nodes; node i's bootstrap peers come from peers_of(i, addrs of nodes < i)."""
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i in range(n):
            addrs = [nd.listen_addr for nd in nodes]
            options = NodeOptions(
                listen=("127.0.0.1", 0),
                trust=TRUST,
                peers=tuple(peers_of(i, addrs)),
                data_dir=(tmp / f"n{i}") if tmp else None,
                timeouts=FAST,
                check_interval=0.2,
                **opts,  # type: ignore[arg-type]
            )
            node = Node(
                options,
                transport_for(i),
                nacl.signing.SigningKey(bytes([i + 10]) * 32),
                rng=random.Random(i),
            )
            await nursery.start(node.run)
            nodes.append(node)
        yield nodes
        nursery.cancel_scope.cancel()


def line(i: int, addrs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return addrs[-1:]  # each knows only its predecessor


async def wait_all(nodes: list[Node], channel: str, version: str, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while True:
            got = [nd.book.newest(channel) for nd in nodes]
            if all(a is not None and a.body.version == version for a in got):
                return
            await trio.sleep(0.02)


@pytest.mark.parametrize("transport", ["tcp", "memory"])
async def test_line_of_ten_reaches_all_and_pex_makes_a_mesh(transport: str) -> None:
    net = MemoryNetwork()
    factory: Callable[[int], Transport] = (
        tcp_factory if transport == "tcp" else (lambda i: net.transport("127.0.0.1"))
    )
    async with running_nodes(10, line, factory) as nodes:
        ann = make_announcement([AUTHORITY], version="1.0.0")
        await wait_until(lambda: all(nd.peers for nd in nodes))
        decision = await nodes[-1].inject(ann)
        assert decision is not None and decision.ok
        await wait_all(nodes, "app/stable", "1.0.0")
        # PEX: the first node, which knew nobody, learns most of the line.
        with trio.fail_after(10):
            while len(nodes[0].peerbook.known()) < 5 or len(nodes[0].peers) < 3:
                await trio.sleep(0.05)


@pytest.mark.parametrize("transport", ["tcp", "memory"])
async def test_late_node_gets_it_by_anti_entropy(transport: str) -> None:
    net = MemoryNetwork()
    factory: Callable[[int], Transport] = (
        tcp_factory if transport == "tcp" else (lambda i: net.transport(f"10.0.0.{i + 1}"))
    )
    listen_host = "127.0.0.1"
    if transport == "memory":
        # In memory every node listens on its own host name.
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = []
            for i in range(3):
                options = NodeOptions(
                    listen=(f"10.0.0.{i + 1}", 4000),
                    trust=TRUST,
                    peers=tuple(nd.listen_addr for nd in nodes[-1:]),
                    timeouts=FAST,
                    check_interval=0.2,
                )
                nd = Node(options, factory(i), nacl.signing.SigningKey(bytes([i + 1]) * 32))
                if i == 2:
                    await nodes[0].inject(make_announcement([AUTHORITY], version="2.0.0"))
                await nursery.start(nd.run)
                nodes.append(nd)
            await wait_all(nodes, "app/stable", "2.0.0")
            nursery.cancel_scope.cancel()
        return
    async with running_nodes(2, line, factory) as nodes:
        await nodes[0].inject(make_announcement([AUTHORITY], version="2.0.0"))
        await wait_all(nodes, "app/stable", "2.0.0")
        async with running_nodes(1, lambda i, a: [nodes[1].listen_addr], factory) as late:
            await wait_all(late, "app/stable", "2.0.0")
    assert listen_host


async def test_restarted_node_keeps_its_announcements(tmp_path: Path) -> None:
    async with running_nodes(1, line, tcp_factory, tmp_path) as nodes:
        await nodes[0].inject(make_announcement([AUTHORITY], version="3.1.0"))
        stored = tmp_path / "n0" / "announcements"
        # Written atomically (temp file, rename): a file without a leading dot is whole.
        await wait_until(
            lambda: stored.is_dir() and any(not f.name.startswith(".") for f in stored.iterdir())
        )
    async with running_nodes(1, line, tcp_factory, tmp_path) as nodes:
        ann = nodes[0].book.newest("app/stable")
        assert ann is not None and ann.body.version == "3.1.0"


async def wait_until(cond: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_simultaneous_dials_leave_exactly_one_connection_per_pair(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Both nodes know each other from the start and start together, so both dial at once.
    net = MemoryNetwork()
    addrs = [("10.0.0.1", 4000), ("10.0.0.2", 4000)]
    nodes = [
        Node(
            NodeOptions(
                listen=addrs[i],
                trust=TRUST,
                peers=(addrs[1 - i],),
                timeouts=FAST,
                check_interval=0.2,
            ),
            net.transport(addrs[i][0]),
            nacl.signing.SigningKey(bytes([50 + i]) * 32),
        )
        for i in range(2)
    ]
    async with trio.open_nursery() as nursery:
        for nd in nodes:
            nursery.start_soon(nd.run)
        await wait_until(lambda: all(len(nd.peers) == 1 for nd in nodes))
        # Virtual time: every dial round, keepalive and duplicate check of 10 s has run.
        await trio.sleep(10)
        assert [len(nd.peers) for nd in nodes] == [1, 1]
        a, b = nodes
        # Both kept the same connection: one side outbound, the other inbound.
        assert a.peers[b.node_id].conn.outbound != b.peers[a.node_id].conn.outbound
        nursery.cancel_scope.cancel()


async def test_ten_nodes_each_given_three_reach_their_target_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Node i is given the three before it; PEX tells it the rest. Every node must reach
    # target_connections (8): outbound peers once counted twice, leaving nodes at 5-7.
    net = MemoryNetwork()
    async with running_nodes(
        10, lambda i, addrs: addrs[-3:], lambda i: net.transport("127.0.0.1")
    ) as nodes:
        await wait_until(lambda: all(len(nd.peers) >= 8 for nd in nodes), timeout=60)


async def test_a_node_short_of_peers_pulls_addresses_its_peers_learned_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A fleet starting at once: B connects to A before anyone else exists, so the PEERS
    # it gets at connect time is empty; C, D, E then connect to A only (target 1) and
    # never dial B. Periodic PEX is far away (pex_interval 1000 s): B learns C, D and E
    # only because, short of its target with nothing to dial, it asks A again.
    net = MemoryNetwork()
    hosts = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5"]
    a_addr = (hosts[0], 4000)
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i, host in enumerate(hosts):
            options = NodeOptions(
                listen=(host, 4000),
                trust=TRUST,
                peers=() if i == 0 else (a_addr,),
                timeouts=FAST,
                check_interval=0.2,
                pex_interval=1000.0,
                target_connections=8 if i < 2 else 1,
            )
            nd = Node(options, net.transport(host), nacl.signing.SigningKey(bytes([60 + i]) * 32))
            await nursery.start(nd.run)
            nodes.append(nd)
            await wait_until(lambda: len(nodes[0].peers) == len(nodes) - 1)
        b = nodes[1]
        await wait_until(lambda: len(b.peers) == 4, timeout=100)
        assert {p.addr for p in b.peers.values()} == {(h, 4000) for h in hosts if h != hosts[1]}
        nursery.cancel_scope.cancel()


class CountingTransport(MemoryTransport):
    """The in-memory transport, remembering every address it dialled."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        super().__init__(network, host)
        self.dialled: list[tuple[str, int]] = []

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        self.dialled.append((host, port))
        return await super().connect(host, port)


async def test_connection_to_self_is_closed_and_not_redialed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    transport = CountingTransport(net, "10.0.0.1")
    alias = ("self.example", 4000)
    async with trio.open_nursery() as nursery:
        probe = Node(
            NodeOptions(listen=("10.0.0.1", 4000), trust=TRUST, timeouts=FAST, check_interval=0.2),
            transport,
            nacl.signing.SigningKey(b"\x33" * 32),
        )
        await nursery.start(probe.run)
        # Another name for ourselves: the network routes it to our own listener.
        net._listeners[alias] = net._listeners[("10.0.0.1", 4000)]
        probe.peerbook.add(alias)
        probe._wake_dialer.set()
        await wait_until(lambda: alias in transport.dialled and alias not in probe.peerbook.known())
        # Virtual time: many dial rounds later it still has not dialled itself again.
        await trio.sleep(60)
        assert transport.dialled.count(alias) == 1
        assert probe.peers == {}
        assert alias not in probe.peerbook.known()
        nursery.cancel_scope.cancel()
