"""The ``self-update`` and ``bad-self-update`` scenarios, run small through ``p2pupdate sim``.

Each run is the real command as a subprocess: it builds wheelhouse releases of
this p2pupdate (kept for the session in one cache dir, ``P2PUPDATE_SIM_RELEASE_CACHE``,
so the dependency wheels are fetched and each release built once), sets up a
managed install, runs the nodes through its launcher, restarts those that exit
(as a supervisor would), publishes the release on the platform channel and
checks the outcome from events and the install's state. The tests check the
exit code, every verdict in report.json, figures of their own, and that the
run left no process and no install dir behind. The scenario loader's
``[self_update]`` checks are fast tests at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.errors import UsageError
from p2pupdate.sim.scenario import SelfUpdate, parse_scenario
from p2pupdate.sim.selfupdate import CACHE_ENV, release_source

P2P = (sys.executable, "-m", "p2pupdate")
RUN_TIMEOUT = 400.0  # the first run of a session also builds the releases


@pytest.fixture(scope="session")
def release_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-releases")


def run_sim(
    tmp_path: Path, base: str, cache: Path, extra: str = "", env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    scenario = tmp_path / f"{base}-small.toml"
    scenario.write_text(f'base = "{base}"\nnodes = 3\ntimeout = 150\n{extra}')
    out = tmp_path / "out"
    proc = subprocess.run(
        [*P2P, "sim", str(scenario), "--out", str(out), "--no-live"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={**os.environ, CACHE_ENV: str(cache), **(env or {})},
    )
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else None
    return proc, report


def explain(proc: subprocess.CompletedProcess[str], report: dict[str, Any] | None) -> str:
    failed = [e for e in (report or {}).get("expectations", []) if not e["ok"]]
    return f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\n{failed}"


def processes_using(path: str) -> list[str]:
    """Command lines of live processes that mention ``path`` (nodes of that install)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if path in cmdline:
            found.append(cmdline)
    return found


def assert_cleaned_up(report: dict[str, Any]) -> None:
    install = report["self_update"]["install_dir"]
    assert not Path(install).exists()
    assert not Path(install).parent.exists()  # the whole work dir
    assert processes_using(install) == []


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    return {e["name"]: e["ok"] for e in report["expectations"]}


@pytest.mark.sim
@pytest.mark.slow
def test_sim_self_update_small(tmp_path: Path, release_cache: Path) -> None:
    proc, report = run_sim(tmp_path, "self-update", release_cache)
    assert report is not None and proc.returncode == 0, explain(proc, report)
    assert verdicts(report) == {"self_updated": True, "all_running": True}
    su = report["self_update"]
    assert su["current"] == "1.1.0" and su["previous"] == "1.0.0" and su["quarantined"] == []
    assert su["channel"].startswith("p2pupdate/stable/cp")
    for name, node in su["nodes"].items():
        # One process all along: a re-exec, never an exit or a restart.
        assert len(node["pids"]) == 1 and node["exits"] == [], (name, node)
        assert node["running"] == "1.1.0" and node["boots"] == {"1.0.0": 1, "1.1.0": 1}
    assert report["publish_runs"][0]["exit_code"] == 0
    installers = [
        n["name"]
        for n in report["nodes"]
        if any(e["event"] == "self_update_installed" and e.get("switched") for e in n["events"])
    ]
    assert len(installers) == 1
    assert "self-update: current 1.1.0" in proc.stdout
    assert_cleaned_up(report)


@pytest.mark.sim
@pytest.mark.slow
def test_sim_bad_self_update_small(tmp_path: Path, release_cache: Path) -> None:
    proc, report = run_sim(tmp_path, "bad-self-update", release_cache)
    assert report is not None and proc.returncode == 0, explain(proc, report)
    assert verdicts(report) == {
        "faults_fired": True,
        "all_running": True,
        "self_update_rolled_back": True,
    }
    su = report["self_update"]
    assert su["current"] == "1.0.0" and su["quarantined"] == ["1.1.0"]
    assert su["quiet_from"] is not None and su["boots_after_quiet"] == []
    tried = 0
    for name, node in su["nodes"].items():
        assert node["running"] == "1.0.0", (name, node)
        bad_boots = node["boots"].get("1.1.0", 0)
        tried += bad_boots > 0
        # Within the bound: each boot of the bad release was one crash, restarted by the
        # harness; never more than boot_attempts of them.
        assert bad_boots <= su["boot_attempts"], (name, node)
        assert len(node["exits"]) == bad_boots and all(c != 0 for c in node["exits"]), node
    assert tried >= 1
    rolled = {
        n["name"]
        for n in report["nodes"]
        if any(e["event"] == "self_update_rolled_back" for e in n["events"])
    }
    # Every node that booted the bad release says it was rolled back; the installing node
    # (which switched `current`) never booted it, never exited, and says so too.
    booted = {name for name, node in su["nodes"].items() if node["boots"].get("1.1.0")}
    assert booted and booted <= rolled, (booted, rolled)
    installers = [
        n["name"]
        for n in report["nodes"]
        if any(e["event"] == "self_update_installed" and e.get("switched") for e in n["events"])
    ]
    assert len(installers) == 1
    assert installers[0] not in booted and su["nodes"][installers[0]]["exits"] == []
    assert_cleaned_up(report)


