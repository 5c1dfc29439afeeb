"""After a release that cannot boot: what the install keeps, how the installing node takes
it back, and that every node rolled back from it says so (issue 19).

Releases here are tiny shell scripts standing in for a venv's ``bin/p2pupdate`` (as in
test_launcher.py); the launcher is the real one, run as a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate.manager import ManagedInstall, SelfUpdateOptions, SelfUpdater


def _fake_release(layout: inst.Layout, version: str, rc: int) -> None:
    program = layout.program(version)
    program.parent.mkdir(parents=True)
    program.write_text(f'#!/bin/sh\necho "ran {version}"\nexit {rc}\n')
    program.chmod(0o755)
    layout.marker(version).write_text("{}")


def _setup(tmp_path: Path) -> inst.Layout:
    """1.0.0 then 1.1.0 (good), then 1.2.0 (exits 7) switched to: previous is 1.1.0."""
    layout = inst.Layout(tmp_path / "inst")
    inst.write_launcher(layout, sys.executable)
    _fake_release(layout, "1.0.0", 0)
    _fake_release(layout, "1.1.0", 0)
    _fake_release(layout, "1.2.0", 7)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        with inst.install_lock(layout):
            inst.switch_current(layout, v)
    assert inst.read_link(layout.previous) == "1.1.0"
    return layout


def _boot(layout: inst.Layout, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(layout.launcher), "node", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=20,
    )


def _releases(layout: inst.Layout) -> list[str]:
    return sorted(p.name for p in layout.releases.iterdir() if p.is_dir())


def test_after_a_launcher_rollback_pruning_keeps_a_good_release_other_than_current(
    tmp_path: Path,
) -> None:
    layout = _setup(tmp_path)
    node = tmp_path / "n1"
    for _ in range(3):
        assert _boot(layout, node).returncode == 7
    assert _boot(layout, node).stdout.startswith("ran 1.1.0")  # past the bound: back
    # The launcher switched current back; previous still names the same release.
    assert inst.read_link(layout.current) == inst.read_link(layout.previous) == "1.1.0"
    removed = inst.prune_releases(layout, {"1.1.0"})
    assert removed == ["1.2.0"]  # quarantined: it goes
    assert inst.read_link(layout.previous) == "1.0.0"  # re-armed: a fallback
    assert _releases(layout) == ["1.0.0", "1.1.0"]
    assert inst.is_complete(layout, "1.0.0")


def test_installing_node_rolls_the_install_back_and_quarantines(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    restored = inst.roll_back_install(layout, "1.2.0", "k0", quarantine_reason="failed_on_others")
    assert restored == "1.1.0"
    assert inst.read_link(layout.current) == "1.1.0"
    assert inst.read_link(layout.previous) == "1.0.0"
    assert inst.quarantine_reasons(layout) == {"1.2.0": "failed_on_others"}
    assert "rollback 1.2.0 -> 1.1.0 node=k0 by=installer" in layout.history.read_text()
    # Again (current already back): nothing changes.
    assert inst.roll_back_install(layout, "1.2.0", "k0", quarantine_reason="x") == "1.1.0"
    assert inst.quarantine_reasons(layout) == {"1.2.0": "failed_on_others"}


def test_switch_back_without_quarantine(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    assert inst.roll_back_install(layout, "1.2.0", "k0", quarantine_reason=None) == "1.1.0"
    assert inst.quarantined(layout) == []


def _updater(layout: inst.Layout, data_dir: Path, events: list[tuple[str, Any]]) -> SelfUpdater:
    return SelfUpdater(
        ManagedInstall(layout, "1.1.0"),
        SelfUpdateOptions(),
        data_dir=data_dir,
        emit=lambda name, fields: events.append((name, fields)),
    )


def test_every_node_rolled_back_by_another_reports_it_once(tmp_path: Path) -> None:
    """Node n2 booted 1.2.0 twice and died; another node's rollback (not its own
    launcher's) took the install back. On its next start it says so, once."""
    layout = _setup(tmp_path)
    n2 = tmp_path / "n2"
    for _ in range(2):
        assert _boot(layout, n2).returncode == 7
    inst.roll_back_install(layout, "1.2.0", "k0", quarantine_reason="failed_on_others")
    assert _boot(layout, n2).stdout.startswith("ran 1.1.0")  # the supervisor's next start
    events: list[tuple[str, Any]] = []
    _updater(layout, n2, events)._start_sync()
    names = [name for name, _ in events]
    assert names == ["self_update_rolled_back", "quarantined"], events
    fields = events[0][1]
    assert fields["version"] == "1.2.0" and fields["restored_version"] == "1.1.0"
    assert fields["reason"] == "failed_on_others" and fields["attempts"] == 2
    again: list[tuple[str, Any]] = []
    _updater(layout, n2, again)._start_sync()  # a later start: already said
    assert again == []
    # A node that never booted 1.2.0 was not rolled back and says nothing.
    other: list[tuple[str, Any]] = []
    _updater(layout, tmp_path / "n3", other)._start_sync()
    assert other == []


def test_node_rolled_back_by_its_own_launcher_reports_once(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    n1 = tmp_path / "n1"
    for _ in range(4):
        _boot(layout, n1)
    events: list[tuple[str, Any]] = []
    _updater(layout, n1, events)._start_sync()
    assert [name for name, _ in events] == ["self_update_rolled_back", "quarantined"]
    assert events[0][1]["reason"] == "too_many_attempts"
