"""Applicator on file targets: real files, real health-check subprocesses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio

from p2pupdate.core import apply as core
from p2pupdate.core.policy import install_decision
from p2pupdate.errors import DiskFullError
from p2pupdate.shell.install import targets
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.install.applystate import StateStore
from p2pupdate.shell.install.healthcheck import OUTPUT_LIMIT, run_command
from tests.helpers import small_tmpfs
from tests.shell.apply_helpers import Events, alive, app_script, dead_soon, make_package, read_pid

CHANNEL = "app/stable"


class Env:
    """A data dir, a backup dir, a target file and an applicator over them."""

    def __init__(self, tmp: Path, *, max_size: int = 1 << 30) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.backups = tmp / "backups"
        self.appdir = tmp / "opt" / "app" / "bin"
        self.appdir.mkdir(parents=True)
        self.target = self.appdir / "app"
        self.pkgs = tmp / "cache"
        self.events = Events()
        self.max_size = max_size
        self.app = self.new_applicator()

    def new_applicator(self) -> Applicator:
        """A fresh applicator over the same directories (as after a restart)."""
        return Applicator(self.data, self.backups, self.events, max_package_size=self.max_size)

    def install_v1(self, content: bytes | None = None, mode: int = 0o750) -> bytes:
        data = content if content is not None else app_script("1.0.0")
        self.target.write_bytes(data)
        os.chmod(self.target, mode)
        return data

    def package(self, version: str, behaviour: str = "good", pad: int = 0) -> tuple[Path, bytes]:
        return make_package(self.pkgs, f"{version}.pkg", app_script(version, behaviour, pad=pad))

    def spec(self, **kwargs: object) -> TargetSpec:
        # A generous health timeout: a check that passes must not fail on a loaded machine
        # (tests of the timeout itself give their own).
        args: dict[str, object] = {"version": "1.0.0", "health_timeout": 60.0}
        args.update(kwargs)
        return TargetSpec(CHANNEL, self.target, **args)  # type: ignore[arg-type]

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.appdir.iterdir() if p.name != "app")


def refusal(
    app: Applicator, spec: TargetSpec, version: str, size: int, min_version: str | None = None
) -> str | None:
    """The act gate as the agent asks it for ``spec``, with the applicator's state."""
    d = install_decision(
        version,
        size=size,
        installed_version=app.installed_version(spec),
        quarantined=app.quarantined(spec.channel),
        max_size=app.max_size,
        min_version=min_version,
    )
    return None if d.ok else d.reason


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# ---------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------