@pytest.mark.sim
@pytest.mark.slow
def test_sim_self_update_without_a_registry_exits_2_with_one_line(tmp_path: Path) -> None:
    """No cached wheels and no package index: the release cannot be built."""
    proc, report = run_sim(
        tmp_path,
        "self-update",
        tmp_path / "empty-cache",
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull},
    )
    assert proc.returncode == 2, explain(proc, report)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot build a release of p2pupdate" in lines[0], proc.stderr
    assert report is None


# -- the loader's [self_update] checks (fast) ---------------------------------------------


def _raw(**kw: object) -> dict[str, object]:
    return {"nodes": 3, "self_update": {}, **kw}


def test_self_update_table_defaults_channel_and_expectations() -> None:
    sc = parse_scenario(_raw(), name="x")
    assert sc.self_update == SelfUpdate()
    assert sc.channel.startswith("p2pupdate/stable/")
    assert sc.expect.items() == [("all_running", True), ("self_updated", True)]
    bad = parse_scenario(_raw(faults=[{"kind": "bad_release", "version": "2.0.0"}]), name="x")
    assert bad.expect.items() == [("all_running", True), ("self_update_rolled_back", True)]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(self_update={"defect": "slow"}), "self_update: defect: expected one of"),
        (_raw(self_update={"boot_attempts": 0}), "self_update: boot_attempts: must be in"),
        (_raw(self_update={"track": "Bad Track"}), "self_update: track:"),
        (_raw(self_update={"tracks": "x"}), "unknown key(s): tracks"),
        (_raw(self_update=3), "expected a table [self_update]"),
        (
            _raw(faults=[{"kind": "kill9", "node": 1}]),
            "only bad_release goes with [self_update], not kill9",
        ),
        (_raw(expect={"all_applied": True}), "expect: all_applied check an app target"),
    ],
)
def test_self_update_table_mistakes_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_scenario(raw, name="x")
    assert message in str(info.value)


def test_release_source_sets_the_version_and_the_defect(tmp_path: Path) -> None:
    src = release_source(tmp_path / "src", "1.2.3", "crash")
    init = (src / "p2pupdate" / "__init__.py").read_text()
    assert '__version__ = "1.2.3"' in init and "a bad release" in init
    pyproject = (src / "pyproject.toml").read_text()
    assert 'version = "1.2.3"' in pyproject and "p2pupdate.cli:main" in pyproject
    assert "matplotlib" not in pyproject  # extras are not release dependencies
    assert not list(src.rglob("__pycache__"))


# -- the bad-release verdict (pure, fast) ---------------------------------------------------


def _bad_scenario(**self_update: object) -> Any:
    return parse_scenario(
        _raw(
            faults=[{"kind": "bad_release", "version": "1.1.0"}],
            publications=[{"version": "1.1.0", "at": 0.0}],
            self_update=self_update,
        ),
        name="x",
    )


def _track(index: int, events: list[dict[str, Any]]) -> Any:
    from p2pupdate.sim.tracker import NodeTrack

    t = NodeTrack(index, f"n{index:02d}", "127.0.0.1:1")
    t.events.extend(events)
    return t


def _snap(boots: dict[str, dict[str, int]], **kw: Any) -> dict[str, Any]:
    nodes = {n: {"boots": b, "running": "1.0.0", "exits": []} for n, b in boots.items()}
    base = {
        "current": "1.0.0",
        "previous": "1.0.0",
        "quarantined": ["1.1.0"],
        "complete": ["1.0.0"],
        "quiet_from": 1.0,
        "boots_after_quiet": [],
        "nodes": nodes,
    }
    return {**base, **kw}


ROLLED = {"event": "self_update_rolled_back", "version": "1.1.0", "restored_version": "1.0.0"}
INSTALLED = {"event": "self_update_installed", "version": "1.1.0", "switched": True}


def _verdict(snap: dict[str, Any], tracks: list[Any]) -> dict[str, Any]:
    from p2pupdate.sim.selfupdate import check_self_update

    (v,) = check_self_update(_bad_scenario(), snap, tracks)
    return v


def test_bad_release_verdict_every_booting_node_reports_installer_never_boots() -> None:
    boots = {"n00": {"1.0.0": 1}, "n01": {"1.0.0": 1, "1.1.0": 2}, "n02": {"1.0.0": 1, "1.1.0": 1}}
    good = [_track(0, [INSTALLED, ROLLED]), _track(1, [ROLLED]), _track(2, [ROLLED])]
    assert _verdict(_snap(boots), good)["ok"], _verdict(_snap(boots), good)
    # n02 booted it and was rolled back but did not say so.
    silent = [_track(0, [INSTALLED, ROLLED]), _track(1, [ROLLED]), _track(2, [])]
    v = _verdict(_snap(boots), silent)
    assert not v["ok"] and "did not say so: n02" in v["detail"]
    # The installing node booted the bad release: it did not go last.
    booted = {**boots, "n00": {"1.0.0": 1, "1.1.0": 1}}
    v = _verdict(_snap(booted), good)
    assert not v["ok"] and "the installing node n00 booted 1.1.0" in v["detail"]
