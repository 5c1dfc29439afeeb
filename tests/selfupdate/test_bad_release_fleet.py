"""Three nodes on one managed install, each restarted by its supervisor, and a published
release of p2pupdate that cannot even be imported (issue 19).

The node that installs the release and switches ``current`` goes last; the other two
re-exec into it and die. It never follows: it sees them die on it, quarantines the
release, switches ``current`` back and keeps serving all along. Every node that was
rolled back says so, and a good release other than ``current`` stays to fall back to.

Real wheelhouses and venvs, real node processes under a restarting supervisor, real
TCP on 127.0.0.1, probed every 50 ms.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.selfupdate.conftest import (
    Releases,
    Supervisor,
    listening,
    managed_install,
    wait_for,
)

pytestmark = pytest.mark.slow

BOUND = 3  # boot_attempts (the default; the fleet's config does not set it)


class FleetProbe:
    """Connect to every node's port every 50 ms; count refusals per node, and the rounds
    in which every node refused at once (the install served nobody)."""

    def __init__(self, nodes: Sequence[Supervisor]) -> None:
        self.nodes = list(nodes)
        self.rounds = 0
        self.refused = {n.name: 0 for n in nodes}
        self.all_refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _refuses(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return False
        except ConnectionRefusedError:
            return True
        except OSError:
            return False  # a reset or a timeout is not a refusal

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.rounds += 1
            down = [n.name for n in self.nodes if self._refuses(n.port)]
            for name in down:
                self.refused[name] += 1
            if len(down) == len(self.nodes):
                self.all_refused += 1
            self._stop.wait(0.05)

    def __enter__(self) -> FleetProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _boots(history: list[str], release: str) -> dict[str, int]:
    """Node key -> how many times its launcher booted ``release``."""
    out: dict[str, int] = {}
    for line in history:
        m = re.match(rf"\S+ boot {re.escape(release)} node=(\w+) ", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def _key(inst: Path, node: Supervisor) -> str:
    for path in (inst / "state" / "nodes").glob("*.json"):
        if json.loads(path.read_text())["data_dir"] == str(node.data_dir):
            return path.stem
    raise AssertionError(f"{node.name} is not registered")


def _quarantined(inst: Path) -> list[str]:
    try:
        data = json.loads((inst / "state" / "quarantine.json").read_text())
    except FileNotFoundError:
        return []
    return [e["version"] for e in data["versions"]]


def test_release_that_cannot_import_installer_never_runs_it_and_install_keeps_serving(
    tmp_path: Path, releases: Releases, fleet_factory: Any
) -> None:
    old, good, bad = (
        releases.get("1.0.0"),
        releases.get("1.1.0"),
        releases.get("1.2.0", "noimport"),
    )
    inst = tmp_path / "inst"
    launcher = managed_install(inst, old)
    managed_install(inst, good)  # run again: updates; previous -> 1.0.0
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    env = {"TMPDIR": str(systmp)}
    fleet = fleet_factory(launcher)
    a = fleet.start("a", env=env)
    wait_for("a listening", lambda: listening(a), 30)
    b = fleet.start("b", peers=[a.port], env=env)
    c = fleet.start("c", peers=[a.port], env=env)
    nodes = [a, b, c]
    for n in nodes:
        n.wait_event("self_update_confirmed", version="1.1.0")
    keys = {n.name: _key(inst, n) for n in nodes}
    pids = {n.name: n.pids[:] for n in nodes}

    with FleetProbe(nodes) as probe:
        fleet.publish(bad, "1.2.0", a)
        wait_for("1.2.0 quarantined", lambda: "1.2.0" in _quarantined(inst), 120)
        installers = wait_for(
            "the installing node",
            lambda: [n for n in nodes if n.events("self_update_installed", switched=True)],
        )
        assert len(installers) == 1
        installer = installers[0]

        def rolled_back_reported() -> bool:
            booted = _boots(fleet.history(), "1.2.0")
            return all(
                n.events("self_update_rolled_back", version="1.2.0", restored_version="1.1.0")
                for n in nodes
                if keys[n.name] in booted or n is installer
            )

        wait_for("every rolled-back node reports", rolled_back_reported, 120)
        for n in nodes:

            def back_on_old(n: Supervisor = n) -> bool:
                return n.running_release() == "1.1.0"

            wait_for(f"{n.name} back on 1.1.0", back_on_old, 60)

    history = fleet.history()
    booted = _boots(history, "1.2.0")
    # Figures for docs/self-update.md (kept beside the test's files).
    stamps = {line.split(" ", 2)[1]: float(line.split(" ", 1)[0]) for line in history}
    (tmp_path / "figures.json").write_text(
        json.dumps(
            {
                "probe_rounds": probe.rounds,
                "installer": installer.name,
                "refused": probe.refused,
                "all_refused": probe.all_refused,
                "boots_of_bad": {n.name: booted.get(keys[n.name], 0) for n in nodes},
                "exits": {n.name: n.exits for n in nodes},
                "switch_to_rollback_s": stamps.get("rollback", 0) - stamps.get("switch", 0),
                "history": history,
            },
            indent=1,
        )
    )
    # The installing node never ran the release, never stopped, never refused a connection.
    assert keys[installer.name] not in booted, history
    assert installer.pids == pids[installer.name] and installer.exits == []
    assert probe.refused[installer.name] == 0, (probe.refused, probe.rounds)
    # At every probe round at least one node of the install accepted connections.
    assert probe.all_refused == 0, (probe.refused, probe.rounds)
    assert probe.rounds > 20
    # The others tried it (so it is their failure that stopped it), each within the boot
    # bound. (A node slow to move may find it quarantined already and never boot it.)
    others = [n for n in nodes if n is not installer]
    assert booted and set(booted) <= {keys[n.name] for n in others}, (booted, history)
    assert all(count <= BOUND for count in booted.values()), booted
    for n in others:
        if keys[n.name] not in booted:
            assert n.exits == [] and not n.events("self_update_rolled_back"), n.name
            continue
        assert n.exits and all(rc != 0 for rc in n.exits), (n.name, n.exits)
        ev = n.events("self_update_rolled_back", version="1.2.0")
        assert len(ev) == 1 and ev[0]["booted"] is True, ev
        assert n.events("quarantined", version="1.2.0")
    ev = installer.events("self_update_rolled_back", version="1.2.0")
    assert len(ev) == 1 and ev[0]["booted"] is False, ev
    assert ev[0]["reason"] in ("failed_on_others", "quarantined"), ev
    assert not installer.events("self_update_restarting")
    # current back on 1.1.0; a good release other than current stays to fall back to.
    assert (inst / "current").readlink() == Path("releases/1.1.0")
    assert (inst / "previous").readlink() == Path("releases/1.0.0")
    assert (inst / "releases" / "1.0.0.complete").is_file()
    assert _quarantined(inst) == ["1.2.0"]
    status = installer.status()["self_update_info"]
    assert status["previous"] == "1.0.0" and status["quarantined"] == ["1.2.0"]
    # Temporary dirs live under each node's data dir, none in the system's temp dir.
    assert sorted(p.name for p in systmp.iterdir() if p.name.startswith("p2pupdate-")) == []
    for n in nodes:
        assert (n.data_dir / "tmp").is_dir()