async def test_an_install_hashes_the_package_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package is hashed as it is staged, not also before: every BLAKE3 byte the
    install feeds is the package once (the backup, on the same filesystem, is a hard
    link: nothing of the old target is read)."""
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    hashed = [0]
    real = blake3.blake3

    class Counting:
        def __init__(self) -> None:
            self._h = real()

        def update(self, data: bytes | memoryview) -> None:
            hashed[0] += len(data)
            self._h.update(data)

        def digest(self) -> bytes:
            return bytes(self._h.digest())

    monkeypatch.setattr(blake3, "blake3", Counting)
    assert await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert hashed[0] == pkg.stat().st_size
    assert [b.read_bytes() for b in env.backups.rglob("*.bak")] == [v1]


async def test_good_update_is_installed_with_backup_and_events(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    spec = env.spec()
    assert await env.app.apply(spec, "2.0.0", pkg, pid)
    assert env.target.read_bytes() == pkg.read_bytes()
    assert stat.S_IMODE(env.target.stat().st_mode) == 0o750  # the target's mode bits kept
    assert env.app.installed_version(spec) == "2.0.0"
    assert env.events.names() == ["verifying", "applying", "update_complete"]
    done = env.events.one("update_complete")
    assert done["channel"] == CHANNEL and done["version"] == "2.0.0"
    assert done["package_id"] == pid.hex()
    assert (done["old_version"], done["new_version"]) == ("1.0.0", "2.0.0")
    assert "app 2.0.0" in done["health_output"]  # kept, not matched
    assert done["health_check"] == f"{env.target} --version"
    assert env.leftovers() == []  # no staging file left beside the target
    backups = [p for p in env.backups.rglob("*") if p.is_file()]
    assert [b.read_bytes() for b in backups] == [v1]
    status = env.app.status([spec])
    json.dumps(status)  # JSON-able
    ch = status["channels"][CHANNEL]
    assert ch["installed_version"] == "2.0.0" and ch["pending"] is None
    assert ch["last"]["result"] == "installed"


async def test_first_install_creates_an_executable_target(env: Env) -> None:
    pkg, pid = env.package("1.0.0")
    spec = env.spec(version=None)
    assert env.app.installed_version(spec) is None
    assert await env.app.apply(spec, "1.0.0", pkg, pid)
    assert stat.S_IMODE(env.target.stat().st_mode) == 0o755
    assert env.events.one("update_complete")["old_version"] is None
    assert list(env.backups.rglob("*.bak")) == []


async def test_non_executable_target_is_checked_by_hash_alone(env: Env) -> None:
    env.install_v1(b"config v1\n", mode=0o644)
    pkg, pid = make_package(env.pkgs, "c.pkg", b"config v2\n")
    assert await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert env.events.one("update_complete")["health_check"] == "hash"
    assert stat.S_IMODE(env.target.stat().st_mode) == 0o644


@pytest.mark.parametrize("content", [b"", b"key = 1\n", b"\x1f\x8b\x08 gzip data"])
async def test_new_data_file_target_gets_0755_but_is_not_run(env: Env, content: bytes) -> None:
    """A first install makes the file 0755; a file that is no program is checked by hash."""
    pkg, pid = make_package(env.pkgs, "data.pkg", content)
    spec = env.spec(version=None)
    assert await env.app.apply(spec, "1.0.0", pkg, pid)
    assert env.events.one("update_complete")["health_check"] == "hash"
    assert env.target.read_bytes() == content


async def test_health_check_runs_without_shell_in_target_dir_with_env(env: Env) -> None:
    env.install_v1()
    pkg, pid = env.package("2.0.0")
    argv = ["/bin/sh", "-c", 'pwd; echo "$P2PUPDATE_CHANNEL $P2PUPDATE_VERSION"; echo "$0"', "x y"]
    assert await env.app.apply(env.spec(health_cmd=argv), "2.0.0", pkg, pid)
    out = env.events.one("update_complete")["health_output"].splitlines()
    assert out == [str(env.appdir), f"{CHANNEL} 2.0.0", "x y"]


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "tamper", "reason"),
    [
        ("1.0.0", False, core.NOT_NEWER),
        ("0.9.0", False, core.NOT_NEWER),
        ("1.0.0+build.2", False, core.NOT_NEWER),
        ("2.0.0", True, core.HASH_MISMATCH),
        ("2.0", False, core.BAD_VERSION),
    ],
)
async def test_refusals_leave_the_target_alone(
    env: Env, version: str, tamper: bool, reason: str
) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    if tamper:
        pid = bytes(32)
    assert not await env.app.apply(env.spec(), version, pkg, pid)
    assert env.target.read_bytes() == v1
    refused = env.events.one("update_refused")
    assert refused["reason"] == reason
    assert refused["channel"] == CHANNEL and refused["package_id"] == pid.hex()
    if tamper:
        # Hashed once, as it is staged: the backup made before it is dropped again.
        assert env.events.names() == ["verifying", "applying", "update_refused"]
        assert refused["detail"] == "package changed while it was copied"
        assert not list(env.backups.rglob("*.bak"))
        assert env.app.status()["channels"][CHANNEL].get("attempts", {}) == {}
    else:
        assert "applying" not in env.events.names()
        assert not env.backups.exists()
    last = env.app.status()["channels"][CHANNEL]["last"]
    assert (last["result"], last["reason"]) == ("refused", reason)


async def test_too_large_is_refused_before_hashing(tmp_path: Path) -> None:
    env = Env(tmp_path, max_size=100)
    env.install_v1()
    pkg, pid = env.package("2.0.0", pad=200)
    assert not await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert env.events.names() == ["update_refused"]
    assert env.events.one("update_refused")["reason"] == core.TOO_LARGE


async def test_explicit_rollback_may_install_an_older_version(env: Env) -> None:
    env.install_v1()
    pkg, pid = env.package("0.9.0")
    assert await env.app.apply(env.spec(), "0.9.0", pkg, pid, explicit_rollback=True)
    assert env.app.installed_version(env.spec()) == "0.9.0"


async def test_check_gives_the_reason_before_download(env: Env) -> None:
    spec = env.spec()
    assert refusal(env.app, spec, "2.0.0", 10) is None
    assert refusal(env.app, spec, "1.0.0", 10) == core.NOT_NEWER
    assert refusal(env.app, spec, "2.0.0", 1 << 31) == core.TOO_LARGE
    assert refusal(env.app, spec, "2.0.0", 10, min_version="1.5.0") == core.BELOW_MIN_VERSION


# ---------------------------------------------------------------------------
# Health failure, rollback, quarantine
# ---------------------------------------------------------------------------


async def test_failing_health_check_rolls_back_and_quarantines(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0", "bad")
    spec = env.spec()
    assert not await env.app.apply(spec, "2.0.0", pkg, pid)
    assert env.target.read_bytes() == v1
    assert stat.S_IMODE(env.target.stat().st_mode) == 0o750
    assert env.leftovers() == []
    assert env.events.names() == [
        "verifying",
        "applying",
        "update_failed",
        "rolled_back",
        "quarantined",
    ]
    failed = env.events.one("update_failed")
    assert failed["reason"] == core.HEALTH_CHECK_FAILED
    assert "cannot load libfoo" in failed["detail"]
    rolled = env.events.one("rolled_back")
    assert (rolled["version"], rolled["restored_version"]) == ("2.0.0", "1.0.0")
    assert env.events.one("quarantined")["version"] == "2.0.0"
    assert env.app.installed_version(spec) == "1.0.0"
    assert env.app.quarantined(CHANNEL) == ["2.0.0"]
    assert env.app.is_quarantined(CHANNEL, "2.0.0+rebuilt")
    assert refusal(env.app, spec, "2.0.0", 10) == core.QUARANTINED
    # Quarantine persists across restarts, and a quarantined version is never applied.
    app2 = env.new_applicator()
    assert app2.quarantined(CHANNEL) == ["2.0.0"]
    env.events.clear()
    assert not await app2.apply(spec, "2.0.0", pkg, pid)
    assert env.events.one("update_refused")["reason"] == core.QUARANTINED
    assert env.target.read_bytes() == v1
    # Until an operator clears it.
    assert app2.quarantine_clear(CHANNEL, "2.0.0")
    assert not app2.quarantine_clear(CHANNEL, "2.0.0")
    assert refusal(app2, spec, "2.0.0", 10) is None
    assert env.new_applicator().quarantined(CHANNEL) == []


async def test_hanging_health_check_is_killed_whole_on_timeout(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0", "hang")
    # The check sleeps for 1000 s: returning at all means it was killed on its timeout.
    assert not await env.app.apply(env.spec(health_timeout=0.5), "2.0.0", pkg, pid)
    assert env.events.one("update_failed")["reason"] == core.HEALTH_TIMEOUT
    assert env.target.read_bytes() == v1
    leader, child = read_pid(env.appdir / "hang.pid"), read_pid(env.appdir / "child.pid")
    assert dead_soon(leader) and dead_soon(child)


async def test_first_install_that_fails_is_removed(env: Env) -> None:
    pkg, pid = env.package("1.0.0", "bad")
    assert not await env.app.apply(env.spec(version=None), "1.0.0", pkg, pid)
    assert not env.target.exists()
    assert env.events.one("rolled_back")["restored_version"] is None


async def test_rollback_failure_is_critical_names_the_backup_and_does_not_raise(
    env: Env,
) -> None:
    env.install_v1()
    pkg, pid = env.package("2.0.0")
    # The health check fails and, meanwhile, replaces the backup by a directory
    # (root can read anything, so an unreadable file cannot stand in).
    breaker = f'for f in "{env.backups}"/*/*.bak; do rm "$f"; mkdir "$f"; done; exit 1'
    spec = env.spec(health_cmd=["/bin/sh", "-c", breaker])
    assert not await env.app.apply(spec, "2.0.0", pkg, pid)
    failed = [e for e in env.events.of("update_failed") if e["reason"] == core.ROLLBACK_FAILED]
    assert len(failed) == 1 and failed[0]["critical"] is True
    backup = failed[0]["backup"]
    assert backup.endswith(".bak") and backup in failed[0]["detail"]
    assert core.HEALTH_CHECK_FAILED in failed[0]["detail"]
    assert "IsADirectoryError" in failed[0]["detail"]
    assert "rolled_back" not in env.events.names()
    assert env.app.is_quarantined(CHANNEL, "2.0.0")
    ch = env.app.status()["channels"][CHANNEL]
    assert ch["pending"]["phase"] == "rolling_back"  # retried at the next start
    assert ch["last"]["reason"] == core.ROLLBACK_FAILED


# ---------------------------------------------------------------------------
# Restart and confirmation window
# ---------------------------------------------------------------------------


async def test_restart_then_health_passes_inside_the_window(env: Env) -> None:
    env.install_v1()
    pkg, pid = env.package("2.0.0")
    # The restart returns at once and its service comes up 0.3 s later, in the
    # background: the restart command's children must survive it.
    restart = ["/bin/sh", "-c", "echo r >> restarts.log; (sleep 0.3; touch running) &"]
    health = ["/bin/sh", "-c", "test -e running && echo up"]
    spec = env.spec(restart_cmd=restart, health_cmd=health, confirm_window=60.0)
    assert await env.app.apply(spec, "2.0.0", pkg, pid)
    assert (env.appdir / "restarts.log").read_text() == "r\n"
    done = env.events.one("update_complete")
    assert done["attempts"] == 1 and done["health_output"] == "up\n"


async def test_crash_after_restart_rolls_back_after_max_attempts(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0", "crash_after_restart")
    restart = ["/bin/sh", "-c", "touch restarted; echo r >> restarts.log"]
    spec = env.spec(restart_cmd=restart, confirm_window=0.3, max_attempts=3)
    assert not await env.app.apply(spec, "2.0.0", pkg, pid)
    assert env.target.read_bytes() == v1
    # Three attempts, each restarting, then one more restart of the good version.
    assert (env.appdir / "restarts.log").read_text() == "r\n" * 4
    assert env.events.one("update_failed")["reason"] == core.NOT_CONFIRMED
    assert env.events.one("quarantined")["version"] == "2.0.0"
    assert env.app.status()["channels"][CHANNEL]["attempts"] == {}


async def test_failing_restart_command_counts_attempts(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    restart = ["/bin/sh", "-c", "echo r >> restarts.log; echo 'app.service: bad unit' >&2; exit 3"]
    spec = env.spec(restart_cmd=restart, max_attempts=2)
    assert not await env.app.apply(spec, "2.0.0", pkg, pid)
    failed = env.events.one("update_failed")
    assert failed["reason"] == core.RESTART_FAILED
    # Why, in the operator's words: the exit code and what the command said last.
    assert failed["detail"] == "exit code 3; output: app.service: bad unit"
    assert (env.appdir / "restarts.log").read_text() == "r\n" * 3
    assert env.target.read_bytes() == v1
    assert env.events.one("restart_failed")["version"] == "1.0.0"  # the good one's restart


async def test_restart_command_that_cannot_start_rolls_back_without_quarantine(
    env: Env,
) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    spec = env.spec(restart_cmd=[str(env.tmp / "no-such-restart")], max_attempts=3)
    assert not await env.app.apply(spec, "2.0.0", pkg, pid)
    failed = env.events.one("update_failed")
    assert failed["reason"] == core.RESTART_NOT_STARTED
    assert "no-such-restart" in failed["detail"]
    assert env.events.one("rolled_back")["reason"] == core.RESTART_NOT_STARTED
    assert "quarantined" not in env.events.names()
    assert env.target.read_bytes() == v1
    assert not env.app.is_quarantined(CHANNEL, "2.0.0")
    ch = env.app.status()["channels"][CHANNEL]
    assert ch["attempts"] == {} and ch["last"]["reason"] == core.RESTART_NOT_STARTED
    # Once the restart command exists, the same version installs.
    restart = env.tmp / "no-such-restart"
    restart.write_text("#!/bin/sh\nexit 0\n")
    restart.chmod(0o755)
    assert await env.app.apply(spec, "2.0.0", pkg, pid)


# ---------------------------------------------------------------------------
# Cancellation (SIGTERM) and recovery
# ---------------------------------------------------------------------------

HANG_ONCE = [
    "/bin/sh",
    "-c",
    "if [ -e once ]; then echo ok; exit 0; fi; touch once; echo $$ > hc.pid; exec sleep 1000",
]


async def _cancel_during_health(env: Env, spec: TargetSpec, pkg: Path, pid: bytes) -> None:
    # The check sleeps for 1000 s: apply returning at all after the cancel means the
    # install stopped without waiting for it (the 2 s bound is not a timed assertion).
    with trio.move_on_after(0.5) as scope:
        await env.app.apply(spec, "2.0.0", pkg, pid)
    assert scope.cancelled_caught
    assert dead_soon(read_pid(env.appdir / "hc.pid"))  # the check was killed


async def test_cancelled_install_is_rolled_back_and_retried_on_start(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    spec = env.spec(health_cmd=HANG_ONCE)
    await _cancel_during_health(env, spec, pkg, pid)
    assert env.target.read_bytes() == pkg.read_bytes()  # swapped, unconfirmed
    pending = env.app.status()["channels"][CHANNEL]["pending"]
    assert pending["version"] == "2.0.0" and pending["attempt"] == 1
    env.events.clear()
    # The rollback happens before the retry: look at the target when it starts.
    seen: list[bytes] = []

    def spy(event: str, fields: dict[str, Any]) -> None:
        if event == "verifying":
            seen.append(env.target.read_bytes())
        env.events(event, fields)

    restarted = Applicator(env.data, env.backups, spy)
    await restarted.recover([spec])
    assert seen == [v1]
    assert env.events.names() == ["rolled_back", "verifying", "applying", "update_complete"]
    assert env.events.one("rolled_back")["reason"] == core.INTERRUPTED
    assert env.events.one("update_complete")["attempts"] == 2  # the interrupted one counted
    assert env.target.read_bytes() == pkg.read_bytes()
    assert restarted.status()["channels"][CHANNEL]["pending"] is None


async def test_interrupted_install_gives_up_when_attempts_are_used(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    spec = env.spec(health_cmd=HANG_ONCE, max_attempts=1)
    await _cancel_during_health(env, spec, pkg, pid)
    env.events.clear()
    restarted = env.new_applicator()
    await restarted.recover([spec])
    assert env.target.read_bytes() == v1
    assert env.events.one("update_failed")["reason"] == core.TOO_MANY_ATTEMPTS
    assert restarted.quarantined(CHANNEL) == ["2.0.0"]


async def test_interrupted_install_waits_for_a_missing_package(env: Env) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")
    spec = env.spec(health_cmd=HANG_ONCE)
    await _cancel_during_health(env, spec, pkg, pid)
    content = pkg.read_bytes()
    pkg.unlink()
    env.events.clear()
    restarted = env.new_applicator()
    await restarted.recover([spec])
    assert env.target.read_bytes() == v1
    assert env.events.one("update_failed")["reason"] == core.PACKAGE_MISSING
    assert restarted.status()["channels"][CHANNEL]["attempts"] == {"2.0.0": 1}
    pkg.write_bytes(content)  # the node fetched it again
    assert await restarted.apply(spec, "2.0.0", pkg, pid)
    assert env.events.one("update_complete")["attempts"] == 2


# ---------------------------------------------------------------------------
# Operator rollback, backups
# ---------------------------------------------------------------------------


async def test_operator_rollback_walks_back_through_backups(env: Env) -> None:
    v1 = env.install_v1()
    spec = env.spec()
    for version in ("2.0.0", "3.0.0"):
        pkg, pid = env.package(version)
        assert await env.app.apply(spec, version, pkg, pid)
    env.events.clear()
    assert await env.app.rollback(spec)
    assert env.target.read_bytes() == app_script("2.0.0")
    assert env.app.installed_version(spec) == "2.0.0"
    rolled = env.events.one("rolled_back")
    assert (rolled["version"], rolled["restored_version"]) == ("3.0.0", "2.0.0")
    assert env.events.one("quarantined")["version"] == "3.0.0"
    assert "update_failed" not in env.events.names()
    assert await env.app.rollback(spec)
    assert env.target.read_bytes() == v1
    assert env.app.installed_version(spec) == "1.0.0"
    assert env.app.quarantined(CHANNEL) == ["3.0.0", "2.0.0"]
    env.events.clear()
    assert not await env.app.rollback(spec)
    assert env.events.one("update_failed")["reason"] == core.NO_BACKUP
    assert env.target.read_bytes() == v1


async def test_a_backup_on_the_same_filesystem_is_the_old_inode_and_outlives_the_swap(
    env: Env,
) -> None:
    """Nothing is copied to back up: the backup is a hard link to the old file, which the
    install renames a new file over (never writing into it)."""
    v1 = env.install_v1()
    old_inode = env.target.stat().st_ino
    pkg, pid = env.package("2.0.0")
    assert await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    (backup,) = env.backups.rglob("*.bak")
    assert backup.stat().st_ino == old_inode and backup.stat().st_nlink == 1
    assert env.target.stat().st_ino != old_inode
    assert backup.read_bytes() == v1 and env.target.read_bytes() == app_script("2.0.0")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o750


@pytest.mark.parametrize("behaviour", ["good", "bad"])
async def test_a_backup_on_another_filesystem_is_copied_and_rolls_back(
    env: Env, behaviour: str
) -> None:
    with small_tmpfs(env.tmp / "mnt", "96m") as mnt:
        env.backups = mnt / "backups"
        env.app = env.new_applicator()
        v1 = env.install_v1()
        pkg, pid = env.package("2.0.0", behaviour)
        assert await env.app.apply(env.spec(), "2.0.0", pkg, pid) == (behaviour == "good")
        if behaviour == "good":
            (backup,) = env.backups.rglob("*.bak")
            assert backup.read_bytes() == v1
            assert stat.S_IMODE(backup.stat().st_mode) == 0o750
            assert env.target.read_bytes() == app_script("2.0.0")
        else:
            assert env.target.read_bytes() == v1
            assert env.events.one("rolled_back")["restored_version"] == "1.0.0"
        assert list(env.backups.rglob("*.staging")) == []


async def test_only_the_last_two_backups_are_kept(env: Env) -> None:
    env.install_v1()
    spec = env.spec()
    for version in ("2.0.0", "3.0.0", "4.0.0"):
        pkg, pid = env.package(version)
        assert await env.app.apply(spec, version, pkg, pid)
    kept = sorted(p.read_bytes() for p in env.backups.rglob("*.bak"))
    assert kept == sorted([app_script("2.0.0"), app_script("3.0.0")])
    entries = env.app.status()["channels"][CHANNEL]["backups"]
    assert [e["version"] for e in entries] == ["2.0.0", "3.0.0"]


async def test_channels_apply_concurrently(env: Env) -> None:
    other_target = env.appdir / "tool"
    other_target.write_bytes(app_script("1.0.0"))
    os.chmod(other_target, 0o755)
    env.install_v1()
    pkg_a, pid_a = env.package("2.0.0")
    pkg_b, pid_b = make_package(env.pkgs, "tool.pkg", app_script("5.0.0"))
    results: dict[str, bool] = {}

    async def run(spec: TargetSpec, version: str, pkg: Path, pid: bytes) -> None:
        results[spec.channel] = await env.app.apply(spec, version, pkg, pid)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, env.spec(), "2.0.0", pkg_a, pid_a)
        nursery.start_soon(run, TargetSpec("tool", other_target), "5.0.0", pkg_b, pid_b)
    assert results == {CHANNEL: True, "tool": True}, env.events.items
    assert other_target.read_bytes() == app_script("5.0.0")


# ---------------------------------------------------------------------------
# State files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "wrong_shape", "directory"])
async def test_corrupt_state_file_is_set_aside_not_fatal(env: Env, corruption: str) -> None:
    env.install_v1()
    pkg, pid = env.package("2.0.0")
    assert await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    path = StateStore(env.data / "apply").path(CHANNEL)
    good = path.read_bytes()
    path.unlink()
    if corruption == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif corruption == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif corruption == "wrong_shape":
        path.write_text(json.dumps({"format": 1, "channel": CHANNEL, "quarantine": "x"}))
    else:
        path.mkdir()  # a directory where a file is expected
    env.events.clear()
    app = env.new_applicator()
    status = app.status()
    assert status["corrupt_state_files"][0]["path"] == str(path)
    assert env.events.one("state_corrupt")["path"] == str(path)
    assert path.with_name(path.name + ".corrupt").exists()
    # The channel starts afresh (the configured version is what is known) and works.
    pkg3, pid3 = env.package("3.0.0")
    assert await app.apply(env.spec(), "3.0.0", pkg3, pid3)
    assert env.new_applicator().installed_version(env.spec()) == "3.0.0"


async def test_unwritable_state_dir_fails_the_update_before_touching_the_target(
    env: Env,
) -> None:
    v1 = env.install_v1()
    env.data.mkdir()
    (env.data / "apply").write_bytes(b"a file where a directory is expected")
    pkg, pid = env.package("2.0.0")
    assert not await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert env.target.read_bytes() == v1
    assert [e["reason"] for e in env.events.of("update_failed")] == ["state_error"]


async def test_channel_names_never_become_paths(env: Env) -> None:
    # One channel rule everywhere: what no announcement could name never reaches a path.
    for bad in ("../../etc/passwd", "bad\nname", "a/../b", "/abs", "x" * 300):
        with pytest.raises(ValueError):
            TargetSpec(bad, env.target)
    spec = TargetSpec("etc/passwd/x.y", env.target)  # a valid channel with slashes
    env.install_v1()
    pkg, pid = env.package("2.0.0")
    assert await env.app.apply(spec, "2.0.0", pkg, pid)
    files = [p for p in env.tmp.rglob("*") if p.is_file()]
    assert all(env.tmp in p.parents for p in files)
    assert all("passwd" not in p.name or p.name.startswith("ch-") for p in files)


async def test_a_symlinked_file_target_is_installed_at_the_file_it_points_to(env: Env) -> None:
    env.install_v1()
    link = env.tmp / "usr-local-bin-app"
    link.symlink_to(env.target)
    pkg, pid = env.package("2.0.0")
    spec = TargetSpec(CHANNEL, link, version="1.0.0")
    assert await env.app.apply(spec, "2.0.0", pkg, pid)
    assert link.is_symlink()  # still a link, not replaced by a plain file
    assert env.target.read_bytes() == pkg.read_bytes()


# ---------------------------------------------------------------------------
# The command runner
# ---------------------------------------------------------------------------


async def test_command_output_is_capped(tmp_path: Path) -> None:
    argv = ["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo; exit 0"]
    res = await run_command(argv, cwd=tmp_path, env={}, deadline=trio.current_time() + 10)
    assert res.ok and len(res.output) == OUTPUT_LIMIT


async def test_stray_children_of_a_health_check_are_killed_when_it_exits(tmp_path: Path) -> None:
    argv = ["/bin/sh", "-c", "sleep 1000 & echo $! > stray.pid; echo done"]
    # The stray child sleeps 1000 s holding the pipe: a run held up by it would end on
    # its deadline, not ok; returning ok means the pipe was not waited on.
    res = await run_command(argv, cwd=tmp_path, env={}, deadline=trio.current_time() + 60)
    assert res.ok and res.output == "done\n"
    assert dead_soon(read_pid(tmp_path / "stray.pid"))


async def test_restart_command_children_survive_and_output_is_kept(tmp_path: Path) -> None:
    argv = ["/bin/sh", "-c", "sleep 1000 & echo $! > svc.pid; echo started"]
    res = await run_command(
        argv, cwd=tmp_path, env={}, deadline=trio.current_time() + 10, keep_children=True
    )
    assert res.ok and res.output == "started\n"
    pid = read_pid(tmp_path / "svc.pid")
    try:
        assert alive(pid)
    finally:
        os.kill(pid, 9)


async def test_missing_program_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    res = await run_command(
        [str(tmp_path / "nope")], cwd=tmp_path, env={}, deadline=trio.current_time() + 10
    )
    assert not res.ok and res.returncode is None and "FileNotFoundError" in res.error


# ---------------------------------------------------------------------------
# Failures before the swap
# ---------------------------------------------------------------------------


async def test_disk_full_fails_the_update_without_touching_or_quarantining(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = env.install_v1()
    pkg, pid = env.package("2.0.0")

    def full(directory: Path, needed: int, margin: int = 0) -> None:
        raise DiskFullError(f"not enough free space in {directory}")

    # The disk layer of the shell: a real full disk cannot be made in a test.
    monkeypatch.setattr(targets, "check_free_space", full)
    assert not await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert env.events.one("update_failed")["reason"] == core.DISK_FULL
    assert env.target.read_bytes() == v1 and env.leftovers() == []
    ch = env.app.status()["channels"][CHANNEL]
    assert ch["quarantined"] == [] and ch["attempts"] == {} and ch["pending"] is None
    monkeypatch.undo()
    assert await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    assert env.events.one("update_complete")["attempts"] == 1  # the failed try did not count


async def test_io_error_before_the_swap_leaves_the_target(env: Env) -> None:
    v1 = env.install_v1()
    env.backups.write_bytes(b"a file where the backup directory should be")
    pkg, pid = env.package("2.0.0")
    assert not await env.app.apply(env.spec(), "2.0.0", pkg, pid)
    failed = env.events.one("update_failed")
    assert failed["reason"] == core.INSTALL_FAILED and str(env.backups) in failed["detail"]
    assert env.target.read_bytes() == v1 and env.leftovers() == []
    assert not env.app.is_quarantined(CHANNEL, "2.0.0")
