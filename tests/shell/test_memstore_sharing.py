"""MemoryStore chunk sharing: equal verified chunks become one object across stores."""

from __future__ import annotations

import random

from bitarray.util import ones

from p2pupdate.core.chunks import CHUNK_SIZE
from p2pupdate.shell.transfer.memstore import ContentMemo, MemoryStore
from tests.helpers import content_of


async def test_stores_sharing_a_memo_hold_one_copy_of_each_chunk() -> None:
    data = random.Random(3).randbytes(3 * CHUNK_SIZE + 100)
    info = content_of(data)
    pid = info.package_id
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    memo = ContentMemo(share_chunks=True)
    publisher = MemoryStore(memo=memo)
    publisher.add_complete_chunks(pid, chunks)
    stores = [MemoryStore(memo=memo) for _ in range(3)]
    for store in stores:
        await store.open_partial(pid, len(data))
        for i, chunk in enumerate(chunks):
            await store.write_chunk(pid, i, bytes(bytearray(chunk)))  # a fresh copy each
        await store.persist(pid, ones(len(chunks)))
        assert await store.finalize(pid, len(data))
    reads = [[await s.read_chunk(pid, i, len(c)) for i, c in enumerate(chunks)] for s in stores]
    for got in reads:
        assert got == chunks
        assert all(a is b for a, b in zip(got, reads[0], strict=True))  # one object each


async def test_a_different_chunk_is_never_replaced_by_the_shared_one() -> None:
    memo = ContentMemo(share_chunks=True)
    pid = bytes(32)
    a, b = MemoryStore(memo=memo), MemoryStore(memo=memo)
    for store in (a, b):
        await store.open_partial(pid, CHUNK_SIZE)
    await a.write_chunk(pid, 0, b"\x01" * CHUNK_SIZE)
    await b.write_chunk(pid, 0, b"\x02" * CHUNK_SIZE)  # other bytes at the same place
    assert await b.read_chunk(pid, 0, CHUNK_SIZE) == b"\x02" * CHUNK_SIZE
    assert await a.read_chunk(pid, 0, CHUNK_SIZE) == b"\x01" * CHUNK_SIZE


async def test_without_sharing_each_store_keeps_its_own_object() -> None:
    memo = ContentMemo()
    pid = bytes(32)
    a, b = MemoryStore(memo=memo), MemoryStore(memo=memo)
    for store in (a, b):
        await store.open_partial(pid, CHUNK_SIZE)
        await store.write_chunk(pid, 0, bytes(bytearray(b"\x05" * CHUNK_SIZE)))
    assert await a.read_chunk(pid, 0, CHUNK_SIZE) is not await b.read_chunk(pid, 0, CHUNK_SIZE)
