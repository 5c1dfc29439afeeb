"""Scenario files: the shipped ones, the loader's checks, and the CLI's answers to mistakes.

The shipped scenarios live inside the package (so ``p2pupdate sim NAME``
works from any directory after a non-editable install); the top-level
``scenarios/`` directory is the documented copy and must stay identical.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from p2pupdate.errors import UsageError
from p2pupdate.sim.scenario import (
    AdversaryFault,
    BadReleaseFault,
    Kill9Fault,
    LateJoinFault,
    PublisherKillFault,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)

REPO = Path(__file__).resolve().parents[2]
DOC_COPY = REPO / "scenarios"
PACKAGED = REPO / "p2pupdate" / "sim" / "scenarios"
P2P = (sys.executable, "-m", "p2pupdate")
SHIPPED = {
    "ten-nodes",
    "interrupted-download",
    "corrupt-peer",
    "bad-release-rollback",
    "late-joiner",
    "bandwidth-limited",
    "bandwidth-limited-netns",
    "centralized-baseline",
    "self-update",
    "bad-self-update",
    "publisher-restart",
    "heterogeneous",
    "membership",
    "thousand-nodes",
    "gossip-10k",
    "staged-rollout-abort",
    "small-change",
}


def test_every_required_scenario_is_shipped() -> None:
    assert set(shipped_scenarios()) == SHIPPED


def test_documented_copy_matches_the_packaged_scenarios() -> None:
    docs = {p.name: p.read_bytes() for p in DOC_COPY.glob("*.toml")}
    packaged = {p.name: p.read_bytes() for p in PACKAGED.glob("*.toml")}
    assert docs == packaged


@pytest.mark.parametrize("path", sorted(DOC_COPY.glob("*.toml")), ids=lambda p: p.stem)
def test_every_documented_scenario_resolves_by_name_and_by_path(path: Path) -> None:
    by_name = load_scenario(path.stem)
    by_path = load_scenario(str(path))
    assert by_name.name == by_path.name == path.stem
    assert by_name.publications == by_path.publications
    assert by_name.expect == by_path.expect
    assert by_name.expect.items(), f"{path.stem} checks nothing"
    assert by_name.description


def test_shipped_scenarios_say_what_they_show() -> None:
    assert load_scenario("ten-nodes").nodes == 10
    assert load_scenario("ten-nodes").package_size == 32 * 1024 * 1024
    assert load_scenario("ten-nodes").degree == 2
    assert load_scenario("interrupted-download").faults_of(Kill9Fault)
    assert load_scenario("corrupt-peer").faults_of(AdversaryFault)
    rollback = load_scenario("bad-release-rollback")
    assert rollback.faults_of(BadReleaseFault) and rollback.expect.rolled_back
    assert rollback.last_good_version == "1.0.0"
    assert load_scenario("late-joiner").faults_of(LateJoinFault)[0].at is None
    assert load_scenario("bandwidth-limited").upload_limit == 8 * 1024 * 1024
    netns = load_scenario("bandwidth-limited-netns")
    assert netns.network == "netns" and netns.upload_limit == 8 * 1024 * 1024
    restart = load_scenario("publisher-restart").faults_of(PublisherKillFault)
    assert restart and restart[0].version == "2.0.0" and 0 < restart[0].at_progress < 1
    star = load_scenario("centralized-baseline")
    assert star.topology == "star" and star.replicas == star.nodes


def test_the_wheel_carries_the_scenarios(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available in this environment")
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("p2pupdate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert f"p2pupdate/sim/scenarios/{name}.toml" in names


def _raw(**kw: object) -> dict[str, object]:
    return {"nodes": 4, "package_size": "1MiB", **kw}


def test_defaults_and_units() -> None:
    sc = parse_scenario(_raw(upload_limit="2MiB/s"), name="x")
    assert sc.nodes == 4 and sc.package_size == 1 << 20 and sc.upload_limit == 2 << 20
    assert sc.publications[0].version == "2.0.0" and sc.expect.all_applied is True
    assert sc.topology == "ring" and sc.network == "loopback" and sc.replicas == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(nodez=3), "unknown key(s): nodez"),
        (_raw(nodes="four"), "nodes: expected an integer"),
        (_raw(nodes=0), "nodes: must be in 1..200"),
        (_raw(package_size="lots"), "package_size: bad size"),
        (_raw(package_size=10), "package_size: must be between"),
        (_raw(topology="mesh"), "topology: expected one of ring, random-k, star"),
        (_raw(network="wifi"), "network: expected one of loopback, netns"),
        (_raw(upload_limit="fast"), "upload_limit: bad rate"),
        (_raw(channel="Bad Channel"), "channel: bad channel"),
        (_raw(publications=[]), "publications: expected a non-empty array"),
        (_raw(publications=[{"at": 1}]), "publications[0]: version: missing"),
        (_raw(publications=[{"version": "two"}]), "version: bad version"),
        (_raw(publications=[{"version": "1.0.0"}]), "must be newer than 1.0.0"),
        (
            _raw(publications=[{"version": "2.0.0", "at": 5}, {"version": "3.0.0", "at": 1}]),
            "publications must be in time order",
        ),
        (_raw(publications=[{"version": "2.0.0", "when": 1}]), "unknown key(s): when"),
        (_raw(faults=[{"kind": "meteor"}]), "kind: expected one of kill9"),
        (_raw(faults=[{"kind": "kill9"}]), "node: missing"),
        (_raw(faults=[{"kind": "kill9", "node": 9}]), "node: must be in 0..3"),
        (_raw(faults=[{"kind": "kill9", "node": 1, "at_progress": 1.0}]), "strictly between"),
        (_raw(faults=[{"kind": "adversary", "mode": "nice"}]), "mode: expected one of"),
        (_raw(faults=[{"kind": "bad_release", "version": "9.0.0"}]), "names no publication"),
        (_raw(faults=[{"kind": "kill_publisher", "at_progress": 0}]), "strictly between"),
        (_raw(faults=[{"kind": "kill_publisher", "version": "9.0.0"}]), "names no publication"),
        (
            _raw(faults=[{"kind": "kill_publisher"}, {"kind": "kill_publisher"}]),
            "one kill_publisher per publication",
        ),
        (_raw(faults=[{"kind": "kill_publisher", "node": 1}]), "unknown key(s): node"),
        (
            _raw(faults=[{"kind": "late_join", "node": i} for i in range(4)]),
            "at least one node must start",
        ),
        (_raw(expect={"all_aplied": True}), "unknown key(s): all_aplied"),
        (_raw(expect={"max_time": "soon"}), "max_time: expected a number"),
        (_raw(expect="yes"), "'expect' must be a table"),
        (_raw(mode="simulated"), "mode: expected one of processes, virtual"),
        (_raw(virtual={"latency": 0.1}), 'virtual: only goes with mode = "virtual"'),
        (_raw(expect={"max_hops": 3}), 'max_hops only with mode = "virtual"'),
        (_raw(mode="virtual", nodes=20001), "nodes: must be in 1..20000"),
        (_raw(mode="virtual", virtual={"latncy": 1}), "virtual: unknown key(s): latncy"),
        (_raw(mode="virtual", virtual={"churn": 0.9}), "churn: must be in 0.0..0.5"),
        (_raw(mode="virtual", virtual={"churn_window": [5, 1]}), "churn_window: expected"),
        (_raw(mode="virtual", virtual={"download": "quick"}), "download: bad rate"),
        (_raw(mode="virtual", network="netns"), "a virtual run has its own network model"),
        (_raw(mode="virtual", topology="star"), "star is not simulated"),
        (
            _raw(mode="virtual", faults=[{"kind": "kill9", "node": 1}]),
            "a virtual run has no [[faults]]",
        ),
        (_raw(mode="virtual", expect={"rolled_back": True}), "rolled_back not measured"),
        (_raw(publications=[{"version": "2.0.0", "changed": "lots"}]), "changed: expected a"),
        (_raw(publications=[{"version": "2.0.0", "changed": "0%"}]), "more than 0%"),
        (_raw(publications=[{"version": "2.0.0", "changed": 101}]), "at most 100%"),
        (_raw(publications=[{"version": "2.0.0", "changed": True}]), "changed: expected a"),
        (
            _raw(mode="virtual", publications=[{"version": "2.0.0", "changed": "5%"}]),
            "'changed' needs mode",
        ),
        (_raw(expect={"max_fetched_ratio": 2}), "max_fetched_ratio: must be in 0.0..1.0"),
    ],
)
def test_mistakes_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_scenario(raw, name="x")
    assert message in str(info.value)
    assert str(info.value).startswith("scenario x")


def test_a_small_change_publication_reads_its_share() -> None:
    sc = parse_scenario(
        _raw(
            publications=[{"version": "2.0.0"}, {"version": "3.0.0", "changed": "5%", "at": 9}],
            expect={"max_fetched_ratio": 0.08},
        ),
        name="x",
    )
    assert [p.changed for p in sc.publications] == [None, 0.05]
    assert sc.expect.max_fetched_ratio == 0.08
    assert parse_scenario(
        _raw(publications=[{"version": "2.0.0", "changed": 2.5}]), name="x"
    ).publications[0].changed == pytest.approx(0.025)
    shipped = load_scenario("small-change")
    assert shipped.package_size == 64 << 20 and shipped.final_publication.changed == 0.05


def test_virtual_scenarios_read_their_table() -> None:
    sc = parse_scenario(
        _raw(
            mode="virtual",
            nodes=5000,
            upload_limit="2MiB/s",
            virtual={"download": "8MiB/s", "slow_fraction": 0.1, "churn": 0.05,
                     "churn_window": [2, 8], "late_joiners": 3, "gossip_only": True},
            expect={"max_hops": 16, "max_spread": 1.2},
        ),
        name="x",
    )  # fmt: skip
    assert sc.mode == "virtual" and sc.nodes == 5000 and sc.virtual is not None
    assert sc.virtual.download == 8 << 20 and sc.virtual.slow_fraction == 0.1
    assert sc.virtual.churn_window == (2.0, 8.0) and sc.virtual.late_joiners == 3
    assert sc.virtual.gossip_only and sc.virtual.authority_upload is None
    assert sc.expect.max_hops == 16 and sc.expect.max_spread == 1.2
    assert parse_scenario(_raw(), name="y").mode == "processes"
    thousand = load_scenario("thousand-nodes")
    assert thousand.mode == "virtual" and thousand.nodes == 1000 and thousand.degree == 3
    assert thousand.package_size == 16 << 20 and thousand.upload_limit > 0
    gossip = load_scenario("gossip-10k")
    assert gossip.nodes == 10000 and gossip.virtual is not None and gossip.virtual.gossip_only


def test_base_merges_tables_and_replaces_arrays(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'base = "corrupt-peer"\nnodes = 3\n[expect]\nmax_time = 5\n'
        '[[faults]]\nkind = "adversary"\nmode = "bad-tables"\n'
    )
    (tmp_path / "child.toml").write_text('base = "mine.toml"\npackage_size = "1MiB"\n')
    sc = load_scenario(str(tmp_path / "child.toml"))
    assert sc.name == "child" and sc.nodes == 3 and sc.package_size == 1 << 20
    assert sc.expect.max_time == 5.0 and sc.expect.adversary_banned is True  # merged
    assert sc.faults == (AdversaryFault("bad-tables"),)  # replaced
    # Overrides work the same way, for callers in Python.
    assert load_scenario("ten-nodes", {"nodes": 2}).nodes == 2


def test_base_loops_and_bad_files_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(UsageError, match="loops back"):
        load_scenario(str(tmp_path / "a.toml"))
    (tmp_path / "bad.toml").write_text("nodes = = 3\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_scenario(str(tmp_path / "bad.toml"))
    with pytest.raises(UsageError, match="does not exist"):
        load_scenario(str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="is a directory"):
        load_scenario(str(tmp_path) + "/")
    with pytest.raises(UsageError, match=r"unknown scenario 'nope'.*ten-nodes"):
        load_scenario("nope")


@pytest.mark.parametrize("arg", ["no-such-scenario", "missing/file.toml", "./nothing.toml"])
def test_cli_bad_scenario_exits_2_with_one_line(arg: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*P2P, "sim", arg, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("p2pupdate: error: ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_out_that_is_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = subprocess.run(
        [*P2P, "sim", "ten-nodes", "--out", str(tmp_path / "file")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
