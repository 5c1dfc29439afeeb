"""``mode = "virtual"``: many real nodes in one process, in virtual time.

Every simulated node is the code ``p2pupdate node`` runs: a :class:`Node`
(handshake, membership, gossip, anti-entropy), a :class:`Swarm` (tables,
downloader, uploads) and an :class:`Agent` (act decision, download, retry),
over a :class:`~p2pupdate.sim.virtualnet.VirtualNetwork` instead of TCP and a
:class:`~p2pupdate.shell.transfer.memstore.MemoryStore` instead of a data dir. The
publisher is a node like ``p2pupdate publish`` builds (super-seeding). The run
uses ``trio.testing.MockClock(autojump_threshold=0)``: whenever every task
waits, the clock jumps to the next deadline, so virtual time runs as fast as
the CPU allows.

Every chunk is really hashed (BLAKE3) and checked against the signed table by
each node's own downloader; the stores share one memo, so equal verified chunks
are one object in memory and a package assembled from the very chunks already
hashed together is not hashed again (``ContentMemo``).

Nodes have no app target: "updated" means the package was downloaded,
verified and cached (``download_complete``); installing is what the
process-mode scenarios test.

The run is :mod:`.virtualrun`; its report is :mod:`.virtualreport`.
:func:`run_virtual` runs one scenario and returns its report.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pupdate.sim.scenario import Scenario
from p2pupdate.sim.virtualreport import (
    build_virtual_report,
    check_virtual,
    plot_cdf,
    virtual_summary,
)
from p2pupdate.sim.virtualrun import VirtualRun, VNode, build_node, seed_trio_scheduler

__all__ = [
    "VNode",
    "VirtualRun",
    "build_node",
    "build_virtual_report",
    "check_virtual",
    "plot_cdf",
    "run_virtual",
    "seed_trio_scheduler",
    "virtual_summary",
]


def run_virtual(
    scenario: Scenario, out: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run a virtual scenario to its end; the report (also written by the caller)."""
    workdir = Path(tempfile.mkdtemp(prefix="p2pupdate-virtual-"))
    quiet: list[tuple[logging.Logger, int]] = []
    for name in ("p2pupdate", "p2pupdate.node", "p2pupdate.swarm", "p2pupdate.agent"):
        lg = logging.getLogger(name)
        quiet.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    try:
        seed_trio_scheduler(scenario.seed)
        run = VirtualRun(scenario, workdir)
        run.progress = progress
        trio.run(run.run, clock=trio.testing.MockClock(autojump_threshold=0))
        return build_virtual_report(run)
    finally:
        for lg, level in quiet:
            lg.setLevel(level)
        shutil.rmtree(workdir, ignore_errors=True)
