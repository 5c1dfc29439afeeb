"""Announcement propagation on loopback: 10 nodes in a ring, each knowing 2 others.

Prints the median and p95 time from injection at one node until all 10 hold it,
over 20 publications, and the redundancy factor (ANNOUNCE messages sent per node
per announcement). Target (docs/performance.md): p95 < 100 ms.

    .venv/bin/python benchmarks/bench_gossip.py [--nodes 10] [--rounds 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import nacl.signing
import trio
import trio.lowlevel

from p2pupdate.core.announcement import AnnouncementBody, sign_announcement
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.transport import TcpTransport

AUTHORITY = nacl.signing.SigningKey(b"\x05" * 32)


def announcement(version: str) -> object:
    now = int(time.time())
    body = AnnouncementBody(
        channel="bench/gossip",
        version=version,
        package_id=random.randbytes(32),
        size=1 << 20,
        table_root=random.randbytes(32),
        created=now,
        expires=now + 3600,
    )
    return sign_announcement(body, [AUTHORITY])


async def main(n: int, rounds: int) -> None:
    trust = TrustConfig(frozenset({bytes(AUTHORITY.verify_key)}))
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        # Listen first, then give each node its two ring neighbours.
        ports = []
        for _ in range(n):
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
            sock.close()
        for i in range(n):
            peers = (("127.0.0.1", ports[(i + 1) % n]), ("127.0.0.1", ports[(i - 1) % n]))
            opts = NodeOptions(
                listen=("127.0.0.1", ports[i]), trust=trust, peers=peers, check_interval=30.0
            )
            node = Node(opts, TcpTransport(), nacl.signing.SigningKey.generate())
            await nursery.start(node.run)
            nodes.append(node)
        with trio.fail_after(20):
            while any(len(nd.peers) < 2 for nd in nodes):
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # let PEX settle the mesh
        times = []
        for r in range(rounds):
            ann = announcement(f"1.0.{r}")
            before = sum(nd.messages_sent.get("Announce", 0) for nd in nodes)
            start = time.perf_counter()
            await nodes[r % n].inject(ann)  # type: ignore[arg-type]
            while not all(nd.book.seen(ann.id) for nd in nodes):  # type: ignore[attr-defined]
                await trio.lowlevel.checkpoint()
            times.append(time.perf_counter() - start)
            await trio.sleep(0.1)
            sent = sum(nd.messages_sent.get("Announce", 0) for nd in nodes) - before
            if r == 0:
                redundancy = sent / n
        times.sort()
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(
            f"nodes={n} rounds={rounds} "
            f"connections/node={statistics.mean(len(x.peers) for x in nodes):.1f}"
        )
        print(
            f"propagation to all: median {statistics.median(times) * 1000:.2f} ms, "
            f"p95 {p95 * 1000:.2f} ms (target < 100 ms)"
        )
        print(f"ANNOUNCE messages sent per node per announcement: {redundancy:.2f}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    trio.run(main, a.nodes, a.rounds)
