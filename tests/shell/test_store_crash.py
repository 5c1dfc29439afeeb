"""A real kill -9 of a process writing chunks and persisting bitmaps.

kill -9 cannot prove the fsync order (the page cache survives the process;
test_store.py checks the order as actions), but it does prove that a bitmap
on disk is never torn and never claims a chunk whose bytes are not there,
whatever moment the kill lands on, and that resuming from what is left
completes the package with every claimed chunk reused.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from p2pupdate.core.bitmapfile import decode_bitmap
from p2pupdate.core.chunks import hash_chunk
from p2pupdate.shell.transfer.store import CHUNK_SIZE
from tests.shell.store_crash_child import make_chunks, package_of

CHILD = Path(__file__).with_name("store_crash_child.py")
NCHUNKS = 256  # 16 MiB
SEED = 11
KILLS = 6


@dataclass
class Run:
    returncode: int
    resumed_with: int  # chunks the child started from (bitmap + scan)
    last_line: bytes
    stderr: str


def run_child(root: Path, kill_after_persists: int | None, rng: random.Random) -> Run:
    """Run the child; SIGKILL it after that many persists plus a random moment."""
    err_path = root.parent / "child.err"
    with (
        open(err_path, "wb") as err,
        subprocess.Popen(
            [sys.executable, str(CHILD), str(root), str(SEED), str(NCHUNKS)],
            stdout=subprocess.PIPE,
            stderr=err,
        ) as proc,
    ):
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        resumed_with = int(first[1]) if first[:1] == [b"ready"] else -1
        last = b""
        if kill_after_persists is not None and resumed_with >= 0:
            for _ in range(kill_after_persists):
                last = proc.stdout.readline().strip()
                if last != b"persisted":
                    break
            time.sleep(rng.uniform(0.0, 0.003))
            proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:
            last = line.strip()
        returncode = proc.wait()
    return Run(returncode, resumed_with, last, err_path.read_text(errors="replace"))


def claimed_chunks(root: Path, pid: bytes, table: list[bytes]) -> int:
    """Check every claimed chunk against the table; return how many are claimed."""
    bitmap = root / "partial" / f"{pid.hex()}.bitmap"
    part = root / "partial" / f"{pid.hex()}.part"
    if not bitmap.exists():
        return 0
    # Never torn or stale: decode_bitmap raises on any damage.
    have = decode_bitmap(bitmap.read_bytes(), package_id=pid, nchunks=NCHUNKS)
    with open(part, "rb") as f:
        for i in have.search(1):
            f.seek(i * CHUNK_SIZE)
            assert hash_chunk(f.read(CHUNK_SIZE)) == table[i], f"bitmap claims bad chunk {i}"
    return int(have.count())


def test_kill_9_never_leaves_a_bitmap_ahead_of_the_data(tmp_path: Path) -> None:
    chunks = make_chunks(SEED, NCHUNKS)
    pid, table, size = package_of(chunks)
    root = tmp_path / "store"
    cached = root / "cache" / f"{pid.hex()}.pkg"
    rng = random.Random()
    claimed = 0
    killed = 0
    for _ in range(KILLS):
        # Kill after a random number of persists and a random moment more, so the
        # kill lands mid-run: between or in the middle of writes and persists.
        run = run_child(root, rng.randint(1, 12), rng)
        assert run.resumed_with >= claimed, run.stderr  # resume starts from every claim
        if run.returncode == 0:
            break  # finished before the kill landed
        assert run.returncode == -signal.SIGKILL, run.stderr
        killed += 1
        if cached.exists():
            break  # killed after finalize had moved the package into the cache
        now = claimed_chunks(root, pid, table)
        assert now >= claimed  # claims are never lost
        claimed = now
    run = run_child(root, None, rng)
    assert run.returncode == 0, run.stderr
    assert run.last_line == b"done"
    assert cached.read_bytes() == b"".join(chunks)
    assert cached.stat().st_size == size
    assert not list((root / "partial").iterdir())
    assert killed >= 1
