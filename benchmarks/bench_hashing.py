"""Benchmark: package hashing and CHUNK frame codec throughput. Prints figures; asserts nothing.

1. ``hash_file`` (package id + chunk table + root, read from a file) against one
   single-threaded ``blake3.blake3(data).digest()`` over the same bytes already in memory.
   Target (docs/performance.md): ratio >= 0.90. Runs alternate, and the best of each is compared, so
   a burst of load from other processes hurts both sides alike; the medians are printed too.
2. CHUNK frames (64 KiB payload): encode, then feed the bytes to a FrameDecoder in 64 KiB
   pieces (what a socket read hands over) and take the messages out; MiB/s of payload.

Usage: python benchmarks/bench_hashing.py [--size-mib 256] [--reps 9] [--buffer-kib 1024]
                                          [--file EXISTING_FILE]
A new random file is written to /dev/shm when it exists (tmpfs: the figures measure CPU and
memory, not a disk) and removed afterwards; --file measures an existing file instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.messages import Chunk
from p2pupdate.shell.transfer.content import DEFAULT_BUFFER_SIZE, hash_file

MiB = 1024 * 1024


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _read_only(path: Path, buffer_size: int) -> None:
    buffer = bytearray(buffer_size)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def bench_hashing(path: Path, reps: int, buffer_size: int) -> None:
    data = path.read_bytes()
    size = len(data)
    expected = blake3.blake3(data).digest()
    info = hash_file(path, buffer_size=buffer_size)
    if info.package_id != expected:
        raise SystemExit("hash_file computed a wrong package id")
    base_times: list[float] = []
    file_times: list[float] = []
    read_times: list[float] = []
    for _ in range(reps):
        base_times.append(_timed(lambda: blake3.blake3(data).digest()))
        file_times.append(_timed(lambda: hash_file(path, buffer_size=buffer_size)))
        read_times.append(_timed(lambda: _read_only(path, buffer_size)))
    mib = size / MiB
    best_base, best_file = min(base_times), min(file_times)
    med_base, med_file = statistics.median(base_times), statistics.median(file_times)
    print(f"file: {mib:.0f} MiB at {path}, buffer {buffer_size // 1024} KiB, {reps} runs each")
    print(f"  one blake3 call, single-threaded : {mib / best_base:7.0f} MiB/s best")
    print(f"  hash_file (id + table + root)    : {mib / best_file:7.0f} MiB/s best")
    print(f"  ratio (best / best)              : {best_base / best_file:7.3f}   target >= 0.90")
    print(f"  ratio (median / median)          : {med_base / med_file:7.3f}")
    print(f"  reading the file alone           : {mib / min(read_times):7.0f} MiB/s best")


def bench_hashing_fresh_file(size: int, reps: int, buffer_size: int) -> None:
    base_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base_dir, prefix="p2pupdate-bench-") as tmp:
        path = Path(tmp) / "package.bin"
        with open(path, "wb") as f:
            for _ in range(size // (4 * MiB)):
                f.write(os.urandom(4 * MiB))
            f.write(os.urandom(size % (4 * MiB)))
        bench_hashing(path, reps, buffer_size)


def bench_codec(total: int) -> None:
    payload = os.urandom(64 * 1024)
    pid = os.urandom(32)
    group = 16  # frames encoded, then decoded, per round: 1 MiB in flight, like a connection
    rounds = max(1, total // (group * len(payload)))
    decoder = FrameDecoder()
    t_encode = t_decode = 0.0
    received = 0
    for r in range(rounds):
        messages = [Chunk(pid, (r * group + i) % 65536, payload) for i in range(group)]
        start = time.perf_counter()
        frames = [encode(m) for m in messages]
        t_encode += time.perf_counter() - start
        stream = b"".join(frames)
        pieces = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
        start = time.perf_counter()
        for piece in pieces:
            decoder.receive_data(piece)
            while (msg := decoder.next_message()) is not None:
                received += len(msg.data) if isinstance(msg, Chunk) else 0
        t_decode += time.perf_counter() - start
    if received != rounds * group * len(payload):
        raise SystemExit("decoder lost data")
    mib = received / MiB
    per_frame = 1e6 / (rounds * group)
    print(f"CHUNK frames: {rounds * group} x 64 KiB payload, decoder fed 64 KiB pieces")
    for name, seconds in (("encode", t_encode), ("decode", t_decode)):
        rate = mib / seconds
        print(f"  {name:17}: {rate:7.0f} MiB/s of payload ({seconds * per_frame:.1f} us/frame)")
    print(f"  encode + decode  : {mib / (t_encode + t_decode):7.0f} MiB/s of payload")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--buffer-kib", type=int, default=DEFAULT_BUFFER_SIZE // 1024)
    p.add_argument("--codec-mib", type=int, default=256)
    p.add_argument("--file", type=Path, help="hash this existing file instead of a new one")
    args = p.parse_args()
    print(f"CPUs: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    if args.file is not None:
        bench_hashing(args.file, args.reps, args.buffer_kib * 1024)
    else:
        bench_hashing_fresh_file(args.size_mib * MiB, args.reps, args.buffer_kib * 1024)
    bench_codec(args.codec_mib * MiB)


if __name__ == "__main__":
    main()
