"""The agent's cache upkeep: LRU eviction that never touches pinned packages."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import trio

from p2pupdate.shell.agent import Agent, AgentOptions
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.transport import MemoryNetwork
from p2pupdate.shell.transfer.memstore import MemoryStore
from p2pupdate.shell.transfer.swarm import Swarm
from tests.helpers import content_of, make_announcement
from tests.shell.test_gossip import AUTHORITY, TRUST


async def test_lru_unpinned_packages_are_evicted_and_the_newest_is_kept(tmp_path: Path) -> None:
    net = MemoryNetwork()
    node = Node(
        NodeOptions(listen=("10.0.0.1", 1), trust=TRUST),
        net.transport("10.0.0.1"),
        nacl.signing.SigningKey(b"\x03" * 32),
    )
    store = MemoryStore()
    swarm = Swarm(node, store)
    events = EventLog(None, "me")
    applicator = Applicator(tmp_path / "d", tmp_path / "b", lambda n, f: None)
    agent = Agent(node, swarm, applicator, events, AgentOptions(cache_size=150_000))
    blobs = {v: bytes([i]) * 70_000 for i, v in enumerate(["1.0.0", "1.1.0", "1.2.0"])}
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        for i, (version, data) in enumerate(blobs.items()):
            info = content_of(data)
            store.add_complete_chunks(info.package_id, [data[:65536], data[65536:]])
            agent.cache.add(info.package_id, info.size, float(i))
            # The channel's newest is 1.2.0 once it arrives (pinned "newest").
            await node.inject(make_announcement([AUTHORITY], version=version, data=data))
        await agent.maintain_cache()
        kept = {p for p, _ in store.list_complete()}
        newest = content_of(blobs["1.2.0"]).package_id
        oldest = content_of(blobs["1.0.0"]).package_id
        assert newest in kept, "the newest of a channel is pinned"
        assert oldest not in kept, "least recently used goes first"
        assert sum(s for _, s in store.list_complete()) <= 150_000
        # Over capacity with only pinned packages: kept, and status says why.
        agent.cache.set_capacity(10)
        await agent.maintain_cache()
        assert newest in {p for p, _ in store.list_complete()}
        status = agent.status()["cache"]
        assert status["over_capacity"] and "newest" in status["over_capacity"]
        nursery.cancel_scope.cancel()
    events.close()


async def test_corrupt_cached_package_is_dropped_at_start_and_fetched_again(
    tmp_path: Path,
) -> None:
    from p2pupdate.shell.transfer.store import DiskStore
    from tests.shell.swarm_helpers import package, seed_with, start_peer, wait_connected

    data, info, ann = package(20 * 65536 + 9, seed=8)

    async def relay_node(nursery: trio.Nursery, seed_addr: tuple[str, int]) -> Agent:
        store = DiskStore(tmp_path / "store")
        peer = await start_peer(
            nursery, 1, [seed_addr], store=store, data_dir=tmp_path / "data", seed=77
        )
        agent = Agent(
            peer.node,
            peer.swarm,
            Applicator(tmp_path / "data", tmp_path / "backups", lambda n, f: None),
            EventLog(None, "relay"),
            AgentOptions(),
        )
        await nursery.start(agent.run)
        await wait_connected([peer], 1)
        return agent

    async def cached(agent: Agent) -> bytes:
        """The cached bytes once they are the package's (bounded wait)."""
        with trio.fail_after(20):
            while True:
                path = agent.swarm.store.complete_path(info.package_id)
                if path is not None and path.is_file() and path.read_bytes() == data:
                    return data
                await trio.sleep(0.02)

    async with trio.open_nursery() as outer:
        seed = await start_peer(outer, 0, [])
        await seed_with(seed, ann, info, data)
        async with trio.open_nursery() as first:
            agent = await relay_node(first, seed.node.listen_addr)
            assert await cached(agent) == data  # a relay node caches for others
            first.cancel_scope.cancel()
        agent.swarm.store.close()
        cache_file = next((tmp_path / "store" / "cache").iterdir())
        raw = bytearray(cache_file.read_bytes())
        raw[12345] ^= 0xFF  # bit rot
        cache_file.write_bytes(bytes(raw))
        uploaded = seed.swarm.bytes_uploaded
        async with trio.open_nursery() as second:
            agent = await relay_node(second, seed.node.listen_addr)
            assert await cached(agent) == data  # dropped and fetched again
            assert seed.swarm.bytes_uploaded - uploaded >= info.size  # really re-fetched
            second.cancel_scope.cancel()
        agent.swarm.store.close()
        outer.cancel_scope.cancel()
