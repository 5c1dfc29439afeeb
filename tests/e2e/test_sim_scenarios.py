"""Every shipped scenario, run small through ``p2pupdate sim``, checked from report.json.

Each test writes a scenario file that starts from the shipped one
(``base = "NAME"``) and shrinks it (fewer nodes, a 2 MiB package, fault node
indices that exist), runs ``p2pupdate sim FILE --out DIR --no-live`` as a
subprocess (the real command, real nodes), and checks the exit code, the
scenario's own ``[expect]`` verdicts in report.json, and a few figures of its
own that would expose a harness that checks nothing. Together they stay well
under two minutes on a 2-core machine. The netns one is skipped, with the
reason, where the suite does not run as root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sim

P2P = (sys.executable, "-m", "p2pupdate")
RUN_TIMEOUT = 120.0


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_scenario(path: Path, base: str, **settings: Any) -> Path:
    """A scenario file: ``base = NAME`` plus top-level keys and tables (dict values)."""
    lines = [f"base = {json.dumps(base)}"]
    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    for key, value in settings.items():
        if key not in tables:
            lines.append(f"{key} = {toml_value(value)}")
    for key, table in tables.items():
        lines.append(f"[{key}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_sim(
    tmp_path: Path, base: str, **settings: Any
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    scenario = write_scenario(tmp_path / f"{base}-small.toml", base, **settings)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*P2P, "sim", str(scenario), "--out", str(out), "--no-live"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    report_path = out / "report.json"
    assert report_path.exists(), f"no report.json\n{proc.stdout}\n{proc.stderr}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    report["out_dir"] = str(out)
    return proc, report


def explain(proc: subprocess.CompletedProcess[str], report: dict[str, Any]) -> str:
    failed = [e for e in report["expectations"] if not e["ok"]]
    return f"rc={proc.returncode} failed={failed}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"


def assert_passed(proc: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    assert proc.returncode == 0, explain(proc, report)
    assert report["ok"] is True, explain(proc, report)
    assert report["expectations"], "a scenario must check something"
    assert all(e["ok"] for e in report["expectations"])
    out = Path(report["out_dir"])
    assert (out / "timeline.png").stat().st_size > 1000


def expectation(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in report["expectations"] if e["name"] == name)


SMALL: dict[str, Any] = {"nodes": 4, "package_size": "2MiB", "timeout": 90}


def test_sim_ten_nodes_small(tmp_path: Path) -> None:
    proc, report = run_sim(tmp_path, "ten-nodes", nodes=5, package_size="2MiB", timeout=90)
    assert_passed(proc, report)
    assert {e["name"] for e in report["expectations"]} >= {"all_applied", "max_time"}
    nodes = report["nodes"]
    assert len(nodes) == 5
    assert all(n["final_version"] == "2.0.0" for n in nodes)
    assert all(n["outcomes"] == {"2.0.0": "applied"} for n in nodes)
    assert report["time_to_first_applied"] <= report["time_to_last_applied"]
    assert report["authority"]["upload_ratio"] > 0
    # Each node was started knowing 2 peers: the announcement reached the rest by gossip.
    assert all(any(e["event"] == "announcement_received" for e in n["events"]) for n in nodes)
    assert report["publish_runs"][0]["exit_code"] == 0


def test_sim_interrupted_download_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "interrupted-download",
        nodes=4,
        package_size="4MiB",
        upload_limit="1MiB/s",
        timeout=90,
        faults=[{"kind": "kill9", "node": 2, "at_progress": 0.3, "restart_after": 1.0}],
    )
    assert_passed(proc, report)
    fault = report["faults"][0]
    assert fault["fired"] and fault["restarted_at"] is not None
    assert 0.3 <= fault["progress_at_kill"] < 1.0
    killed = report["nodes"][2]
    assert killed["restarts"] == 1
    assert killed["final_version"] == "2.0.0"
    assert expectation(report, "resumed")["ok"]


def test_sim_publisher_restart_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "publisher-restart",
        nodes=4,
        package_size="4MiB",
        upload_limit="1MiB/s",
        timeout=90,
        faults=[{"kind": "kill_publisher", "at_progress": 0.3, "restart_after": 1.0}],
    )
    assert_passed(proc, report)
    fault = report["faults"][0]
    assert fault["fired"] and fault["restarted_at"] is not None
    assert 0.3 <= fault["progress_at_kill"] < 1.0
    first, second = report["publish_runs"]
    assert first["killed"] and first["exit_code"] != 0
    assert second["exit_code"] == 0 and not second["killed"]
    # The second publish counted what the swarm held and uploaded about the rest.
    held, total = map(int, re.findall(r"swarm held (\d+) of (\d+) chunks", second["stdout"])[0])
    assert total == 64 and 0 < held < total
    assert second["bytes_uploaded"] >= (total - held - 1) * 65536
    assert second["bytes_uploaded"] < 4 * 1024 * 1024
    assert all(n["final_version"] == "2.0.0" for n in report["nodes"])


def test_sim_corrupt_peer_small(tmp_path: Path) -> None:
    proc, report = run_sim(tmp_path, "corrupt-peer", **SMALL)
    assert_passed(proc, report)
    adv = report["adversary"]
    assert adv["bad_chunks_served"] > 0
    assert report["bans"]["of_adversary_by"]
    assert not report["bans"]["of_honest"]
    assert all(n["final_version"] == "2.0.0" for n in report["nodes"])


def test_sim_membership_small(tmp_path: Path) -> None:
    proc, report = run_sim(tmp_path, "membership", **SMALL)
    assert_passed(proc, report)
    intruder = report["intruder"]
    assert intruder["tls_ok"] > 0
    assert intruder["leaked"] == 0
    assert set(intruder["received"]) <= {"Hello", "HelloProof"}
    assert all(n["final_version"] == "2.0.0" for n in report["nodes"])
    # Members did connect (over TLS) and every node refused the intruder.
    refused = [
        n["name"] for n in report["nodes"] if any(e["event"] == "peer_refused" for e in n["events"])
    ]
    assert refused, "no node refused the intruder"


def test_sim_corrupt_peer_bad_tables_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path, "corrupt-peer", faults=[{"kind": "adversary", "mode": "bad-tables"}], **SMALL
    )
    assert_passed(proc, report)
    adv = report["adversary"]
    assert adv["bad_chunks_served"] + adv["bad_table_pages_served"] > 0
    assert report["bans"]["of_adversary_by"]
    assert all(n["final_version"] == "2.0.0" for n in report["nodes"])


def test_sim_bad_release_rollback_small(tmp_path: Path) -> None:
    proc, report = run_sim(tmp_path, "bad-release-rollback", **SMALL)
    assert_passed(proc, report)
    for node in report["nodes"]:
        assert node["final_version"] == "1.0.0"
        assert node["outcomes"]["2.0.0"] == "rolled_back"
        assert node["quarantined"] == ["2.0.0"]
        assert node["alive_at_end"] is True
        names = [e["event"] for e in node["events"]]
        assert "rolled_back" in names and "quarantined" in names
        assert "update_complete" not in names


def test_sim_late_joiner_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path, "late-joiner", faults=[{"kind": "late_join", "node": 3}], **SMALL
    )
    assert_passed(proc, report)
    late = report["nodes"][3]
    assert late["final_version"] == "2.0.0"
    # It joined after the others applied and the authority had left: all from peers.
    assert late["sources"] and "authority" not in late["sources"]
    others_done = max(
        e["t"] for n in report["nodes"][:3] for e in n["events"] if e["event"] == "update_complete"
    )
    assert min(e["t"] for e in late["events"]) >= others_done


def test_sim_bandwidth_limited_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "bandwidth-limited",
        upload_limit="2MiB/s",
        expect={"all_applied": True, "max_bound_ratio": 10.0, "max_authority_ratio": 4.0},
        **SMALL,
    )
    assert_passed(proc, report)
    kr = report["kumar_ross"]
    # 4 nodes, 2 MiB, 2 MiB/s everywhere: max(F/u_s, N*F/(u_s + N*u)) = 1 s.
    assert kr["bound"] == pytest.approx(1.0)
    assert kr["ratio"] >= 0.9  # no run beats the bound by much: the limiter works


def test_sim_small_change_small(tmp_path: Path) -> None:
    # 4 MiB = 64 chunks; 5% changed = 3 chunks (the header chunk and 2 others).
    proc, report = run_sim(
        tmp_path,
        "small-change",
        upload_limit="2MiB/s",
        expect={"all_applied": True, "max_fetched_ratio": 0.08},
        nodes=4,
        package_size="4MiB",
        timeout=90,
    )
    assert_passed(proc, report)
    for node in report["nodes"]:
        # Exactly the changed chunks came from peers; everything else from the old file.
        assert node["bytes_received"] == 3 * 65536, node["name"]
        assert node["bytes_reused"] == 61 * 65536, node["name"]
    reuse = report["reuse"]
    assert reuse["max_fetched_ratio"] == pytest.approx(3 / 64, abs=1e-4)
    assert "bytes reused from local files" in proc.stdout


def test_sim_heterogeneous_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "heterogeneous",
        upload_limit="2MiB/s",
        slow_upload_limit="200KiB/s",
        expect={"all_applied": True, "max_bound_ratio": 10.0, "max_authority_ratio": 4.0},
        **{**SMALL, "degree": 2, "authority_peers": 4},
    )
    assert_passed(proc, report)
    kr = report["kumar_ross"]
    # 4 nodes, one at 0.1x: max(F/u_s, N*F/(u_s + sum u_i)) = max(1, 8/(2 + 6.195)) = 1 s
    assert kr["bound"] == pytest.approx(1.0)
    assert kr["slow_nodes"] == ["n03"]
    pub = report["publications"][0]
    assert set(pub["download_complete"]) == {"n00", "n01", "n02", "n03"}
    assert pub["completion_spread"] is not None
    to = report["authority"]["chunks_to"]
    assert set(to) == {"n00", "n01", "n02", "n03"} and sum(to.values()) >= 32
    assert "chunks from the authority" in proc.stdout


def _netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root; this suite does not run as root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


@pytest.mark.skipif(_netns_skip_reason() is not None, reason=_netns_skip_reason() or "")
def test_sim_bandwidth_limited_netns_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "bandwidth-limited-netns",
        upload_limit="2MiB/s",
        expect={"all_applied": True, "max_bound_ratio": 10.0},
        **SMALL,
    )
    assert_passed(proc, report)
    assert report["network"]["kind"] == "netns"
    prefix = report["network"]["prefix"]
    assert report["kumar_ross"]["ratio"] >= 0.9  # the kernel shaped the uploads
    # Everything the run created is gone.
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in ns and prefix not in links


def test_sim_centralized_baseline_small(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "centralized-baseline",
        upload_limit="4MiB/s",
        expect={"all_applied": True, "no_honest_bans": True, "min_authority_ratio": 3.8},
        **SMALL,
    )
    assert_passed(proc, report)
    # A star: every chunk of every node came from the authority.
    for node in report["nodes"]:
        assert set(node["sources"]) == {"authority"}, node["sources"]
    assert report["authority"]["upload_ratio"] >= 0.95 * 4


def test_sim_unmet_expectation_fails(tmp_path: Path) -> None:
    proc, report = run_sim(
        tmp_path,
        "ten-nodes",
        nodes=2,
        package_size="1MiB",
        timeout=60,
        expect={"all_applied": True, "final_version": "9.9.9"},
    )
    assert proc.returncode == 1, explain(proc, report)
    assert report["ok"] is False
    assert expectation(report, "all_applied")["ok"] is True
    assert expectation(report, "final_version")["ok"] is False
    assert "FAIL" in proc.stdout and "FAILED" in proc.stdout
