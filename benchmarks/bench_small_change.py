"""Fetching only what changed: the small-change scenario against a full transfer.

Runs ``p2pupdate sim small-change`` (10 nodes, 64 MiB, 8 MiB/s uploads, 2.0.0 replaces
5% of 1.0.0's chunks) and the same fleet with a 2.0.0 that shares nothing with 1.0.0
(a scenario file ``base = "small-change"`` without ``changed``), alternating, ``--runs``
times each, and prints per run: distribution time (first announcement to last
download_complete), time to the last install, the worst and mean share of the package a
node fetched from peers, and the load average when the run started.

    .venv/bin/python benchmarks/bench_small_change.py            # 3 runs each (~3 min)
    .venv/bin/python benchmarks/bench_small_change.py --runs 1 --size 16MiB
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FULL = """base = "small-change"
description = "the small-change fleet, but 2.0.0 shares no chunk with 1.0.0"
{size}
[[publications]]
version = "2.0.0"
[expect]
all_applied = true
max_fetched_ratio = 1.0
max_bound_ratio = 10.0
"""
SMALL = """base = "small-change"
{size}
[expect]
all_applied = true
max_fetched_ratio = 0.08
max_bound_ratio = 10.0
"""


def run(scenario: Path, out: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "sim", str(scenario), "--out", str(out), "--no-live"],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    report = json.loads((out / "report.json").read_text())
    main = next(p for p in report["publications"] if p["version"] == report["main_version"])
    size = report["scenario"]["package_size"]
    fetched = [n["bytes_received"] / size for n in report["nodes"]]
    return {
        "ok": proc.returncode == 0 and report["ok"],
        "load": load,
        "dist": main["distribution_time"],
        "last_applied": main["last_applied"],
        "max_fetched": max(fetched),
        "mean_fetched": statistics.mean(fetched),
        "reused": statistics.mean(n["bytes_reused"] for n in report["nodes"]) / size,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default: 3)")
    ap.add_argument("--size", default="", help="package size, e.g. 16MiB (default: 64MiB)")
    args = ap.parse_args()
    size = f'package_size = "{args.size}"' if args.size else ""
    with tempfile.TemporaryDirectory(prefix="bench-small-change-") as tmp:
        work = Path(tmp)
        (work / "full.toml").write_text(FULL.format(size=size))
        (work / "small.toml").write_text(SMALL.format(size=size))
        rows: dict[str, list[dict[str, Any]]] = {"small": [], "full": []}
        for i in range(args.runs):
            for kind in ("small", "full"):
                r = run(work / f"{kind}.toml", work / f"out-{kind}-{i}")
                rows[kind].append(r)
                print(
                    f"{kind:5} run {i + 1}: {'ok ' if r['ok'] else 'FAIL'} load {r['load']:5.2f}  "
                    f"distribution {r['dist']:6.2f}s  last applied {r['last_applied']:6.2f}s  "
                    f"fetched max {100 * r['max_fetched']:5.1f}% "
                    f"mean {100 * r['mean_fetched']:5.1f}%  reused {100 * r['reused']:5.1f}%",
                    flush=True,
                )
        small = statistics.median(r["dist"] for r in rows["small"])
        full = statistics.median(r["dist"] for r in rows["full"])
        small_a = statistics.median(r["last_applied"] for r in rows["small"])
        full_a = statistics.median(r["last_applied"] for r in rows["full"])
        print(
            f"median distribution: small change {small:.2f}s, full transfer {full:.2f}s "
            f"= {100 * small / full:.0f}%; to the last install {small_a:.2f}s vs {full_a:.2f}s "
            f"= {100 * small_a / full_a:.0f}%"
        )
        return 0 if all(r["ok"] for rs in rows.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
