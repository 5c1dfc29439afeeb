"""Crash safety: kill -9 the applicator at each step of an install, then recover.

The applicator runs in a child process (tests/shell/apply_faults_child.py)
which SIGKILLs itself at the fault point named by ``P2PUPDATE_FAULT``. After
each kill the target must be the complete old or the complete new version,
and a restarted applicator must roll the unconfirmed install back and retry it
(counting one attempt), or finish a rollback that was under way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.core import apply as core
from p2pupdate.shell.faults import FAULT_ENV, FAULT_POINTS
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from tests.shell.apply_helpers import (
    BIG_PADDING,
    Events,
    app_script,
    dead_soon,
    make_package,
    make_tar,
    read_pid,
    wait_for_file,
)

REPO = Path(__file__).resolve().parents[2]
CHANNEL = "app/stable"


class Scenario:
    """A v1 target, a v2 package, and the child's config."""

    def __init__(self, tmp: Path, *, is_dir: bool, bad: bool, restart: bool) -> None:
        self.tmp = tmp
        self.is_dir = is_dir
        root = tmp / "opt"
        root.mkdir()
        self.target = root / ("svc" if is_dir else "app")
        behaviour = "bad" if bad else "good"
        self.restart = ["/bin/sh", "-c", "echo r >> restarts.log"] if restart else None
        if is_dir:
            self.old = self._release("1.0.0", "good")
            self.new = self._release("2.0.0", behaviour)
            self.health: list[str] | None = ["/bin/sh", "-c", "bin/run"]
        else:
            # Padded past one copy block so mid-copy faults see half a file.
            self.old = app_script("1.0.0", pad=BIG_PADDING)
            self.new = app_script("2.0.0", behaviour, pad=BIG_PADDING)
            self.target.write_bytes(self.old)
            os.chmod(self.target, 0o755)
            self.health = None
        self.package, self.package_id = make_package(tmp / "cache", "2.pkg", self.new)

    async def prepare(self) -> None:
        """A directory target gets v1 by a first, clean apply (not part of the crash)."""
        if self.is_dir:
            v1, v1_id = make_package(self.tmp / "cache", "1.tar", self.old)
            app = Applicator(self.tmp / "data", self.tmp / "backups", Events())
            assert await app.apply(self.spec(), "1.0.0", v1, v1_id)

    @staticmethod
    def _release(version: str, behaviour: str) -> bytes:
        run = f"#!/bin/sh\necho svc {version}\nexit {1 if behaviour == 'bad' else 0}\n"
        return make_tar({"bin/run": run.encode(), "VERSION": version.encode()})

    def spec(self) -> TargetSpec:
        return TargetSpec(
            CHANNEL,
            self.target,
            is_dir=self.is_dir,
            health_cmd=self.health,
            restart_cmd=self.restart,
            version=None if self.is_dir else "1.0.0",
            confirm_window=60.0,  # until healthy: generous costs nothing when it passes
        )

    def config(self, **extra: Any) -> Path:
        cfg = {
            "data": str(self.tmp / "data"),
            "backups": str(self.tmp / "backups"),
            "channel": CHANNEL,
            "target": str(self.target),
            "is_dir": self.is_dir,
            "health_cmd": self.health,
            "restart_cmd": self.restart,
            "target_version": None if self.is_dir else "1.0.0",
            "version": "2.0.0",
            "package": str(self.package),
            "package_id": self.package_id.hex(),
            **extra,
        }
        path = self.tmp / "child.json"
        path.write_text(json.dumps(cfg))
        return path

    def spawn(self, fault: str | None, **extra: Any) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.pop(FAULT_ENV, None)
        if fault is not None:
            env[FAULT_ENV] = fault
        env["PYTHONPATH"] = str(REPO)
        return subprocess.Popen(
            [sys.executable, "-m", "tests.shell.apply_faults_child", str(self.config(**extra))],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def live_bytes(self) -> bytes:
        """The target as a program sees it; for a directory, its release's files."""
        if not self.is_dir:
            return self.target.read_bytes()
        release = self.target.resolve()
        assert release.with_name(release.name + ".complete").exists()
        version = (release / "VERSION").read_text()
        return self.old if version == "1.0.0" else self.new if version == "2.0.0" else b"?"


# (fault point, directory target?, bad version?, restart command?)
CASES = [
    ("after_pending", False, False, False),
    ("mid_backup", False, False, False),
    ("after_backup", False, False, False),
    ("mid_stage", False, False, False),
    ("after_stage", False, False, False),
    ("after_swap", False, False, False),
    ("after_restart", False, False, True),
    ("after_health", False, False, False),
    ("after_commit", False, False, False),
    ("before_restore", False, True, False),
    ("mid_restore", False, True, False),
    ("after_restore", False, True, False),
    ("after_pending", True, False, False),
    ("after_extract", True, False, False),
    ("after_switch", True, False, False),
    ("after_health", True, False, False),
    ("before_restore", True, True, False),
    ("after_restore", True, True, False),
]


def test_every_fault_point_is_exercised() -> None:
    # The self_* points belong to self-update and are killed at in tests/selfupdate.
    applicator_points = {p for p in FAULT_POINTS if not p.startswith("self_")}
    assert {case[0] for case in CASES} == applicator_points


@pytest.mark.parametrize(
    ("point", "is_dir", "bad", "restart"),
    CASES,
    ids=[f"{c[0]}-{'dir' if c[1] else 'file'}" for c in CASES],
)
async def test_kill_9_at_each_step_leaves_old_or_new_and_recovery_finishes(
    tmp_path: Path, point: str, is_dir: bool, bad: bool, restart: bool
) -> None:
    sc = Scenario(tmp_path, is_dir=is_dir, bad=bad, restart=restart)
    await sc.prepare()
    child = sc.spawn(point)
    out, err = await trio.to_thread.run_sync(lambda: child.communicate(timeout=30))
    assert child.returncode == -signal.SIGKILL, (out, err)
    assert '"result"' not in out  # killed at the point, before apply returned

    # 1. The target is the complete old or the complete new version.
    assert sc.live_bytes() in (sc.old, sc.new)
    if point in (
        "after_pending",
        "mid_backup",
        "after_backup",
        "mid_stage",
        "after_stage",
        "after_extract",
    ):
        assert sc.live_bytes() == sc.old
    if point in ("after_swap", "after_switch", "after_health", "after_commit"):
        assert sc.live_bytes() == sc.new

    # 2. A restarted node recovers.
    events = Events()
    app = Applicator(tmp_path / "data", tmp_path / "backups", events)
    await app.recover([sc.spec()])
    status = app.status()["channels"][CHANNEL]
    assert status["pending"] is None
    leftovers = [p.name for p in sc.target.parent.iterdir() if ".p2pupdate-" in p.name]
    assert leftovers == []
    # Nor in the backup dir (a kill mid-backup leaves a staging file as big as the target).
    assert [p.name for p in (tmp_path / "backups").rglob("*.staging")] == []
    if point == "after_commit":
        assert events.names() == []  # nothing was unconfirmed
        assert sc.live_bytes() == sc.new
    elif bad:
        # The version had failed: the rollback is finished, no retry.
        assert sc.live_bytes() == sc.old
        assert events.one("rolled_back")["restored_version"] == "1.0.0"
        assert app.quarantined(CHANNEL) == ["2.0.0"]
        assert "verifying" not in events.names()
    else:
        # Unconfirmed install: rolled back, then tried again, the crash counted.
        assert events.names()[0] == "rolled_back"
        assert events.of("rolled_back")[0]["reason"] == core.INTERRUPTED
        assert events.one("update_complete")["attempts"] == 2
        assert sc.live_bytes() == sc.new
    assert app.installed_version(sc.spec()) == ("1.0.0" if bad else "2.0.0")


async def test_sigterm_during_health_check_stops_within_2s_and_recovery_retries(
    tmp_path: Path,
) -> None:
    sc = Scenario(tmp_path, is_dir=False, bad=False, restart=False)
    sc.health = [
        "/bin/sh",
        "-c",
        "if [ -e once ]; then echo ok; exit 0; fi; touch once; echo $$ > hc.pid; exec sleep 1000",
    ]
    child = sc.spawn(None, sigterm=True)
    pid_file = sc.target.parent / "hc.pid"
    await trio.to_thread.run_sync(wait_for_file, pid_file, 15.0)
    await trio.sleep(0.05)  # the pid is written before exec: let it happen
    # The check sleeps for 1000 s: the child exiting at all means it did not wait for it
    # (the bound here only keeps a broken run from hanging the suite).
    child.send_signal(signal.SIGTERM)
    out, err = await trio.to_thread.run_sync(lambda: child.communicate(timeout=60))
    assert child.returncode == 0, (out, err)
    assert dead_soon(read_pid(pid_file))  # the health check's group was killed
    assert sc.target.read_bytes() == sc.new  # swapped, unconfirmed

    events = Events()
    app = Applicator(tmp_path / "data", tmp_path / "backups", events)
    await app.recover([sc.spec()])
    assert events.names()[:1] == ["rolled_back"]
    assert events.one("update_complete")["attempts"] == 2
    assert sc.target.read_bytes() == sc.new
