"""The virtual network as a Transport: pacing, latency, loss, and real nodes over it."""

from __future__ import annotations

import random

import nacl.signing
import pytest
import trio
import trio.testing

from p2pupdate.core.netmodel import LinkProfile
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.sim.virtual import seed_trio_scheduler
from p2pupdate.sim.virtualnet import VirtualNetwork
from tests.helpers import make_announcement
from tests.shell.test_gossip import AUTHORITY, TRUST

MIB = 1024 * 1024


def network(quantum: float = 0.0, loss: float = 0.0, seed: int = 1) -> VirtualNetwork:
    net = VirtualNetwork(random.Random(seed), losses_per_hour=loss, quantum=quantum)
    net.add_host("10.0.0.1", LinkProfile(MIB, 4 * MIB, 0.01))
    net.add_host("10.0.0.2", LinkProfile(2 * MIB, MIB // 2, 0.02))
    return net


async def read_all(stream: trio.abc.Stream, n: int) -> float:
    """Read n bytes; the virtual time the last one arrived."""
    got = 0
    while got < n:
        data = await stream.receive_some(256 * 1024)
        assert data, "EOF before everything arrived"
        got += len(data)
    return trio.current_time()


@pytest.mark.parametrize("run_timers", [False, True])
async def test_bulk_data_is_paced_by_the_slower_side_and_delayed_by_the_latency(
    autojump_clock: trio.testing.MockClock, run_timers: bool
) -> None:
    net = network()
    async with trio.open_nursery() as nursery:
        if run_timers:
            nursery.start_soon(net.run)
        a, b = net.pair("10.0.0.1", "10.0.0.2")
        start = trio.current_time()
        # 1 MiB from .1 (uploads 1 MiB/s) to .2 (downloads 0.5 MiB/s): 2 s, plus 30 ms.
        for _ in range(16):
            await a.send_all(b"x" * (64 * 1024))
        sender_done = trio.current_time() - start
        arrived = await read_all(b, MIB) - start
        assert sender_done == pytest.approx(1.0, abs=0.01)  # the sender waits for its uplink
        assert arrived == pytest.approx(2.03, abs=0.01)
        # The other way: .2 uploads at 2 MiB/s, .1 downloads at 4 MiB/s.
        start = trio.current_time()
        await b.send_all(b"y" * MIB)
        assert await read_all(a, MIB) - start == pytest.approx(0.53, abs=0.01)
        nursery.cancel_scope.cancel()


async def test_two_senders_share_one_downlink(autojump_clock: trio.testing.MockClock) -> None:
    net = network()
    net.add_host("10.0.0.3", LinkProfile(MIB, 4 * MIB, 0.01))
    a, b = net.pair("10.0.0.1", "10.0.0.2")
    c, d = net.pair("10.0.0.3", "10.0.0.2")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"a" * (MIB // 4))
        nursery.start_soon(c.send_all, b"c" * (MIB // 4))
        times: list[float] = []

        async def reader(s: trio.abc.Stream) -> None:
            times.append(await read_all(s, MIB // 4) - start)

        nursery.start_soon(reader, b)
        nursery.start_soon(reader, d)
    # 0.5 MiB through a 0.5 MiB/s downlink: the last byte arrives after 1 s, not 0.5 s.
    assert max(times) == pytest.approx(1.03, abs=0.02)


async def test_connect_takes_a_round_trip_and_is_refused_without_a_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = network()
    t1, t2 = net.transport("10.0.0.1"), net.transport("10.0.0.2")
    with pytest.raises(OSError):
        await t1.connect("10.0.0.2", 7000)
    listener = await t2.listen("10.0.0.2", 7000)
    start = trio.current_time()
    stream = await t1.connect("10.0.0.2", 7000)
    assert trio.current_time() - start == pytest.approx(0.06)  # 2 x (10 + 20) ms
    theirs, host = await listener.accept()
    assert host == "10.0.0.1"
    await stream.send_all(b"hello")
    assert await theirs.receive_some(100) == b"hello"
    await stream.aclose()
    assert await theirs.receive_some(100) == b""  # EOF after the data
    with pytest.raises(trio.BrokenResourceError):
        await theirs.send_all(b"late")
    assert net.stats("10.0.0.1").dials == 2
    assert net.stats("10.0.0.2").peak_connections == 1


async def test_lost_connections_break_both_ends(autojump_clock: trio.testing.MockClock) -> None:
    net = network(loss=3600.0)  # about one loss a second per connection
    a, b = net.pair("10.0.0.1", "10.0.0.2")
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(60):
            await b.receive_some(100)
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"x")
    assert net.stats("10.0.0.1").broken == 1


async def traffic(seed: int) -> list[float]:
    """Random writes both ways between three hosts; every arrival time, in order."""
    net = network(quantum=0.001, seed=seed)
    net.add_host("10.0.0.3", LinkProfile(MIB, MIB, 0.005))
    rng = random.Random(seed)
    arrivals: list[float] = []
    async with trio.open_nursery() as outer:
        outer.start_soon(net.run)
        async with trio.open_nursery() as nursery:
            await _traffic_pairs(net, rng, arrivals, nursery)
        outer.cancel_scope.cancel()
    return arrivals


async def _traffic_pairs(
    net: VirtualNetwork, rng: random.Random, arrivals: list[float], nursery: trio.Nursery
) -> None:
    if True:
        pairs = [net.pair("10.0.0.1", "10.0.0.2"), net.pair("10.0.0.3", "10.0.0.2")]
        for sender, receiver in pairs:
            sizes = [rng.randrange(1, 200_000) for _ in range(20)]

            async def send(s: trio.abc.Stream = sender, sizes: list[int] = sizes) -> None:
                for size in sizes:
                    await s.send_all(b"z" * size)

            async def recv(r: trio.abc.Stream = receiver, total: int = sum(sizes)) -> None:
                got = 0
                while got < total:
                    got += len(await r.receive_some(1 << 20))
                    arrivals.append(trio.current_time())

            nursery.start_soon(send)
            nursery.start_soon(recv)


def test_same_seed_same_times_different_seed_different_times() -> None:
    def run(seed: int) -> list[float]:
        # Trio picks the order of runnable tasks at random; seeded, that order repeats.
        assert seed_trio_scheduler(seed)
        return trio.run(traffic, seed, clock=trio.testing.MockClock(autojump_threshold=0))

    first = run(4)
    assert first == run(4)
    assert first != run(5)
    assert all(abs(t * 1000 - round(t * 1000)) < 1e-6 for t in first)  # on the 1 ms grid


async def test_real_nodes_gossip_over_the_virtual_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = VirtualNetwork(random.Random(1), quantum=0.001)
    hosts = [f"10.0.1.{i}" for i in range(1, 13)]
    for h in hosts:
        net.add_host(h, LinkProfile(MIB, MIB, 0.05))  # 100 ms a hop
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.run)
        nodes = []
        for i, h in enumerate(hosts):
            options = NodeOptions(listen=(h, 7000), trust=TRUST, peers=((hosts[i - 1], 7000),))
            node = Node(options, net.transport(h), nacl.signing.SigningKey(bytes([i + 1]) * 32))
            await nursery.start(node.run)
            nodes.append(node)
        with trio.fail_after(30):
            while sum(len(n.peers) for n in nodes) < 2 * len(nodes):
                await trio.sleep(0.01)
        start = trio.current_time()
        await nodes[0].inject(make_announcement([AUTHORITY], version="3.0.0"))
        with trio.fail_after(30):
            while not all(n.book.newest("app/stable") for n in nodes):
                await trio.sleep(0.001)
        # At least one hop of 100 ms and a frame of ~500 bytes at 1 MiB/s.
        assert trio.current_time() - start >= 0.1
        nursery.cancel_scope.cancel()
    sent = net.stats(hosts[0])
    assert sent.bytes_sent > 0 and sent.sent  # counted by message type
