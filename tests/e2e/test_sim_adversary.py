"""The simulation's adversarial peer, spoken to over real TCP on 127.0.0.1.

A raw client (the codec and message types, no node) plays the honest side:
it hands the adversary an announcement and checks that the adversary then
claims every chunk, serves wrong bytes of the right length, serves the true
table in ``bad-chunks`` mode (fetched from the client and checked against the
signed root, even when asked before it had it) and a wrong one in
``bad-tables`` mode.
"""

from __future__ import annotations

import random
from functools import partial
from typing import TypeVar

import nacl.signing
import trio

from p2pupdate.core.chunks import (
    chunk_length,
    hash_chunk,
    page_hash,
    page_hashes,
    page_of_table,
    root_from_page_hashes,
)
from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    TABLE_PAGE_LIST,
    Announce,
    Bitfield,
    Chunk,
    Complete,
    GetTable,
    Hello,
    Inventory,
    Message,
    Ping,
    Pong,
    Request,
    Table,
)
from p2pupdate.sim.adversary import ADVERSARY_AGENT, Adversary
from tests.helpers import content_of, make_announcement

M = TypeVar("M", bound=Message)
SIZE = 3 * 65536 + 1000  # four chunks, the last one short
DATA = random.Random(7).randbytes(SIZE)


class RawPeer:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, msg: Message) -> None:
        await self.stream.send_all(encode(msg))

    async def recv(self) -> Message:
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            with trio.fail_after(10):
                data = await self.stream.receive_some(1 << 18)
            assert data, "the adversary closed the connection"
            self.decoder.receive_data(data)

    async def recv_type(self, kind: type[M]) -> M:
        while True:
            msg = await self.recv()
            if isinstance(msg, kind):
                return msg


OPEN: list[RawPeer] = []


async def connect(adv: Adversary, listen_port: int = 4242) -> RawPeer:
    peer = RawPeer(await trio.open_tcp_stream("127.0.0.1", adv.port))
    OPEN.append(peer)
    hello = await peer.recv_type(Hello)
    assert hello.agent == ADVERSARY_AGENT and hello.listen_port == adv.port
    await peer.send(
        Hello(PROTOCOL_VERSION, random.randbytes(32), listen_port, "test", random.randbytes(32))
    )
    return peer


async def close_all() -> None:
    while OPEN:
        await OPEN.pop().stream.aclose()


async def feed_table(peer: RawPeer, pid: bytes, table: list[bytes]) -> None:
    """Play an honest peer that holds the package: answer the adversary's GET_TABLEs."""
    await peer.send(Complete(pid))
    asked = []
    while True:
        ask = await peer.recv_type(GetTable)
        assert ask.package_id == pid
        asked.append(ask.page)
        if ask.page == TABLE_PAGE_LIST:
            await peer.send(Table(pid, TABLE_PAGE_LIST, b"".join(page_hashes(table))))
        else:
            assert ask.page == 0
            await peer.send(Table(pid, 0, page_of_table(table, 0)))
            break
    assert asked[0] == TABLE_PAGE_LIST  # the page list first, checked against the root


async def test_adversary_claims_everything_and_serves_wrong_chunks() -> None:
    ann = make_announcement([nacl.signing.SigningKey.generate()], data=DATA)
    pid = ann.body.package_id
    table = list(content_of(DATA).chunk_hashes)
    adv = Adversary("bad-chunks", "127.0.0.1", [], rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(adv.run)
        peer = await connect(adv)
        await peer.send(Announce(ann.encode()))
        # bad-chunks: it claims nothing before it holds the true table.
        await feed_table(peer, pid, table)
        bitfield = await peer.recv_type(Bitfield)
        assert bitfield.package_id == pid and bitfield.nchunks == 4
        assert bitfield.bits == bytes([0b11110000])
        for index in range(4):
            await peer.send(Request(pid, index))
            chunk = await peer.recv_type(Chunk)
            assert chunk.index == index
            assert len(chunk.data) == chunk_length(SIZE, index)
            assert hash_chunk(chunk.data) != table[index]
        await peer.send(Ping(99))
        assert (await peer.recv_type(Pong)).nonce == 99
        assert adv.stats.bad_chunks_served == 4
        assert adv.stats.bad_chunks_to == {"127.0.0.1:4242": 4}
        # A peer that connects later is told at once.
        late = await connect(adv, 4444)
        assert (await late.recv_type(Bitfield)).package_id == pid
        await close_all()
        nursery.cancel_scope.cancel()


async def test_bad_chunks_mode_serves_the_true_table_fetched_from_honest_peers() -> None:
    ann = make_announcement([nacl.signing.SigningKey.generate()], data=DATA)
    pid = ann.body.package_id
    table = list(content_of(DATA).chunk_hashes)
    pages = page_hashes(table)
    adv = Adversary("bad-chunks", "127.0.0.1", [], rng=random.Random(2))
    async with trio.open_nursery() as nursery:
        await nursery.start(adv.run)
        victim = await connect(adv)
        await victim.send(Announce(ann.encode()))
        # Asked before it has the table: the answer waits until it has one.
        await victim.send(GetTable(pid, TABLE_PAGE_LIST))
        honest = await connect(adv, 4343)
        await feed_table(honest, pid, table)
        got = await victim.recv_type(Table)
        assert got.page == TABLE_PAGE_LIST and got.hashes == b"".join(pages)
        await victim.send(GetTable(pid, 0))
        page = await victim.recv_type(Table)
        assert page.hashes == page_of_table(table, 0)
        assert adv.stats.bad_table_pages_served == 0
        assert adv.stats.true_table_pages_served == 2
        await close_all()
        nursery.cancel_scope.cancel()


async def test_bad_tables_mode_serves_tables_that_fail_the_root() -> None:
    ann = make_announcement([nacl.signing.SigningKey.generate()], data=DATA)
    pid = ann.body.package_id
    table = list(content_of(DATA).chunk_hashes)
    adv = Adversary("bad-tables", "127.0.0.1", [], rng=random.Random(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(adv.run)
        victim = await connect(adv)
        # It learns the announcement by inventory, like a node.
        await victim.send(Inventory(((ann.body.channel, ann.id),)))
        ask = await victim.recv()
        while not hasattr(ask, "announcement_id"):
            ask = await victim.recv()
        await victim.send(Announce(ann.encode()))
        await victim.recv_type(Bitfield)
        await victim.send(GetTable(pid, TABLE_PAGE_LIST))
        listing = await victim.recv_type(Table)
        assert len(listing.hashes) == 32
        assert root_from_page_hashes([listing.hashes]) != ann.body.table_root
        await victim.send(GetTable(pid, 0))
        page = await victim.recv_type(Table)
        assert len(page.hashes) == 32 * len(table)
        assert page_hash(page.hashes) != page_hashes(table)[0]
        assert adv.stats.bad_table_pages_served == 2
        await close_all()
        nursery.cancel_scope.cancel()


async def test_adversary_dials_its_targets_and_keeps_redialing() -> None:
    accepted: list[trio.SocketStream] = []
    got_two = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        if len(accepted) >= 2:
            got_two.set()
        await stream.aclose()  # like a node that banned it

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        adv = Adversary("bad-chunks", "127.0.0.1", [("127.0.0.1", port)], rng=random.Random(4))
        await nursery.start(adv.run)
        with trio.fail_after(10):
            await got_two.wait()
        assert len(accepted) >= 2 and adv.stats.connections >= 1
        await close_all()
        nursery.cancel_scope.cancel()
