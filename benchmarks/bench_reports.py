"""What node reports cost: bytes each node sends and receives per heartbeat (issue 14).

Runs N nodes (``--nodes``, default 100) on the in-memory network in virtual time
(trio's MockClock, autojump), each knowing ``--degree`` random others, lets them
connect and exchange their first reports, then counts the REPORT and
REPORT_SUMMARY bytes written by every node over ``--heartbeats`` heartbeat
periods (10 minutes each by default) with nothing else changing. Prints the
per-node per-heartbeat figure docs/protocol.md quotes.

    .venv/bin/python benchmarks/bench_reports.py [--nodes 100] [--degree 4] [--heartbeats 3]
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import nacl.signing
import trio
import trio.testing

from p2pupdate.core.codec import encode
from p2pupdate.core.messages import Message, Report, ReportSummary
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions, PeerConn
from p2pupdate.shell.net.peer import Timeouts
from p2pupdate.shell.net.transport import MemoryNetwork

T0 = 1_800_000_000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--heartbeats", type=int, default=3)
    args = ap.parse_args()
    counted: dict[str, int] = {"report": 0, "summary": 0, "reports_sent": 0}
    counting = [False]
    original_post = PeerConn.post

    def post(self: PeerConn, msg: Message | bytes) -> bool:
        if counting[0] and isinstance(msg, (Report, ReportSummary)):
            size = len(encode(msg))
            if isinstance(msg, Report):
                counted["report"] += size
                counted["reports_sent"] += 1
            else:
                counted["summary"] += size
        return original_post(self, msg)

    async def send(self: PeerConn, msg: Message) -> None:
        if counting[0] and isinstance(msg, Report):
            counted["report"] += len(encode(msg))
            counted["reports_sent"] += 1
        await self.conn.send(msg)

    PeerConn.post = post  # type: ignore[method-assign]
    PeerConn.send = send  # type: ignore[method-assign]
    clock = trio.testing.MockClock(autojump_threshold=0)
    result: dict[str, Any] = {}

    async def run() -> None:
        net = MemoryNetwork()
        rng = random.Random(1)
        nodes: list[Node] = []
        async with trio.open_nursery() as nursery:
            for i in range(args.nodes):
                known = [n.listen_addr for n in rng.sample(nodes, min(len(nodes), args.degree))]
                node = Node(
                    NodeOptions(
                        listen=("127.0.0.1", 0),
                        trust=TrustConfig(frozenset({b"\x01" * 32})),
                        peers=tuple(known),
                        timeouts=Timeouts(handshake=5, idle=120, frame=5, send=10, keepalive=30),
                        check_interval=30.0,
                    ),
                    net.transport("127.0.0.1"),
                    nacl.signing.SigningKey(rng.randbytes(32)),
                    rng=random.Random(i),
                    wall_clock=lambda: T0 + trio.current_time(),
                )
                await nursery.start(node.run)
                nodes.append(node)
            with trio.fail_after(3600):
                while not all(len(n.reports.book) == args.nodes for n in nodes):
                    await trio.sleep(1)
            counting[0] = True
            period = nodes[0].reports.interval
            await trio.sleep(period * args.heartbeats)
            counting[0] = False
            result["complete"] = sum(len(n.reports.book) == args.nodes for n in nodes)
            result["peers"] = sum(len(n.peers) for n in nodes) / len(nodes)
            result["record"] = len(nodes[0].reports.own.encode()) if nodes[0].reports.own else 0
            nursery.cancel_scope.cancel()

    trio.run(run, clock=clock)
    per = args.nodes * args.heartbeats
    print(
        f"{args.nodes} nodes, {result['peers']:.1f} peers each on average, "
        f"{args.heartbeats} heartbeats of {600:.0f} s"
    )
    print(f"record size (no channel): {result['record']} B")
    print(
        f"per node per heartbeat: reports {counted['report'] / per:.0f} B sent "
        f"({counted['reports_sent'] / per:.1f} REPORT frames), "
        f"summaries {counted['summary'] / per:.0f} B"
    )
    print(f"nodes holding every report at the end: {result['complete']}/{args.nodes}")


if __name__ == "__main__":
    main()
