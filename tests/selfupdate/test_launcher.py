"""The stable launcher on its own: boot counting per node and release, rollback, quarantine.

The releases here are tiny shell scripts standing in for a venv's
``bin/p2pupdate`` (the launcher only execs them), so these tests need no
wheelhouse; the real thing is in test_update.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from p2pupdate.core import boot
from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate import launcher


def _fake_release(layout: inst.Layout, version: str, rc: int) -> None:
    program = layout.program(version)
    program.parent.mkdir(parents=True)
    program.write_text(f'#!/bin/sh\necho "ran {version} key=$P2PUPDATE_NODE_KEY"\nexit {rc}\n')
    program.chmod(0o755)
    layout.marker(version).write_text("{}")


def _setup(tmp_path: Path) -> inst.Layout:
    layout = inst.Layout(tmp_path / "inst")
    inst.write_launcher(layout, sys.executable)
    _fake_release(layout, "1.0.0", 0)
    _fake_release(layout, "1.1.0", 7)
    with inst.install_lock(layout):
        inst.switch_current(layout, "1.0.0")
    return layout


def _boot(layout: inst.Layout, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(layout.launcher), "node", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_ten_nodes_booting_one_good_release_do_not_add_up_to_a_rollback(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    for i in range(10):
        res = _boot(layout, tmp_path / f"n{i}")
        assert res.returncode == 0 and res.stdout.startswith("ran 1.0.0"), res.stderr
    assert inst.read_link(layout.current) == "1.0.0"
    assert inst.quarantined(layout) == []
    key = inst.node_key(tmp_path / "n3")
    assert inst.read_boot_record(layout, key)["releases"]["1.0.0"]["attempts"] == 1


def test_bad_release_rolled_back_past_the_bound_and_quarantined(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    node = tmp_path / "n1"
    key = inst.node_key(node)
    assert _boot(layout, node).returncode == 0
    assert inst.confirm_boot(layout, key, "1.0.0", 3)
    with inst.install_lock(layout):
        inst.switch_current(layout, "1.1.0")
    assert inst.read_link(layout.previous) == "1.0.0"
    for attempt in (1, 2, 3):
        res = _boot(layout, node)
        assert res.returncode == 7 and res.stdout.startswith("ran 1.1.0")
        assert inst.read_boot_record(layout, key)["releases"]["1.1.0"]["attempts"] == attempt
    res = _boot(layout, node)  # past the bound
    assert res.returncode == 0 and res.stdout.startswith("ran 1.0.0"), res.stderr
    assert "current switched back to 1.0.0" in res.stderr
    assert inst.read_link(layout.current) == "1.0.0"
    assert inst.quarantined(layout) == ["1.1.0"]
    record = inst.read_boot_record(layout, key)
    assert record["rolled_back"]["version"] == "1.1.0"
    # Another node of the same install does not count 1.1.0 any more: current is 1.0.0.
    other = _boot(layout, tmp_path / "n2")
    assert other.stdout.startswith("ran 1.0.0")
    # Releases and markers untouched.
    assert inst.is_complete(layout, "1.1.0") and inst.is_complete(layout, "1.0.0")


def test_other_commands_are_not_counted(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    res = subprocess.run([str(layout.launcher), "status"], capture_output=True, text=True)
    assert res.stdout.startswith("ran 1.0.0")
    assert not (layout.state / "boots").exists()


def test_incomplete_current_falls_back_to_previous(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    with inst.install_lock(layout):
        inst.switch_current(layout, "1.1.0")
    layout.marker("1.1.0").unlink()  # as if the release were half made
    res = _boot(layout, tmp_path / "n1")
    assert res.stdout.startswith("ran 1.0.0") and "incomplete" in res.stderr


def test_quarantine_file_is_shared_and_clearable(tmp_path: Path) -> None:
    layout = _setup(tmp_path)
    inst.quarantine(layout, "1.1.0", "too_many_attempts", "k1")
    inst.quarantine(layout, "1.1.0", "too_many_attempts", "k2")
    data = json.loads(layout.quarantine_path.read_text())
    assert [e["version"] for e in data["versions"]] == ["1.1.0"]
    assert inst.quarantine_clear(layout, "1.1.0")
    assert not inst.quarantine_clear(layout, "1.1.0")


def test_installed_launcher_runs_without_p2pupdate_importable(tmp_path: Path) -> None:
    """The launcher runs under the base interpreter before any release is trusted: with site
    packages off (-S) and isolated (-I), nothing but its own copies and the stdlib loads."""
    layout = _setup(tmp_path)
    lib = layout.launcher_lib
    assert (lib / f"{launcher.MODULE}.py").read_bytes() == Path(launcher.__file__).read_bytes()
    assert (lib / f"{launcher.BOOT_MODULE}.py").read_bytes() == Path(boot.__file__).read_bytes()
    probe = (
        f"import sys; sys.path.insert(0, {str(lib)!r}); import {launcher.MODULE}; "
        "print(sorted(m for m in sys.modules if 'p2pupdate' in m))"
    )
    res = subprocess.run(
        [inst.base_python(), "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sorted([launcher.MODULE, launcher.BOOT_MODULE]))
    node = tmp_path / "n1"
    res = subprocess.run(
        [inst.base_python(), "-I", "-S", str(layout.launcher), "node", "--data-dir", str(node)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout.startswith("ran 1.0.0"), res.stderr
    key = inst.node_key(node)
    assert inst.read_boot_record(layout, key)["releases"]["1.0.0"]["attempts"] == 1


def test_data_dir_of_reads_flags_and_config(tmp_path: Path) -> None:
    assert launcher.data_dir_of(["node", "--data-dir", "/d"]) == "/d"
    assert launcher.data_dir_of(["node", "--data-dir=/e"]) == "/e"
    cfg = tmp_path / "node.toml"
    cfg.write_text('data_dir = "data"\n')
    assert launcher.data_dir_of(["node", "--config", str(cfg)]) == str(tmp_path / "data")
    cfg.write_text("not toml [")
    assert launcher.data_dir_of(["node", f"--config={cfg}"]) == "default"
    assert launcher.data_dir_of(["node"]) == "default"


def test_no_rollback_target_gives_up_and_starts_the_release(tmp_path: Path) -> None:
    """Past the bound with no good previous: quarantined, marked given up, started as it is,
    and not counted any more."""
    layout = _setup(tmp_path)
    node = tmp_path / "n1"
    key = inst.node_key(node)
    with inst.install_lock(layout):
        inst.switch_current(layout, "1.1.0")
    inst.quarantine(layout, "1.0.0", "manual", "k")  # previous is no good
    for _ in range(3):
        assert _boot(layout, node).stdout.startswith("ran 1.1.0")
    res = _boot(layout, node)
    assert res.stdout.startswith("ran 1.1.0") and "nothing to roll back to" in res.stderr
    record = inst.read_boot_record(layout, key)
    assert record["releases"]["1.1.0"] == {"attempts": 3, "confirmed": False, "gave_up": True}
    assert record["rolled_back"]["restored"] is None
    assert inst.quarantined(layout) == ["1.0.0", "1.1.0"]
    assert _boot(layout, node).stdout.startswith("ran 1.1.0")
    assert inst.read_boot_record(layout, key)["releases"]["1.1.0"]["attempts"] == 3


def test_launcher_state_cap_is_the_configured_limit() -> None:
    """The launcher cannot import config.py; its copy of the limit must agree."""
    from p2pupdate.config import DEFAULT_LIMITS

    assert DEFAULT_LIMITS.max_selfupdate_state == launcher._MAX_STATE
