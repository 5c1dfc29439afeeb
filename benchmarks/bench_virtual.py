"""How fast the virtual simulation runs: wall and CPU time, scheduler passes, virtual time.

    .venv/bin/python benchmarks/bench_virtual.py thousand-nodes --nodes 100 --size 4MiB
    .venv/bin/python benchmarks/bench_virtual.py thousand-nodes --quantum 0 --quantum 0.001
    .venv/bin/python benchmarks/bench_virtual.py thousand-nodes --nodes 100 --profile out.prof

Runs a (shrunk) virtual scenario in this process once per ``--quantum`` and prints one line
each. CPU time is the figure to compare on a shared machine; ``--profile`` writes a cProfile
file of the run (read it with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from p2pupdate.sim import virtual
from p2pupdate.sim.scenario import load_scenario


class _Passes(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1


def bench(name: str, overrides: dict[str, Any], profile: str | None) -> str:
    scenario = load_scenario(name, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        virtual.seed_trio_scheduler(scenario.seed)
        run = virtual.VirtualRun(scenario, Path(tmp))
        passes = _Passes()
        prof = cProfile.Profile() if profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        trio.run(run.run, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[passes])
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(profile))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        report = virtual.build_virtual_report(run)
    c = report["completion"]
    return (
        f"{name} nodes={scenario.nodes} quantum={overrides['virtual']['time_quantum']}: "
        f"wall {wall:.1f}s cpu {cpu:.1f}s passes {passes.count} "
        f"virtual {report['virtual_seconds']:.2f}s completed {report['completed']} "
        f"p50 {c['p50']} max {c['max']} announced {report['announced']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--size")
    ap.add_argument("--quantum", type=float, action="append")
    ap.add_argument("--profile")
    args = ap.parse_args()
    random.seed(0)
    for q in args.quantum or [0.001]:
        overrides: dict[str, Any] = {"virtual": {"time_quantum": q}}
        if args.nodes:
            overrides["nodes"] = args.nodes
        if args.size:
            overrides["package_size"] = args.size
        print(bench(args.scenario, overrides, args.profile), flush=True)


if __name__ == "__main__":
    main()
