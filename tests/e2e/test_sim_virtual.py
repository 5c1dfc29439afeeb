"""``mode = "virtual"``: the shipped scale scenarios, run small through ``p2pupdate sim``.

A 50-node version of ``thousand-nodes`` runs the real node, swarm and agent code of
every node in one process in virtual time; the report must show every node updated
and traffic that only a real transfer produces. The same seed must give the same
figures from two separate processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_sim_scenarios import write_scenario

pytestmark = pytest.mark.sim

P2P = (sys.executable, "-m", "p2pupdate")
MIB = 1024 * 1024


def run(tmp_path: Path, base: str, name: str, **settings: Any) -> tuple[int, str, dict[str, Any]]:
    scenario = write_scenario(tmp_path / f"{name}.toml", base, **settings)
    out = tmp_path / f"out-{name}"
    proc = subprocess.run(
        [*P2P, "sim", str(scenario), "--out", str(out), "--no-live"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, "PYTHONHASHSEED": str(len(name))},
    )
    report = json.loads((out / "report.json").read_text())
    report["out_dir"] = str(out)
    return proc.returncode, proc.stdout + proc.stderr, report


def test_fifty_virtual_nodes_all_update_through_the_real_swarm(tmp_path: Path) -> None:
    rc, output, report = run(
        tmp_path,
        "thousand-nodes",
        "fifty",
        nodes=50,
        package_size="2MiB",
        timeout=300,
        # A 2 MiB package takes 1 s at the bound: start-up (dial, table fetch) weighs more.
        expect={"max_bound_ratio": 6.0},
    )
    assert rc == 0, output
    assert report["ok"] and report["mode"] == "virtual"
    assert report["completed"] == 50 and report["completion"]["n"] == 50
    assert {e["name"] for e in report["expectations"]} >= {"all_applied", "max_bound_ratio"}
    # Every node received the whole package as CHUNK frames: from the publisher and from
    # each other (the publisher alone sent far less than 50 copies).
    chunks = report["traffic_by_type"]["Chunk"]
    assert chunks["bytes"] + report["authority"]["uploaded"] >= 50 * 2 * MIB
    assert report["authority"]["ratio"] < 10
    assert report["traffic_by_type"]["Have"]["messages"] > 0
    # Rate-limited at 2 MiB/s: nobody can have 2 MiB before 1 s of virtual time.
    kr = report["kumar_ross"]
    assert kr["bound"] == pytest.approx(1.0, rel=0.01)
    assert report["completion"]["p50"] >= kr["bound"]
    assert report["announcement"]["hops_max"] >= 1
    assert 1 <= report["peak_connections"]["max"] <= 64
    assert report["virtual_seconds"] > 0 and report["wall_seconds"] > 0
    assert (Path(report["out_dir"]) / "cdf.png").stat().st_size > 1000
    assert "Kumar-Ross bound" in output and "PASSED" in output


def test_same_seed_same_figures_in_two_processes(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"nodes": 20, "package_size": "1MiB", "timeout": 300}
    _, _, a = run(tmp_path, "thousand-nodes", "first", **settings)
    _, _, b = run(tmp_path, "thousand-nodes", "second-run", **settings)  # other hash seed
    _, _, c = run(tmp_path, "thousand-nodes", "other", seed=2, **settings)
    assert a["completed"] == b["completed"] == c["completed"] == 20
    for key in ("completion_times", "announcement_times", "traffic_by_type", "authority"):
        assert a[key] == b[key], key
    assert a["completion_times"] != c["completion_times"]


def test_churn_and_late_joiners_still_update_everyone(tmp_path: Path) -> None:
    rc, output, report = run(
        tmp_path,
        "thousand-nodes",
        "churn",
        nodes=40,
        package_size="2MiB",
        timeout=300,
        virtual={
            "churn": 0.1,
            "churn_window": [0.5, 1.0],
            "churn_downtime": 1.0,
            "late_joiners": 3,
            "late_join_at": 5.0,
            "slow_fraction": 0.1,
            "connection_loss": 60.0,
        },
        expect={"max_bound_ratio": 1000.0, "max_authority_ratio": 10.0},  # all_applied counts
    )
    assert rc == 0, output
    assert report["churn"]["scheduled"] == 4 and report["churn"]["rejoined"] == 4
    assert report["late_joiners"]["count"] == 3 and report["late_joiners"]["catch_up"]["n"] == 3
    assert report["completed"] == 40
    assert report["network"]["slow_nodes"] == 4
    assert report["network"]["connections_lost"] > 0


def test_gossip_only_reaches_every_node_within_its_hop_budget(tmp_path: Path) -> None:
    rc, output, report = run(tmp_path, "gossip-10k", "gossip", nodes=120, timeout=60)
    assert rc == 0, output
    assert report["gossip_only"] and report["announced"] == 120
    assert report["completed"] == 0  # nobody downloads
    ann = report["announcement"]
    assert 1 <= ann["hops_max"] <= 120 and sum(ann["hops_histogram"].values()) == 120
    assert report["gossip"]["announce_messages_per_node"] > 0
    assert "Chunk" not in report["traffic_by_type"]


def test_an_expectation_that_cannot_hold_fails_the_run(tmp_path: Path) -> None:
    rc, output, report = run(tmp_path, "gossip-10k", "strict", nodes=100, expect={"max_hops": 0})
    assert rc == 1
    assert not report["ok"] and "FAIL" in output
