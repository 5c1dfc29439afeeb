"""Node reports over the gossip (in-memory network, autojump clock)."""

from __future__ import annotations

import dataclasses
import logging
import random

import nacl.signing
import pytest
import trio
import trio.testing

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core import reports as r
from p2pupdate.core.messages import Report
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.peer import Timeouts
from p2pupdate.shell.net.transport import MemoryNetwork

TRUST = TrustConfig(frozenset({b"\x01" * 32}))
FAST = Timeouts(handshake=2, idle=30, frame=2, send=5, keepalive=5)
T0 = 1_800_000_000.0


def make_node(net: MemoryNetwork, i: int, peers: list[tuple[str, int]], clock: list[float]) -> Node:
    options = NodeOptions(
        listen=("127.0.0.1", 0),
        trust=TRUST,
        peers=tuple(peers),
        timeouts=FAST,
        check_interval=1.0,
        report_interval=600.0,
    )
    return Node(
        options,
        net.transport("127.0.0.1"),
        nacl.signing.SigningKey(bytes([i + 10]) * 32),
        rng=random.Random(i),
        wall_clock=lambda: clock[0] + trio.current_time(),
    )


async def wait_until(pred: object, timeout: float = 120.0) -> None:
    with trio.fail_after(timeout):
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.1)


async def test_reports_reach_every_node_and_a_late_joiner_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    clock = [T0]
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(5):
            node = make_node(net, i, [n.listen_addr for n in nodes[-1:]], clock)
            await nursery.start(node.run)
            nodes.append(node)
        await wait_until(lambda: all(len(n.reports.book) == 5 for n in nodes))
        first = {n.node_id: n.reports.own.report.seq for n in nodes}  # type: ignore[union-attr]
        # A node that joins later learns every report at once by anti-entropy (the
        # others issued theirs long before and send nothing new until their heartbeat).
        await trio.sleep(60)
        late = make_node(net, 9, [nodes[0].listen_addr], clock)
        await nursery.start(late.run)
        await wait_until(lambda: len(late.reports.book) == 6, timeout=30)
        for n in nodes:
            held = late.reports.book.get(n.node_id)
            assert held is not None and held.report.seq == first[n.node_id]
        # The heartbeat re-issues every report with a higher sequence.
        await trio.sleep(600)
        await wait_until(
            lambda: all(
                late.reports.book.get(n.node_id).report.seq > first[n.node_id]  # type: ignore[union-attr]
                for n in nodes
            )
        )
        nursery.cancel_scope.cancel()


async def test_forged_and_replayed_reports_change_nothing_and_strike_the_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    clock = [T0]
    async with trio.open_nursery() as nursery:
        victim = make_node(net, 0, [], clock)
        await nursery.start(victim.run)
        attacker = make_node(net, 1, [victim.listen_addr], clock)
        await nursery.start(attacker.run)
        await wait_until(lambda: len(victim.reports.book) == 2)
        genuine = victim.reports.book.get(attacker.node_id)
        assert genuine is not None
        third = nacl.signing.SigningKey(b"\x33" * 32)
        # A report about the attacker's node signed by someone else (forged) ...
        body = dataclasses.replace(genuine.report, seq=genuine.report.seq + 10**6)
        forged = r.SignedReport(
            body, body.encode(), third.sign(r.REPORT_DOMAIN + body.encode()).signature
        )
        # ... and a genuine but day-old report of another node (replayed).
        old = r.sign_report(
            r.NodeReport(bytes(third.verify_key), 1, int(T0 - 2 * 86400), "127.0.0.1:1", "x"), third
        )
        peer = attacker.peers[victim.node_id]
        for msg in (forged, old, forged):
            peer.post(Report(msg.encode()))
        # Three strikes ban the sender; neither record was kept.
        await wait_until(
            lambda: victim.peerbook.is_node_banned(attacker.node_id, trio.current_time())
        )
        assert DEFAULT_LIMITS.strikes_to_ban == 3
        held = victim.reports.book.get(attacker.node_id)
        assert held is not None and held.report.seq == genuine.report.seq
        assert victim.reports.book.get(bytes(third.verify_key)) is None
        nursery.cancel_scope.cancel()


async def test_a_node_alone_for_a_minute_warns_once_naming_the_peers_it_cannot_reach(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork()
    clock = [T0]
    caplog.set_level(logging.WARNING, logger="p2pupdate.node")
    async with trio.open_nursery() as nursery:
        node = make_node(net, 0, [("127.0.0.1", 9)], clock)
        await nursery.start(node.run)
        await trio.sleep(59)
        assert not [r for r in caplog.records if "no connected peer" in r.getMessage()]
        await trio.sleep(300)
        warnings = [r for r in caplog.records if "no connected peer" in r.getMessage()]
        assert len(warnings) == 1 and "cannot reach 127.0.0.1:9" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING
        nursery.cancel_scope.cancel()
