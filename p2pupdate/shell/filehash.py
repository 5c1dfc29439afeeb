"""The one whole-file hasher: BLAKE3 of a file read in blocks, optionally copied as it goes.

Every place that hashes a whole file on disk goes through :func:`hash_file`:
the store (a finished download, a cached package checked again, a file copied
into the cache) and the install (staging a file target, checking a target in
recovery). A copy passes a ``sink`` that writes each block where it belongs, so
the bytes that are hashed are the bytes that are written, in one read. (The
publisher's :mod:`p2pupdate.shell.transfer.content` also builds the chunk
table, with a pipeline of its own.)

Synchronous and blocking: async code runs it in a worker thread, with
``check`` = ``trio.from_thread.check_cancelled`` so a cancelled caller stops it
between blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import blake3

__all__ = ["BLOCK", "hash_file", "no_check"]

# Read in blocks of 1 MiB: big enough to be fast, small enough that a cancelled caller
# is noticed within milliseconds, and one reused buffer keeps memory flat.
BLOCK = 1024 * 1024

Sink = Callable[[memoryview, int], None]


def no_check() -> None:
    """Default ``check``: never cancelled."""


def hash_file(
    path: Path, check: Callable[[], None] = no_check, sink: Sink | None = None
) -> tuple[bytes, int]:
    """BLAKE3 of the whole file at ``path`` and its size.

    ``check`` runs before each block (it raises to stop); ``sink`` gets each
    block and its offset after it was hashed (the view is reused: copy or write
    it before returning).
    """
    hasher = blake3.blake3()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            check()
            n = f.readinto(buf)
            if not n:
                break
            block = view[:n]
            hasher.update(block)
            if sink is not None:
                sink(block, size)
            size += n
    digest: bytes = hasher.digest()
    return digest, size
