"""Self-update end to end: managed install, launcher, publish a new release, re-exec.

Real wheelhouses of this checkout, real venvs, real node processes run by the
install's launcher under a restarting supervisor, real TCP on 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.selfupdate.conftest import (
    PortProbe,
    Releases,
    Supervisor,
    listening,
    managed_install,
    wait_for,
)

pytestmark = pytest.mark.slow


def _runs(node: Supervisor, release: str) -> bool:
    return node.running_release() == release


def _boot_lines(history: list[str], release: str) -> list[str]:
    """Node keys in the order their launcher booted ``release``."""
    out = []
    for line in history:
        m = re.match(rf"\S+ boot {re.escape(release)} node=(\w+) ", line)
        if m:
            out.append(m.group(1))
    return out


def test_three_nodes_move_to_new_release_installer_last_port_never_refuses(
    tmp_path: Path, releases: Releases, fleet_factory: Any
) -> None:
    old, new = releases.get("1.0.0"), releases.get("1.1.0")
    launcher = managed_install(tmp_path / "inst", old)
    fleet = fleet_factory(launcher)
    a = fleet.start("a")
    wait_for("a listening", lambda: listening(a), 30)
    b = fleet.start("b", peers=[a.port])
    c = fleet.start("c", peers=[a.port])
    nodes = [a, b, c]
    for n in nodes:
        wait_for(f"{n.name} on 1.0.0", partial(_runs, n, "1.0.0"), 30)
    pids = {n.name: n.pids[:] for n in nodes}

    probes = [PortProbe(n.port) for n in nodes]
    for p in probes:
        p.__enter__()
    try:
        fleet.publish(new, "1.1.0", a)
        for n in nodes:
            n.wait_event("self_update_confirmed", version="1.1.0")
    finally:
        for p in probes:
            p.__exit__()

    for n in nodes:
        assert n.running_release() == "1.1.0"
        status = n.status()
        assert status["self_update_info"]["previous"] == "1.0.0"
        assert "running 1.1.0" in status["self_update"]
        # Same process all along (re-exec, not a restart), never an exit.
        assert n.pids == pids[n.name] and n.exits == [], n.log_text()
    for p in probes:
        assert p.attempts > 20 and p.refused == 0, (p.attempts, p.refused)

    installers = [n for n in nodes if n.events("self_update_installed", switched=True)]
    assert len(installers) == 1
    installer = installers[0]
    order = _boot_lines(fleet.history(), "1.1.0")
    assert len(order) == 3, fleet.history()
    # The installing node booted the new release last.
    registrations = {
        p.stem: p.read_text() for p in (tmp_path / "inst" / "state" / "nodes").glob("*.json")
    }
    key_of = {
        n.name: next(k for k, v in registrations.items() if str(n.data_dir) in v) for n in nodes
    }
    assert order[-1] == key_of[installer.name], (order, key_of)
    # Current and previous kept, nothing else, no half-made release.
    rel = tmp_path / "inst" / "releases"
    assert sorted(p.name for p in rel.iterdir()) == [
        "1.0.0",
        "1.0.0.complete",
        "1.1.0",
        "1.1.0.complete",
    ]
    res = subprocess.run([str(launcher), "--version"], capture_output=True, text=True)
    assert "releases/1.1.0/lib" in " ".join(res.stdout.split()), res.stdout


@pytest.mark.parametrize("defect", ["crash", "noimport"])
def test_release_that_cannot_boot_is_rolled_back_and_quarantined(
    tmp_path: Path, releases: Releases, fleet_factory: Any, defect: str
) -> None:
    old, bad = releases.get("1.0.0"), releases.get("1.2.0", defect)
    launcher = managed_install(tmp_path / "inst", old)
    fleet = fleet_factory(launcher)
    a = fleet.start("a")
    wait_for("a on 1.0.0", lambda: a.running_release() == "1.0.0", 30)
    fleet.publish(bad, "1.2.0", a)
    a.wait_event("self_update_rolled_back", version="1.2.0", restored_version="1.0.0")
    wait_for("a back on 1.0.0", lambda: a.running_release() == "1.0.0", 30)
    # Within the bound: three boots of 1.2.0, each an exit, then the launcher went back.
    assert len(a.exits) == 3 and all(rc != 0 for rc in a.exits), (a.exits, a.log_text())
    assert len(_boot_lines(fleet.history(), "1.2.0")) == 3
    status = a.status()["self_update_info"]
    assert status["quarantined"] == ["1.2.0"] and status["current"] == "1.0.0"
    # It is never retried: the announcement is refused, current stays.
    a.wait_event("update_refused", version="1.2.0", reason="quarantined")
    assert a.events("quarantined", version="1.2.0")
    assert len(a.exits) == 3
    assert (tmp_path / "inst" / "current").readlink() == Path("releases/1.0.0")


def test_only_release_cannot_boot_nothing_to_roll_back_to(
    tmp_path: Path, releases: Releases, fleet_factory: Any
) -> None:
    bad = releases.get("1.2.0", "crash")
    launcher = managed_install(tmp_path / "inst", bad)
    fleet = fleet_factory(launcher)
    a = fleet.start("a", max_starts=6)
    wait_for("six starts", lambda: len(a.exits) >= 6, 60)
    assert "nothing to roll back to" in a.log_text()
    inst = tmp_path / "inst"
    quarantine = (inst / "state" / "quarantine.json").read_text()
    assert '"1.2.0"' in quarantine
    # Not deleted, not damaged: still current, still complete.
    assert (inst / "current").readlink() == Path("releases/1.2.0")
    assert (inst / "releases" / "1.2.0.complete").is_file()
    assert (inst / "releases" / "1.2.0" / "bin" / "p2pupdate").is_file()
    # Counted up to the bound only: the rollback is not repeated on every start.
    assert sum("rollback-impossible" in line for line in fleet.history()) == 1


@pytest.mark.parametrize(
    "point",
    [
        "self_after_download",
        "self_mid_install",
        "self_after_install",
        "self_after_arm",
        "self_after_switch",
    ],
)
def test_kill_9_at_each_step_comes_back_on_a_release_that_runs(
    tmp_path: Path, releases: Releases, fleet_factory: Any, point: str
) -> None:
    old, new = releases.get("1.0.0"), releases.get("1.1.0")
    launcher = managed_install(tmp_path / "inst", old)
    fleet = fleet_factory(launcher)
    a = fleet.start("a", env={"P2PUPDATE_FAULT": point})
    wait_for("a on 1.0.0", lambda: a.running_release() == "1.0.0", 30)
    fleet.publish(new, "1.1.0", a)
    a.wait_event("self_update_confirmed", version="1.1.0")
    assert a.exits == [-9], (a.exits, a.log_text())
    assert a.running_release() == "1.1.0"
    # Every boot was of a complete release; no half-made release is left.
    rel = tmp_path / "inst" / "releases"
    dirs = {p.name for p in rel.iterdir() if p.is_dir()}
    assert all((rel / f"{d}.complete").is_file() for d in dirs), sorted(rel.iterdir())
    booted = {line.split()[2] for line in fleet.history() if " boot " in line}
    assert booted == {"1.0.0", "1.1.0"}


def test_managed_node_survives_sighup_and_follows_current_switched_by_another(
    tmp_path: Path, releases: Releases, fleet_factory: Any
) -> None:
    """`current` switched by someone else (another node, an operator): SIGHUP asks the node
    to look now; it re-execs into that release in the same process, and SIGHUP never
    stops it."""
    import signal

    from p2pupdate.selfupdate.install import Layout, install_lock, install_release, switch_current
    from tests.selfupdate.conftest import with_signal

    old, new = releases.get("1.0.0"), releases.get("1.1.0")
    launcher = managed_install(tmp_path / "inst", old)
    fleet = fleet_factory(launcher)
    a = fleet.start("a")
    wait_for("a on 1.0.0", partial(_runs, a, "1.0.0"), 30)
    assert a.proc is not None
    with_signal(a.proc, signal.SIGHUP)  # nothing to do yet: it keeps running
    wait_for("a still on 1.0.0", partial(_runs, a, "1.0.0"), 10)
    layout = Layout(tmp_path / "inst")
    with install_lock(layout):
        install_release(layout, new)
        switch_current(layout, "1.1.0")
    with_signal(a.proc, signal.SIGHUP)
    wait_for("a on 1.1.0", partial(_runs, a, "1.1.0"), 60)
    assert a.exits == [], (a.exits, a.log_text())  # re-exec'd, never exited
    assert len(a.pids) == 1
