"""HAVE to a downloader leaves out the chunks it already holds (real TCP, a raw peer)."""

from __future__ import annotations

import trio
from bitarray.util import zeros

from p2pupdate.core.messages import Bitfield, Chunk, Have, Reject, Request
from p2pupdate.shell.transfer.swarm import SwarmOptions
from tests.shell.hostile import open_raw
from tests.shell.swarm_helpers import package, seed_with, start_peer, wait_connected


async def test_a_downloader_that_asked_us_hears_only_of_chunks_it_lacks() -> None:
    data, info, ann = package(40 * 65536)
    pid = info.package_id
    slow = SwarmOptions(max_upload_speed=1 << 20, request_timeout=5.0)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [], swarm_options=slow)
        await seed_with(seed, ann, info, data)
        a = await start_peer(nursery, 1, [seed.node.listen_addr])
        await wait_connected([a], 1)
        raw = await open_raw(a.node.listen_addr)
        await raw.handshake()
        done = trio.Event()

        async def download() -> None:
            assert (await a.swarm.download(ann)).ok
            done.set()

        nursery.start_soon(download)
        # A knows the package once it tells us about it (its first HAVE or BITFIELD).
        with trio.fail_after(20):
            while True:
                msg = await raw.recv()
                assert msg is not None
                if isinstance(msg, (Have, Bitfield)) and msg.package_id == pid:
                    break
        held = set(range(0, info.nchunks, 2))
        bits = zeros(info.nchunks, endian="big")
        for i in held:
            bits[i] = 1
        # We hold the even chunks and ask A for one: we are a downloader.
        await raw.send(Bitfield(pid, info.nchunks, bits.tobytes()), Request(pid, 1))
        heard: list[int] = []
        answered = False
        with trio.fail_after(60):
            while not (done.is_set() and answered and heard):
                with trio.move_on_after(0.5):
                    msg = await raw.recv()
                    assert msg is not None
                    if isinstance(msg, (Reject, Chunk)) and msg.index == 1:
                        answered = True  # A has taken in our BITFIELD and REQUEST by now
                    elif isinstance(msg, Have) and answered:
                        heard.extend(msg.indices)
        assert heard, "A wrote chunks after our request and told us of none"
        assert not held & set(heard), "A told us of chunks we hold"
        await raw.aclose()
        nursery.cancel_scope.cancel()
