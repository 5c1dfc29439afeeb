"""Downloads whose sources went away pick up a new source (issue 21), on real TCP.

A publisher run again after the first one died, a late node that holds the package, a
seed that comes back, and a super-seeder that lost track of a peer: each time the running
downloads learn about the new source and finish.
"""

from __future__ import annotations

import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.shell.transfer.memstore import MemoryStore
from p2pupdate.shell.transfer.swarm import SwarmOptions
from tests.shell.swarm_helpers import (
    Peer,
    package,
    read_all,
    seed_with,
    start_peer,
    wait_connected,
)

LIMIT = 2 * 1024 * 1024  # bytes/s: a download of 2 MiB takes about a second


def _done(p: Peer, package_id: bytes) -> int:
    pkg = p.swarm.packages.get(package_id)
    if pkg is None or pkg.downloader is None:
        return 0
    return pkg.downloader.bytes_done


def _pkg_dl(p: Peer, package_id: bytes) -> bool:
    pkg = p.swarm.packages.get(package_id)
    return pkg is not None and pkg.downloader is not None


async def _wait(what: str, check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def _start_downloads(
    nursery: trio.Nursery, nodes: list[Peer], ann: Announcement, results: dict[int, object]
) -> None:
    async def fetch(i: int, p: Peer) -> None:
        results[i] = await p.swarm.download(ann)

    for i, p in enumerate(nodes):
        nursery.start_soon(fetch, i, p)


async def test_a_new_publisher_connecting_before_it_has_the_package_finishes_the_rollout() -> None:
    data, info, ann = package(96 * 65536, seed=5)
    pid = info.package_id
    opts = SwarmOptions(max_upload_speed=LIMIT, request_timeout=2.0)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as doomed:
            first = await start_peer(
                doomed, 0, [], swarm_options=SwarmOptions(super_seed=True, max_upload_speed=LIMIT)
            )
            await seed_with(first, ann, info, data)
            nodes: list[Peer] = []
            for i in range(4):
                boot = [first.node.listen_addr] + [n.node.listen_addr for n in nodes[:1]]
                nodes.append(await start_peer(nursery, i + 1, boot, swarm_options=opts))
            results: dict[int, object] = {}
            await _start_downloads(nursery, nodes, ann, results)
            await _wait("a third out", lambda: max(_done(n, pid) for n in nodes) >= info.size // 3)
            doomed.cancel_scope.cancel()  # the publisher dies
        await _wait(
            "the nodes to trade what they have", lambda: len({_done(n, pid) for n in nodes}) == 1
        )
        held = _done(nodes[0], pid)
        assert 0 < held < info.size and not results

        # The same publish again: a super-seeding node that connects first and only then
        # has the package (publish hashes and copies the file while it dials), so the
        # downloads' BITFIELDs reach it before it holds anything.
        again = await start_peer(
            nursery,
            9,
            [n.node.listen_addr for n in nodes],
            swarm_options=SwarmOptions(super_seed=True, max_upload_speed=LIMIT),
        )
        again.swarm.set_table(ann, list(info.chunk_hashes))
        await _wait(
            "every node's bitfield at the new publisher",
            lambda: len(again.swarm.packages[pid].bitfields) == len(nodes),
        )
        await seed_with(again, ann, info, data)
        await _wait("every node to finish", lambda: len(results) == len(nodes))
        assert all(r.ok for r in results.values())  # type: ignore[attr-defined]
        for n in nodes:
            assert await read_all(n.store, info) == data
        seeder = again.swarm.packages[pid].seeder
        assert seeder is not None
        assert seeder.swarm_held * 65536 >= held  # it counted what the swarm had
        sent = again.swarm.bytes_uploaded
        missing = info.size - held
        assert sent >= (info.nchunks - seeder.swarm_held - 1) * 65536  # all it lacked
        assert 0 < sent <= missing + info.size // 4, (sent, missing)  # and little else
        nursery.cancel_scope.cancel()


async def test_only_seed_killed_then_a_late_node_holding_the_package_joins() -> None:
    data, info, ann = package(64 * 65536, seed=6)
    pid = info.package_id
    opts = SwarmOptions(max_upload_speed=LIMIT, request_timeout=2.0)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as doomed:
            seed = await start_peer(doomed, 0, [], swarm_options=opts)
            await seed_with(seed, ann, info, data)
            nodes = [await start_peer(nursery, 1, [seed.node.listen_addr], swarm_options=opts)]
            nodes.append(
                await start_peer(
                    nursery,
                    2,
                    [seed.node.listen_addr, nodes[0].node.listen_addr],
                    swarm_options=opts,
                )
            )
            results: dict[int, object] = {}
            await _start_downloads(nursery, nodes, ann, results)
            await _wait("a quarter", lambda: min(_done(n, pid) for n in nodes) >= info.size // 4)
            doomed.cancel_scope.cancel()
        await _wait(
            "both to lose their seed",
            lambda: all(seed.node.node_id not in n.node.peers for n in nodes),
        )
        assert not results
        # A node that got the package elsewhere joins, knowing only one of them.
        late = await start_peer(nursery, 7, [nodes[1].node.listen_addr], swarm_options=opts)
        await seed_with(late, ann, info, data)
        await _wait("every node to finish", lambda: len(results) == len(nodes))
        assert all(r.ok for r in results.values())  # type: ignore[attr-defined]
        for n in nodes:
            assert await read_all(n.store, info) == data
        assert late.swarm.bytes_uploaded > 0
        nursery.cancel_scope.cancel()


async def test_a_node_that_lost_all_its_sources_gets_one_back_and_completes() -> None:
    data, info, ann = package(64 * 65536, seed=7)
    pid = info.package_id
    opts = SwarmOptions(max_upload_speed=LIMIT, request_timeout=2.0)
    store = MemoryStore()
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as doomed:
            seed = await start_peer(doomed, 0, [], store=store, swarm_options=opts, seed=40)
            await seed_with(seed, ann, info, data)
            port = seed.node.listen_addr[1]
            me = await start_peer(nursery, 1, [seed.node.listen_addr], swarm_options=opts)
            results: dict[int, object] = {}
            await _start_downloads(nursery, [me], ann, results)
            await _wait("a quarter", lambda: _done(me, pid) >= info.size // 4)
            doomed.cancel_scope.cancel()
        await _wait("the seed gone", lambda: not me.node.peers)
        stuck = _done(me, pid)
        assert stuck < info.size and not results
        # The seed comes back (a reboot: same key, same port, its store kept).
        back = await start_peer(
            nursery,
            0,
            [],
            store=store,
            swarm_options=opts,
            seed=40,
            listen=("127.0.0.1", port),
        )
        await seed_with(back, ann, info, data)
        await _wait("the download to finish", lambda: bool(results))
        assert results[0].ok  # type: ignore[attr-defined]
        assert await read_all(me.store, info) == data
        # It fetched only what it lacked from the seed that came back.
        assert back.swarm.bytes_uploaded <= info.size - stuck + 16 * 65536
        nursery.cancel_scope.cancel()


async def test_claims_dropped_on_reject_are_asked_for_again_after_a_stall() -> None:
    # A pipeline deeper than the seed's per-peer queue: the overflow is REJECTed, and the
    # downloader forgets that the seed has those chunks. Nobody else has them: it stalls
    # until it re-examines its sources (and again after each round of rejects).
    data, info, ann = package(80 * 65536, seed=8)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, data)
        me = await start_peer(
            nursery,
            1,
            [seed.node.listen_addr],
            swarm_options=SwarmOptions(pipeline_depth=64, stall_timeout=0.5),
        )
        await wait_connected([me], 1)
        with trio.fail_after(60):  # on the old code: stuck forever with a third missing
            result = await me.swarm.download(ann)
        assert result.ok
        assert await read_all(me.store, info) == data
        dl = me.swarm.packages[info.package_id].downloader
        assert dl is not None and dl.reexaminations >= 1
        nursery.cancel_scope.cancel()


async def test_a_stalled_download_tells_a_seeder_that_missed_it_what_it_lacks() -> None:
    data, info, ann = package(48 * 65536, seed=9)
    pid = info.package_id
    async with trio.open_nursery() as nursery:
        holder = await start_peer(nursery, 0, [])  # has nothing of it: a dead end
        me = await start_peer(
            nursery, 1, [holder.node.listen_addr], swarm_options=SwarmOptions(stall_timeout=0.5)
        )
        await wait_connected([me], 1)
        results: dict[int, object] = {}
        holder.swarm.set_table(ann, list(info.chunk_hashes))  # it can serve the table only
        await _start_downloads(nursery, [me], ann, results)
        await _wait("the download to start", lambda: _pkg_dl(me, pid))
        # A super-seeder connects; the download's BITFIELD to it is lost (as when it came
        # before the seeder existed), so the seeder shows it nothing.
        pub = await start_peer(
            nursery,
            2,
            [me.node.listen_addr],
            swarm_options=SwarmOptions(super_seed=True, max_upload_speed=LIMIT),
        )
        pub.swarm.set_table(ann, list(info.chunk_hashes))
        await _wait(
            "the download's bitfield", lambda: me.node.node_id in pub.swarm.packages[pid].bitfields
        )
        pub.swarm.packages[pid].bitfields.clear()
        await seed_with(pub, ann, info, data)
        await _wait("the download to finish", lambda: bool(results))
        assert results[0].ok  # type: ignore[attr-defined]
        assert await read_all(me.store, info) == data
        dl = me.swarm.packages[pid].downloader
        assert dl is not None and dl.reexaminations >= 1
        nursery.cancel_scope.cancel()


async def test_an_unchanged_bitfield_is_answered_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from bitarray.util import zeros

    from p2pupdate.config import DEFAULT_LIMITS
    from p2pupdate.core.messages import Bitfield, Message
    from p2pupdate.shell.net.node import PeerConn
    from p2pupdate.shell.net.transport import MemoryNetwork

    data, info, ann = package(20 * 65536, seed=10)
    pid = info.package_id
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        seed = await start_peer(
            nursery, 0, [], transport=net.transport("10.0.0.1"), listen=("10.0.0.1", 4000)
        )
        await seed_with(seed, ann, info, data)
        me = await start_peer(
            nursery,
            1,
            [seed.node.listen_addr],
            transport=net.transport("10.0.0.2"),
            listen=("10.0.0.2", 4000),
        )
        got: list[bytes] = []  # the BITFIELDs the seed sent us, as they arrive
        handle = me.swarm.handle

        async def spy(peer: PeerConn, msg: Message) -> bool:
            if isinstance(msg, Bitfield) and msg.package_id == pid:
                got.append(msg.bits)
            return await handle(peer, msg)

        me.swarm.handle = spy  # type: ignore[method-assign]
        await wait_connected([me], 1)
        await _wait("the seed's bitfield on connecting", lambda: len(got) == 1)
        got.clear()
        to_seed = me.node.peers[seed.node.node_id]
        question = Bitfield(pid, info.nchunks, zeros(info.nchunks).tobytes())
        to_seed.post(question)  # the first one: news, not a question
        await trio.sleep(1)
        assert got == []
        await trio.sleep(DEFAULT_LIMITS.bitfield_refresh_interval)
        to_seed.post(question)  # the same again: "what do you hold?"
        await _wait("the answer", lambda: len(got) == 1)
        assert got[0] == b"\xff\xff\xf0"  # all 20 chunks
        to_seed.post(question)  # asked again at once: not answered (no ping-pong)
        await trio.sleep(DEFAULT_LIMITS.bitfield_refresh_interval / 2)
        assert len(got) == 1
        nursery.cancel_scope.cancel()
