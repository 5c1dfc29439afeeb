"""``publish`` counts a replica only with evidence, never on a COMPLETE alone.

The publisher runs for real (``_publish``, real TCP on 127.0.0.1); its peers are
in-process nodes: an honest one that downloads and serves, and liars that say
COMPLETE for every package they hear of without holding a byte of it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from p2pupdate.cli import build_parser
from p2pupdate.commands.publish import PublishTimeout, _check_args, _publish
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.messages import Bitfield, Chunk, Complete, Message, Request
from p2pupdate.shell.keyfile import write_secret_key
from p2pupdate.shell.net.node import PeerConn
from tests.shell.swarm_helpers import AUTHORITY, Peer, start_peer

SIZE = 9 * 65536 + 17


class Liar:
    """Claims COMPLETE for every package it is shown; answers requests with junk or not."""

    def __init__(self, peer: Peer, answer_junk: bool) -> None:
        self.answer_junk = answer_junk
        peer.node.package_service = self

    def on_peer_up(self, peer: PeerConn) -> None:
        pass

    def on_peer_down(self, peer: PeerConn) -> None:
        pass

    async def run_peer(self, peer: PeerConn) -> None:
        pass

    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        if isinstance(msg, Bitfield):
            peer.post(Complete(msg.package_id))
        elif isinstance(msg, Request) and self.answer_junk:
            peer.post(Chunk(msg.package_id, msg.index, b"\x00" * 65536))
        return True


def honest(peer: Peer, nursery: trio.Nursery) -> None:
    """Download every announced package (what an agent does), then serve it."""

    async def on_announcement(ann: Announcement, via: PeerConn | None) -> None:
        nursery.start_soon(peer.swarm.download, ann)

    peer.node.on_announcement = on_announcement


async def run_publish(
    tmp: Path, peers: list[Peer], replicas: int, timeout: float
) -> tuple[int, str]:
    key = tmp / "authority.key"
    if not key.exists():
        write_secret_key(key, AUTHORITY)
    package = tmp / "package.bin"
    package.write_bytes(random.Random(5).randbytes(SIZE))
    argv = ["publish", "--key", str(key), "--channel", "app/stable", "--version", "2.0.0"]
    argv += ["--file", str(package), "--replicas", str(replicas), "--timeout", str(timeout)]
    for p in peers:
        host, port = p.node.listen_addr
        argv += ["--peer", f"{host}:{port}"]
    args = build_parser().parse_args(argv)
    keys = _check_args(args)
    rc = await _publish(args, keys)
    return rc, ""


async def publish_times_out(tmp: Path, peers: list[Peer], replicas: int) -> str:
    """Run publish, which must time out; its one-line message."""
    try:
        await run_publish(tmp, peers, replicas=replicas, timeout=3)
    except BaseException as exc:  # trio wraps it in exception groups
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, PublishTimeout), repr(exc)
        return str(leaf)
    raise AssertionError("publish exited 0 without the replicas it was asked for")


@pytest.mark.parametrize("answer_junk", [False, True], ids=["silent", "junk"])
async def test_a_peer_that_claims_complete_without_the_package_does_not_count(
    tmp_path: Path, answer_junk: bool
) -> None:
    async with trio.open_nursery() as nursery:
        liar = await start_peer(nursery, 1, [])
        Liar(liar, answer_junk)
        message = await publish_times_out(tmp_path, [liar], replicas=1)
        assert "0 of 1 peers" in message and "1 claimed a copy without proof" in message
        nursery.cancel_scope.cancel()


async def test_an_honest_replica_counts_and_a_liar_beside_it_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with trio.open_nursery() as nursery:
        liar = await start_peer(nursery, 1, [])
        Liar(liar, answer_junk=False)
        good = await start_peer(nursery, 2, [])
        honest(good, nursery)
        rc, _ = await run_publish(tmp_path, [liar, good], replicas=1, timeout=60)
        assert rc == 0
        out = capsys.readouterr().out
        assert "1 replicas;" in out and "; uploaded " in out
        uploaded = int(out.split("uploaded ")[1].split()[0])
        assert uploaded >= SIZE  # the honest peer's copy came from the publisher
        # Two replicas cannot be reached: the liar never proves possession.
        message = await publish_times_out(tmp_path, [liar, good], replicas=2)
        assert "1 of 2 peers" in message
        nursery.cancel_scope.cancel()


class Proxy(Liar):
    """Claims COMPLETE and answers each challenge with the publisher's own chunk."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer, answer_junk=False)
        self.waiting: dict[tuple[bytes, int], PeerConn] = {}

    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        if isinstance(msg, Request):
            peer.post(Request(msg.package_id, msg.index))  # ask the publisher itself
            self.waiting[(msg.package_id, msg.index)] = peer
        elif isinstance(msg, Chunk) and (msg.package_id, msg.index) in self.waiting:
            peer.post(msg)
        else:
            return await super().handle(peer, msg)
        return True


async def test_a_peer_answering_with_the_publishers_own_chunks_does_not_count(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        proxy = await start_peer(nursery, 1, [])
        Proxy(proxy)
        message = await publish_times_out(tmp_path, [proxy], replicas=1)
        assert "0 of 1 peers" in message
        nursery.cancel_scope.cancel()
