"""Child process for test_store_crash: a download's disk side, run until killed.

Usage: python store_crash_child.py ROOT SEED NCHUNKS

It resumes whatever ROOT holds (bitmap, then a scan of the unclaimed chunks),
prints ``ready <claimed>``, then writes the missing chunks in random order from
several tasks while another task persists snapshots of the bitmap every few
milliseconds (printing ``persisted`` each time), the way the download shell
does; at the end it finalizes and prints ``done``. The parent SIGKILLs it at a random moment.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import blake3
import trio
from bitarray.util import zeros

from p2pupdate.core.chunks import hash_chunk
from p2pupdate.shell.transfer.store import CHUNK_SIZE, DiskStore

__all__ = ["make_chunks", "package_of"]


def make_chunks(seed: int, nchunks: int) -> list[bytes]:
    """Deterministic package content: chunk i is BLAKE3-XOF(seed, i)."""
    return [blake3.blake3(f"{seed}/{i}".encode()).digest(length=CHUNK_SIZE) for i in range(nchunks)]


def package_of(chunks: list[bytes]) -> tuple[bytes, list[bytes], int]:
    """(package id, chunk table, size) of a list of chunks."""
    h = blake3.blake3()
    for c in chunks:
        h.update(c)
    return h.digest(), [hash_chunk(c) for c in chunks], sum(len(c) for c in chunks)


async def run(root: Path, seed: int, nchunks: int) -> None:
    chunks = make_chunks(seed, nchunks)
    pid, table, size = package_of(chunks)
    store = DiskStore(root, free_margin=0)
    if store.has_complete(pid):
        print("ready", nchunks, "\ndone", flush=True)
        return
    await store.open_partial(pid, size)
    have = store.load_bitmap(pid, nchunks)
    if have is None:
        have = zeros(nchunks)
    for i in await store.scan_unclaimed(pid, table, have, size):
        have[i] = 1
    print("ready", have.count(), flush=True)
    todo = list(have.search(0))
    random.Random().shuffle(todo)
    writers_done = trio.Event()

    async def writer(mine: list[int]) -> None:
        for i in mine:
            await store.write_chunk(pid, i, chunks[i])
            have[i] = 1  # only once written, as the downloader does
            await trio.sleep(0.002)  # paced like a network, so kills land mid-run

    async def persister() -> None:
        while not writers_done.is_set():
            await store.persist(pid, have.copy())
            print("persisted", flush=True)
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(persister)
        async with trio.open_nursery() as writers:
            for k in range(2):
                writers.start_soon(writer, todo[k::2])
        writers_done.set()
    await store.persist(pid, have.copy())
    assert await store.finalize(pid, size)
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    trio.run(run, Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
