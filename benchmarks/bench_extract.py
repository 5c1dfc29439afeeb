"""Benchmark: unpacking a directory release, with and without hashing what is read.

``extract_release`` with ``package_id`` reads the archive once in tar stream mode and
BLAKE3-hashes every byte it reads (so a cache file changed after verification is refused);
without it, the archive is read in random-access mode and not hashed. Both pre-check the
member list first. Runs alternate and the best of each is compared, so a burst of load from
other processes hurts both sides alike. Prints figures; asserts nothing.

Usage: python benchmarks/bench_extract.py [--size-mib 256] [--files 64] [--reps 5]
Files go to /dev/shm when it exists (tmpfs: CPU and memory, not a disk), removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import blake3

from p2pupdate.shell.install.unpack import extract_release

MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base, prefix="p2pupdate-bench-") as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        per_file = args.size_mib * MiB // args.files
        for i in range(args.files):
            (src / f"f{i:04d}").write_bytes(os.urandom(per_file))
        archive = root / "release.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(src, arcname=".")
        shutil.rmtree(src)
        size = archive.stat().st_size
        package_id = blake3.blake3(archive.read_bytes()).digest()
        times: dict[str, list[float]] = {"plain": [], "hashed": []}
        for rep in range(args.reps):
            for label in ("plain", "hashed"):
                release = root / f"rel-{label}-{rep}"
                started = time.perf_counter()
                extract_release(
                    archive,
                    release,
                    1 << 40,
                    package_id=package_id if label == "hashed" else None,
                )
                times[label].append(time.perf_counter() - started)
                shutil.rmtree(release)
                release.with_name(release.name + ".complete").unlink()
        best = {label: min(t) for label, t in times.items()}
        for label, t in best.items():
            print(f"{label:7s} {size / MiB:8.1f} MiB  best {t:7.3f} s  {size / MiB / t:8.1f} MiB/s")
        print(f"hashed / plain time: {best['hashed'] / best['plain']:.2f}")


if __name__ == "__main__":
    main()
