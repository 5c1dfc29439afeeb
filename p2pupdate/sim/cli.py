"""``p2pupdate sim [SCENARIO] [--out DIR] [--no-live]``: run a scenario, report, exit code.

Exit codes: 0 the scenario's expectations were met; 1 they were not (or the
run failed); 2 a user mistake (unknown scenario, bad scenario file, netns
asked for where it cannot run), with one line on stderr; 130 interrupted
(Ctrl-C, SIGTERM, SIGHUP) after every process was stopped and the partial
report written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio

from p2pupdate.errors import P2PUpdateError, UsageError
from p2pupdate.sim.harness import Harness
from p2pupdate.sim.netns import check_netns_available
from p2pupdate.sim.plot import plot_timeline
from p2pupdate.sim.report import build_report, summary_lines
from p2pupdate.sim.scenario import Scenario, load_scenario, shipped_scenarios
from p2pupdate.sim.view import make_view

__all__ = ["default_out_dir", "list_scenarios", "run_scenario", "run_sim_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def default_out_dir(base: Path | None = None) -> Path:
    """A new ``sim-out-YYYYmmdd-HHMMSS`` folder name under ``base`` (default: cwd)."""
    base = base or Path.cwd()
    stem = f"sim-out-{time.strftime('%Y%m%d-%H%M%S')}"
    path = base / stem
    n = 2
    while path.exists():
        path = base / f"{stem}-{n}"
        n += 1
    return path


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create it: {exc.strerror}") from None


def run_scenario(
    scenario: Scenario, out: Path, *, live: bool = False
) -> tuple[int, dict[str, object]]:
    """Run ``scenario``, write report.json and timeline.png in ``out``; (exit code, report)."""
    if scenario.mode == "virtual":
        return _run_virtual(scenario, out)
    if scenario.network == "netns":
        check_netns_available()
    _check_out(out)
    started = time.time()
    view = make_view(live, started)
    harness = Harness(scenario, out, view)
    error: P2PUpdateError | None = None
    try:
        rec = trio.run(harness.run)
    except UsageError:  # e.g. no release of p2pupdate could be built: one line, exit 2
        raise
    except P2PUpdateError as exc:
        error = exc
        rec = harness.rec
    except KeyboardInterrupt:  # a second Ctrl-C during cleanup
        rec = harness.rec
        rec.interrupted = True
    report = build_report(rec)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot = plot_timeline(report, rec.started, out / "timeline.png")
    for line in summary_lines(report, str(out), str(plot) if plot else None):
        print(line, flush=True)
    if rec.interrupted:
        print("p2pupdate sim: interrupted; every process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED, report
    if error is not None:
        print(f"p2pupdate sim: {error}", file=sys.stderr)
        return EXIT_FAILED, report
    return (EXIT_OK if report["ok"] else EXIT_FAILED), report


def _run_virtual(scenario: Scenario, out: Path) -> tuple[int, dict[str, object]]:
    """A ``mode = "virtual"`` scenario: every node in this process, in virtual time."""
    from p2pupdate.sim.virtual import plot_cdf, run_virtual, virtual_summary

    _check_out(out)
    try:
        report = run_virtual(scenario, out, progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("p2pupdate sim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED, {}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot = plot_cdf(report, out / "cdf.png")
    for line in virtual_summary(report, str(out), str(plot) if plot else None):
        print(line, flush=True)
    return (EXIT_OK if report["ok"] else EXIT_FAILED), report


def list_scenarios() -> str:
    """One line per shipped scenario: its name and its description."""
    names = shipped_scenarios()
    width = max(len(n) for n in names)
    lines = []
    for name in names:
        # The first sentence: some descriptions go on to explain the whole run.
        summary = load_scenario(name).description.split(". ")[0].split("; ")[0].rstrip(".")
        lines.append(f"{name:<{width}}  {summary}")
    return "\n".join(lines)


def run_sim_command(args: argparse.Namespace) -> int:
    if getattr(args, "list", False):
        print(list_scenarios())
        return EXIT_OK
    scenario = load_scenario(args.scenario)
    out = args.out if args.out is not None else default_out_dir()
    code, _ = run_scenario(scenario, out, live=not args.no_live)
    return code
