"""Peak RSS of a ``p2pupdate node`` under a flood of each message type (issue 12).

Starts a real node process on 127.0.0.1, reads its idle RSS, then floods it
with one message type at a time from many fresh node ids
(``p2pupdate.sim.flood``: half the workers on long-lived connections, half
churning keys), ``--seconds`` per type (default 60), and prints the node's peak
RSS (VmHWM) after each. Target: peak within +20 MiB of idle. Linux (/proc).

    .venv/bin/python benchmarks/bench_flood.py [--seconds 60] [--kinds bitfield,cancel]
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio

from p2pupdate.core.keys import format_pubkey
from p2pupdate.sim.flood import KINDS, flood

MiB = 1024 * 1024


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="per message type")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    trust = format_pubkey(bytes(nacl.signing.SigningKey.generate().verify_key))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "node.log"
        argv = [sys.executable, "-m", "p2pupdate", "node", "--data-dir", f"{tmp}/d"]
        argv += ["--listen", "127.0.0.1:0", "--trust", trust, "--events", f"{tmp}/ev.jsonl"]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
        try:
            port = 0
            deadline = time.monotonic() + 30
            while not port:
                m = re.search(r"listening on (\S+):(\d+)", log.read_text())
                port = int(m.group(2)) if m else 0
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"node did not start:\n{log.read_text()}")
                time.sleep(0.1)
            time.sleep(2)
            idle = status(proc.pid)["VmRSS"]
            print(f"idle RSS {idle / MiB:.1f} MiB; {args.seconds:g} s per type")
            print(
                f"{'type':<14}{'messages':>10}{'conns':>8}{'MiB sent':>10}{'peak':>9}{'+idle':>8}"
            )
            for kind in kinds:
                st = trio.run(
                    lambda k=kind: flood(
                        ("127.0.0.1", port),
                        seconds=args.seconds,
                        kinds=(k,),
                        workers=args.workers,
                        rng=random.Random(1),
                    )
                )
                peak = status(proc.pid)["VmHWM"]
                print(
                    f"{kind:<14}{st.messages:>10}{st.connections:>8}"
                    f"{st.bytes_sent / MiB:>10.0f}{peak / MiB:>9.1f}{(peak - idle) / MiB:>8.1f}"
                )
            events = Path(f"{tmp}/ev.jsonl")
            size = events.stat().st_size if events.exists() else 0
            print(f"events file {size / MiB:.1f} MiB, log {log.stat().st_size / MiB:.1f} MiB")
            if proc.poll() is not None:
                sys.exit("the node died")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
