"""The harness's parts on their own: topology, the app, event tailing, report, plot, view.

No node runs here: the report is built from synthetic event streams shaped
like the docs/operations.md contract, so every expectation can be shown to pass and
to fail.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from p2pupdate.errors import UsageError
from p2pupdate.sim.app import app_bytes, app_header
from p2pupdate.sim.plot import plot_timeline
from p2pupdate.sim.report import (
    FaultRecord,
    PublishRecord,
    RunRecord,
    build_report,
    kumar_ross_bound,
    kumar_ross_unequal,
    summary_lines,
)
from p2pupdate.sim.scenario import parse_scenario
from p2pupdate.sim.topology import authority_targets, bootstrap_peers, is_connected
from p2pupdate.sim.tracker import EventTail, NodeTrack
from p2pupdate.sim.view import LiveView, PlainView, format_sources

# -- topology ----------------------------------------------------------------------------


def test_ring_gives_each_node_the_next_degree_nodes() -> None:
    edges = bootstrap_peers("ring", 10, 2, random.Random(1))
    assert edges[0] == [1, 2] and edges[8] == [9, 0] and edges[9] == [0, 1]
    assert all(len(e) == 2 for e in edges)


def test_star_gives_nobody_any_peer_and_the_authority_everyone() -> None:
    assert bootstrap_peers("star", 5, 2, random.Random(1)) == [[]] * 5
    assert authority_targets("star", 5, 2) == [0, 1, 2, 3, 4]


@given(
    n=st.integers(2, 40),
    degree=st.integers(1, 5),
    seed=st.integers(0, 1000),
    topology=st.sampled_from(["ring", "random-k"]),
)
def test_topologies_are_connected_without_self_loops(
    n: int, degree: int, seed: int, topology: str
) -> None:
    late = {n - 1} if n > 2 else set()
    edges = bootstrap_peers(topology, n, degree, random.Random(seed), late)
    early = [i for i in range(n) if i not in late]
    assert is_connected(n, edges, early)
    for i, peers in enumerate(edges):
        assert i not in peers and len(set(peers)) == len(peers)
        assert len(peers) == min(degree, len(early) - 1) or i in late
        assert not late & set(peers)  # nobody dials a node that is not there yet
    for i in late:
        assert edges[i] and set(edges[i]) <= set(early)


def test_authority_targets_spread_around_the_ring() -> None:
    assert authority_targets("ring", 10, 2) == [0, 5]
    assert authority_targets("ring", 10, 3, late={0}) == [1, 4, 7]
    assert authority_targets("random-k", 3, 9) == [0, 1, 2]


# -- the app -------------------------------------------------------------------------


def test_app_is_an_executable_script_of_exactly_the_size(tmp_path: Path) -> None:
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    good.write_bytes(app_bytes("2.0.0", True, 1 << 20))
    bad.write_bytes(app_bytes("3.0.0", False, 1 << 20))
    for p in (good, bad):
        p.chmod(0o755)
        assert p.stat().st_size == 1 << 20
    ok = subprocess.run([str(good), "--version"], capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0 and ok.stdout.strip() == "simapp 2.0.0"
    fail = subprocess.run([str(bad), "--version"], capture_output=True, text=True, timeout=10)
    assert fail.returncode == 1 and "broken release" in fail.stderr


def test_app_versions_share_no_chunk() -> None:
    a, b = app_bytes("1.0.0", True, 4 * 65536), app_bytes("2.0.0", True, 4 * 65536)
    assert app_bytes("1.0.0", True, 4 * 65536) == a  # deterministic
    for i in range(4):
        assert a[i * 65536 : (i + 1) * 65536] != b[i * 65536 : (i + 1) * 65536]
    with pytest.raises(ValueError):
        app_bytes("1.0.0", True, len(app_header("1.0.0", True)) - 1)


# -- tailing events ---------------------------------------------------------------------


def test_event_tail_reads_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.poll() == []  # no file yet
    with open(path, "w") as f:
        f.write('{"t": 1, "event": "a"}\n{"t": 2, "ev')
        f.flush()
        assert [e["event"] for e in tail.poll()] == ["a"]
        f.write('ent": "b"}\nnot json\n[1, 2]\n')
        f.flush()
        assert [e["event"] for e in tail.poll()] == ["b"]
        assert tail.bad_lines == 2
        assert tail.poll() == []


def _ev(t: float, event: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "node": "ab" * 32, "event": event, **fields}


def test_node_track_folds_events_into_state_and_outcomes() -> None:
    tr = NodeTrack(0, "n00", "127.0.0.1:1", version="1.0.0")
    tr.feed(_ev(1, "announcement_received", version="2.0.0", size=10))
    assert tr.state == "announced" and tr.target_version == "2.0.0"
    tr.feed(_ev(2, "download_started", version="2.0.0"))
    tr.feed(_ev(3, "download_progress", version="2.0.0", progress=0.5, bytes_done=5,
                bytes_total=10, rate=100.0))  # fmt: skip
    assert (tr.state, tr.progress, tr.rate) == ("downloading", 0.5, 100.0)
    tr.feed(_ev(4, "download_complete", version="2.0.0", sources={"127.0.0.1:2": 3}))
    assert tr.sources == {"127.0.0.1:2": 3} and tr.progress == 1.0
    assert not tr.settled("2.0.0")
    tr.feed(_ev(5, "update_complete", version="2.0.0", old_version="1.0.0", new_version="2.0.0"))
    assert tr.settled("2.0.0") and tr.version == "2.0.0" and tr.outcome_at["2.0.0"] == 5
    # A refusal heard later (say, by gossip again) does not undo the install.
    tr.feed(_ev(6, "update_refused", version="2.0.0", reason="not_newer"))
    assert tr.outcomes["2.0.0"] == "applied"


def test_node_track_settles_a_rollback_only_once_quarantined() -> None:
    tr = NodeTrack(0, "n00", "127.0.0.1:1", version="1.0.0")
    tr.feed(_ev(1, "update_failed", version="2.0.0", reason="health_check_failed"))
    tr.feed(_ev(2, "rolled_back", version="2.0.0", restored_version="1.0.0"))
    assert tr.outcomes["2.0.0"] == "rolled_back" and not tr.settled("2.0.0")
    tr.feed(_ev(3, "quarantined", version="2.0.0"))
    assert tr.settled("2.0.0") and tr.version == "1.0.0" and tr.state == "rolled back"


# -- the report -----------------------------------------------------------------------

MiB = 1 << 20


def _record(**scenario: Any) -> RunRecord:
    sc = parse_scenario({"nodes": 2, "package_size": "1MiB", **scenario}, name="t")
    t0 = 1000.0
    tracks = [NodeTrack(i, f"n{i:02d}", f"127.0.0.1:{10 + i}", version="1.0.0") for i in range(2)]
    addresses = {"127.0.0.1:9": "authority", "127.0.0.1:10": "n00", "127.0.0.1:11": "n01"}
    rec = RunRecord(sc, tracks, addresses, started=t0, ready=t0 + 1, ended=t0 + 10)
    rec.publishes = [PublishRecord("2.0.0", True, t0 + 2, t0 + 4, 0, "", 2 * MiB)]
    for i, tr in enumerate(tracks):
        other = "127.0.0.1:11" if i == 0 else "127.0.0.1:10"
        for ev in [
            _ev(t0 + 2.5, "announcement_received", version="2.0.0"),
            _ev(t0 + 2.6, "download_started", version="2.0.0"),
            _ev(t0 + 3.0, "download_progress", version="2.0.0", progress=0.5),
            _ev(t0 + 3.5 + i, "download_complete", version="2.0.0",
                sources={"127.0.0.1:9": 8, other: 8}),
            _ev(t0 + 4.0 + i, "update_complete", version="2.0.0", old_version="1.0.0",
                new_version="2.0.0"),
        ]:  # fmt: skip
            tr.feed(ev)
        rec.final_versions[tr.name] = "2.0.0"
        rec.alive_at_end[tr.name] = True
    return rec


def _verdicts(report: dict[str, Any]) -> dict[str, bool]:
    return {e["name"]: e["ok"] for e in report["expectations"]}


def test_report_figures() -> None:
    rec = _record(upload_limit="1MiB/s")
    report = build_report(rec)
    json.dumps(report)  # JSON-ready
    assert report["ok"] is True
    assert report["time_to_first_applied"] == pytest.approx(2.0)
    assert report["time_to_last_applied"] == pytest.approx(3.0)
    assert report["publications"][0]["per_node"] == {"n00": 2.0, "n01": 3.0}
    assert report["authority"] == {
        "bytes_uploaded": 2 * MiB, "upload_ratio": 2.0, "measured_by": "publish output",
        "chunks_to": {"n00": 8, "n01": 8},
    }  # fmt: skip
    assert report["nodes"][0]["sources"] == {"authority": 8, "n01": 8}
    assert report["nodes"][0]["bytes_received"] == MiB
    assert len(report["nodes"][1]["events"]) == 5
    kr = report["kumar_ross"]
    assert kr["bound"] == pytest.approx(1.0)  # max(1/1, 2*1/(1+2))
    assert kr["distribution_time"] == pytest.approx(2.0)  # announce +2.5 -> last complete +4.5
    assert kr["ratio"] == pytest.approx(2.0)
    text = "\n".join(summary_lines(report, "/out", "/out/timeline.png"))
    for needle in ("first 2.00s", "last 3.00s", "2.00x the package", "Kumar-Ross bound 1.00s",
                   "PASSED", "/out/report.json", "n00 2.00s"):  # fmt: skip
        assert needle in text


def test_authority_ratio_falls_back_to_chunk_sources() -> None:
    rec = _record()
    rec.publishes[0].bytes_uploaded = None
    auth = build_report(rec)["authority"]
    assert auth["bytes_uploaded"] == 16 * 65536 and auth["upload_ratio"] == 1.0


def test_heterogeneous_report_has_the_unequal_bound_the_spread_and_the_authority_shares() -> None:
    rec = _record(upload_limit="1MiB/s", slow_nodes=1, slow_upload_limit="256KiB/s")
    report = build_report(rec)
    kr = report["kumar_ross"]
    # max(F/u_s, N*F/(u_s + u_0 + u_1)) = max(1, 2/(1 + 1 + 0.25))
    assert kr["bound"] == pytest.approx(1.0)
    assert kr["slow_nodes"] == ["n01"]
    rec2 = _record(upload_limit="1MiB/s", slow_nodes=2, slow_upload_limit="128KiB/s")
    assert build_report(rec2)["kumar_ross"]["bound"] == pytest.approx(2 / 1.25)
    pub = report["publications"][0]
    assert pub["download_complete"] == {"n00": 1.0, "n01": 2.0}
    assert pub["completion_spread"] == pytest.approx(1.0)
    assert report["authority"]["chunks_to"] == {"n00": 8, "n01": 8}
    text = "\n".join(summary_lines(report, "/out", None))
    for needle in ("(1 at 256.0 KiB/s)", "chunks from the authority: n00 8, n01 8", "spread 1.00s",
                   "sum u_i"):  # fmt: skip
        assert needle in text, needle


def test_slow_nodes_need_their_limits() -> None:
    sc = parse_scenario(
        {"nodes": 10, "upload_limit": "4MiB/s", "slow_nodes": 1, "slow_upload_limit": "400KiB/s"},
        name="t",
    )
    assert [sc.node_upload_limit(i) for i in (0, 8, 9)] == [4 << 20, 4 << 20, 400 << 10]
    for bad in ({"slow_nodes": 1}, {"slow_upload_limit": "1MiB/s"}, {"slow_nodes": 11}):
        with pytest.raises(UsageError):
            parse_scenario({"nodes": 10, "upload_limit": "4MiB/s", **bad}, name="t")


def test_kumar_ross_unequal() -> None:
    assert kumar_ross_unequal(100, 10, [10.0] * 10) == pytest.approx(10.0)
    assert kumar_ross_unequal(40, 4, [4.0] * 8 + [0.4] * 2) == pytest.approx(400 / 36.8)
    with pytest.raises(ValueError):
        kumar_ross_unequal(100, 10, [10.0, 0.0])


def test_kumar_ross_bound() -> None:
    assert kumar_ross_bound(100, 10, 10, 10) == pytest.approx(10.0)
    assert kumar_ross_bound(100, 10, 1, 100) == pytest.approx(100 * 10 / 110)
    with pytest.raises(ValueError):
        kumar_ross_bound(100, 10, 0, 10)


@pytest.mark.parametrize(
    ("expect", "mutate", "name"),
    [
        ({"all_applied": True}, lambda r: r.final_versions.update(n01="1.0.0"), "all_applied"),
        ({"max_time": 2.5}, None, "max_time"),
        ({"final_version": "2.0.0"}, lambda r: r.final_versions.update(n00="unknown"),
         "final_version"),
        ({"all_running": True}, lambda r: r.alive_at_end.update(n01=False), "all_running"),
        ({"max_authority_ratio": 1.5}, None, "max_authority_ratio"),
        ({"min_authority_ratio": 2.5}, None, "min_authority_ratio"),
        ({"max_bound_ratio": 1.0}, None, "max_bound_ratio"),
        ({"no_honest_bans": True},
         lambda r: r.tracks[0].feed(_ev(1005, "peer_banned", peer="127.0.0.1:11", reason="x")),
         "no_honest_bans"),
        ({"rolled_back": True}, None, "rolled_back"),
        ({"adversary_banned": True}, None, "adversary_banned"),
        ({"resumed": True}, None, "resumed"),
    ],
)  # fmt: skip
def test_each_expectation_can_fail(expect: dict[str, Any], mutate: Any, name: str) -> None:
    extra: dict[str, Any] = {"expect": expect}
    if name in ("max_bound_ratio",):
        extra["upload_limit"] = "1MiB/s"
    if name == "resumed":
        extra["faults"] = [{"kind": "kill9", "node": 1, "at_progress": 0.5}]
    rec = _record(**extra)
    if name == "resumed":
        rec.faults = [FaultRecord("kill9", node=1)]  # never fired
    if mutate is not None:
        mutate(rec)
    report = build_report(rec)
    assert _verdicts(report)[name] is False
    assert report["ok"] is False


@pytest.mark.parametrize(
    "expect",
    [
        {"all_applied": True},
        {"max_time": 3.5},
        {"final_version": "2.0.0"},
        {"all_running": True},
        {"max_authority_ratio": 2.5, "min_authority_ratio": 1.5},
        {"no_honest_bans": True},
    ],
)
def test_met_expectations_pass(expect: dict[str, Any]) -> None:
    report = build_report(_record(expect=expect))
    assert all(_verdicts(report).values()) and report["ok"] is True


def test_rollback_and_adversary_and_resume_expectations_pass_when_met() -> None:
    rec = _record(
        expect={"rolled_back": True, "adversary_banned": True, "resumed": True},
        faults=[
            {"kind": "bad_release", "version": "2.0.0"},
            {"kind": "adversary"},
            {"kind": "kill9", "node": 0, "at_progress": 0.4},
        ],
    )
    t0 = rec.started
    for tr in rec.tracks:
        tr.outcomes.clear()
        tr.feed(_ev(t0 + 5, "rolled_back", version="2.0.0", restored_version="1.0.0"))
        tr.feed(_ev(t0 + 5.1, "quarantined", version="2.0.0"))
        tr.feed(_ev(t0 + 2.9, "peer_banned", peer="127.0.0.1:99", reason="bad chunk"))
        rec.final_versions[tr.name] = "1.0.0"
    rec.adversary = {"address": "127.0.0.1:99", "bad_chunks_served": 3,
                     "bad_chunks_to": {"127.0.0.1:10": 2, "127.0.0.1:11": 1}}  # fmt: skip
    rec.addresses["127.0.0.1:99"] = "adversary"
    rec.faults = [
        FaultRecord("bad_release", fired=True),
        FaultRecord("adversary", fired=True),
        FaultRecord("kill9", node=0, fired=True, fired_at=t0 + 3.1, restarted_at=t0 + 3.2,
                    progress_at_kill=0.5),
    ]  # fmt: skip
    tr = rec.tracks[0]
    tr.feed(_ev(t0 + 3.3, "download_progress", version="2.0.0", progress=0.5, bytes_done=524288))
    tr.feed(_ev(t0 + 3.6, "download_complete", version="2.0.0", sources={"127.0.0.1:11": 8}))
    report = build_report(rec)
    assert _verdicts(report) == {
        "faults_fired": True, "rolled_back": True, "adversary_banned": True, "resumed": True
    }  # fmt: skip
    assert report["bans"]["of_adversary_by"] == ["n00", "n01"]
    # A node that was fed bad chunks but did not ban the adversary fails it.
    rec.tracks[1].bans.clear()
    assert _verdicts(build_report(rec))["adversary_banned"] is False


def test_interrupted_or_timed_out_runs_are_not_ok() -> None:
    rec = _record()
    rec.timed_out = True
    assert build_report(rec)["ok"] is False
    rec = _record()
    rec.interrupted = True
    assert build_report(rec)["ok"] is False


# -- plot and view ------------------------------------------------------------------------


def test_timeline_png_is_drawn(tmp_path: Path) -> None:
    rec = _record()
    rec.faults = [FaultRecord("kill9", node=0, fired=True, fired_at=1003.0, progress_at_kill=0.5)]
    report = build_report(rec)
    path = plot_timeline(report, rec.started, tmp_path / "timeline.png")
    assert path is not None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plain_view_prints_notable_events_and_progress_quarters() -> None:
    out = io.StringIO()
    view = PlainView(1000.0, out)
    tr = NodeTrack(0, "n00", "a")
    for ev in [
        _ev(1001.0, "download_started", version="2.0.0"),
        _ev(1001.5, "download_progress", version="2.0.0", progress=0.3, rate=2048.0),
        _ev(1001.6, "download_progress", version="2.0.0", progress=0.35, rate=2048.0),
        _ev(1002.0, "peer_banned", peer="127.0.0.1:9", reason="bad chunk"),
        _ev(1003.0, "update_complete", version="2.0.0", old_version="1.0.0", new_version="2.0.0"),
    ]:
        tr.feed(ev)
        view.event(tr, ev)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[   1.00s] n00 download started 2.0.0",
        "[   1.50s] n00 25% 2.0.0 (2.0 KiB/s)",
        "[   2.00s] n00 banned a peer 127.0.0.1:9: bad chunk",
        "[   3.00s] n00 applied 2.0.0 (1.0.0 -> 2.0.0)",
    ]


def test_live_view_renders_one_row_per_node() -> None:
    console = Console(file=io.StringIO(), width=160, record=True, color_system=None)
    view = LiveView(1000.0, console)
    tracks = [NodeTrack(i, f"n{i:02d}", f"h:{i}", version="1.0.0") for i in range(3)]
    tracks[1].feed(_ev(1, "download_progress", version="2.0.0", progress=0.5, rate=1048576.0))
    tracks[2].sources = {"h:0": 3, "h:9": 1}
    tracks[2].peers = 4
    console.print(view.render(tracks, {"h:0": "n00", "h:9": "authority"}, "header"))
    text = console.export_text()
    assert "header" in text and "n00" in text and "n02" in text
    assert "50.0%" in text and "1.0 MiB/s" in text and "n00 75% authority 25%" in text
    assert format_sources({}, {}) == ""
