"""A flood of every message type from many fresh node ids keeps a node's memory flat.

A real ``p2pupdate node`` process; the flood (``p2pupdate.sim.flood``) runs here
for one second per message type - ``benchmarks/bench_flood.py`` runs 60 s of each.
Before the fix, one second of BITFIELDs took the node to +68 MiB (6 s: +393 MiB)
and CANCELs to +8 MiB (6 s: +60 MiB). The peak
RSS of the node (VmHWM) must stay within 20 MiB of its idle RSS, and the node
must still serve an honest peer afterwards.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from p2pupdate.sim.flood import KINDS, FloodStats, flood
from tests.e2e.conftest import Authority, StartNode
from tests.shell.hostile import open_raw

MiB = 1024 * 1024
# Seconds of flood per message type in the suite; the benchmark runs 60 s of each.
SECONDS_PER_KIND = 1.0


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_flood_of_every_message_type_from_fresh_node_ids_keeps_peak_rss_within_20_mib(
    run_node: StartNode, authority: Authority
) -> None:
    node = run_node("victim", trust=[authority.pubkey])
    addr = (node.host, node.port)

    async def main() -> tuple[int, int, dict[str, FloodStats]]:
        await trio.sleep(1.0)  # let start-up settle before the idle reading
        idle = proc_status(node.proc.pid)["VmRSS"]
        stats = {}
        for kind in KINDS:  # one type at a time, as the issue measured them
            stats[kind] = await flood(
                addr, seconds=SECONDS_PER_KIND, kinds=(kind,), rng=random.Random(7)
            )
        peak = proc_status(node.proc.pid)["VmHWM"]
        return idle, peak, stats

    idle, peak, stats = trio.run(main)
    assert node.proc.poll() is None, node.log_text()
    print(f"idle {idle / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
    for kind, st in stats.items():
        assert st.messages > 0 and st.connections >= 4, (kind, st)
    assert peak - idle <= 20 * MiB, (idle, peak, stats)
    # Still serving: an honest handshake after the flood.
    assert trio.run(_handshake_works, addr)


async def _handshake_works(addr: tuple[str, int]) -> bool:
    peer = await open_raw(addr)
    with trio.fail_after(10):
        await peer.handshake()
    await peer.aclose()
    return True
