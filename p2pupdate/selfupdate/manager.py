"""The node side of self-update: follow the own platform channel, install, switch, re-exec.

:func:`detect_managed_install` tells whether this process runs from a
managed install (``DIR/releases/<version>/...`` beside ``DIR/bin/p2pupdate``);
a node started any other way has self-update off and never touches its own
files. For a managed install, ``p2pupdate node`` makes one
:class:`SelfUpdater`, which

* registers the node in the install (pid, release) and emits what the
  launcher did at boot (``self_update_rolled_back``);
* decides on announcements of its channel (trusted already, strictly newer
  than the running release, not quarantined by any node of the install):
  ``self_update_available``, or ``update_refused`` with the reason;
* once the agent has the package: installs it (in a worker thread, under the
  install lock), arms ``previous``, switches ``current``
  (``self_update_installed``), waits (bounded) until the other nodes of the
  install run it (the installing node goes last), then asks the node to
  re-exec (``self_update_restarting``);
* watches ``current`` (every second, and at once on SIGHUP): when it points
  at another complete release, the node re-execs at its own safe boundary;
  when it cannot be sure (unreadable link, release missing) it does nothing
  and says why;
* after the node is healthy, confirms the boot (``self_update_confirmed``)
  and removes releases older than current and previous.

The re-exec itself (:func:`reexec`) runs after trio has stopped: logs and
files flushed, the listening socket inherited (its number in
``P2PUPDATE_LISTEN_FD``), exec of the stable launcher, which counts the boot
and execs ``current/bin/p2pupdate`` resolved afresh.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trio

import p2pupdate
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import act_decision
from p2pupdate.errors import ApplyError, StateFileError
from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate.release import platform_channel
from p2pupdate.shell.targets import fault

__all__ = [
    "LAUNCHER_ENV",
    "ManagedInstall",
    "SelfUpdateOptions",
    "SelfUpdater",
    "detect_managed_install",
    "off_message",
    "reexec",
]

log = logging.getLogger("p2pupdate.selfupdate")

LAUNCHER_ENV = "P2PUPDATE_LAUNCHER"
Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ManagedInstall:
    """This process runs release ``release`` of the managed install ``layout``."""

    layout: inst.Layout
    release: str


def detect_managed_install(package_dir: Path | None = None) -> ManagedInstall | None:
    """The managed install this p2pupdate runs from, or None (self-update off)."""
    here = (package_dir or Path(p2pupdate.__file__).parent).resolve()
    for parent in here.parents:
        if parent.parent.name == "releases":
            layout = inst.Layout(parent.parent.parent)
            try:
                text = layout.launcher.read_text(encoding="utf-8", errors="replace")[:512]
            except OSError:
                return None
            if inst.LAUNCHER_MARK in text and inst.is_complete(layout, parent.name):
                return ManagedInstall(layout, parent.name)
            return None
    return None


def off_message() -> str:
    where = Path(p2pupdate.__file__).resolve().parent
    return f"off: not a managed install (running from {where})"


@dataclass(frozen=True)
class SelfUpdateOptions:
    track: str = "stable"
    boot_attempts: int = inst.DEFAULT_BOOT_ATTEMPTS
    wait_for_others: float = 60.0  # the installing node waits at most this long
    poll_interval: float = 1.0  # how often `current` is looked at


class SelfUpdater:
    """Self-update of one node running from a managed install."""

    def __init__(
        self,
        install: ManagedInstall,
        options: SelfUpdateOptions,
        *,
        data_dir: Path,
        emit: Emit,
        node_id: bytes = b"",
    ) -> None:
        self.install = install
        self.layout = install.layout
        self.running = install.release
        self.options = options
        self.channel = platform_channel(options.track)
        self.data_dir = data_dir
        self.key = os.environ.get(inst.NODE_KEY_ENV) or inst.node_key(data_dir)
        self.node_id = node_id
        self._emit = emit
        self._swarm: Any = None
        self.restart_requested = trio.Event()
        self.restart_to: str | None = None
        self.reexec_fd: int | None = None
        self.state = "idle"
        self.last_error: str | None = None
        self._going_last = False
        self._check = trio.Event()
        self._said: str | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="p2pupdate-self-"))

    def attach(self, swarm: Any, node_id: bytes) -> None:
        """Give the updater the swarm (to export a downloaded release) and the node id."""
        self._swarm = swarm
        self.node_id = node_id

    # -- deciding -------------------------------------------------------------------
    def handles(self, channel: str) -> bool:
        return channel == self.channel

    def _refusal(self, ann: Announcement) -> str | None:
        decision = act_decision(
            ann,
            node_id=self.node_id,
            installed_version=self.running,
            quarantined=inst.quarantined(self.layout),
        )
        return None if decision.ok else decision.reason

    def on_announcement(self, ann: Announcement) -> None:
        """An announcement of the own channel passed relay: say what will happen."""
        b = ann.body
        reason = self._refusal(ann)
        fields = {"channel": b.channel, "version": b.version, "package_id": b.package_id.hex()}
        if reason is None:
            self._emit("self_update_available", {**fields, "running": self.running})
        elif not (reason == "not_newer" and b.version == self.running):
            self._emit("update_refused", {**fields, "reason": reason})

    async def on_downloaded(self, ann: Announcement) -> None:
        """The release is complete in the store: install, switch, then re-exec (going last)."""
        b = ann.body
        if self._refusal(ann) is not None or self.state != "idle":
            return
        fields = {"channel": b.channel, "version": b.version, "package_id": b.package_id.hex()}
        self.state = "installing"
        try:
            path = await self._swarm.store.export(b.package_id, self._tmp)
            fault("self_after_download")
            installed_now, switched = await trio.to_thread.run_sync(
                self._install_and_switch, path, b.version
            )
        except (ApplyError, OSError, StateFileError) as exc:
            self.state = "idle"
            self.last_error = f"{b.version}: {exc}"
            reason = exc.reason if isinstance(exc, ApplyError) else "install_failed"
            log.error("self-update to %s failed: %s", b.version, exc)
            self._emit("update_failed", {**fields, "reason": reason, "detail": str(exc)})
            return
        self._emit(
            "self_update_installed",
            {
                **fields,
                "release_dir": str(self.layout.release(b.version)),
                "installed_now": installed_now,
                "switched": switched,
            },
        )
        if switched:
            self._going_last = True
            self.state = "waiting_for_others"
            await self._wait_for_others(b.version)
        self._restart(b.version, "installed" if switched else "current changed")

    def _install_and_switch(self, archive: Path, version: str) -> tuple[bool, bool]:
        with inst.install_lock(self.layout):
            manifest, installed_now = inst.install_release(self.layout, archive)
            if manifest.version != version:
                raise ApplyError(
                    "bad_archive", f"announced {version}, the release says {manifest.version}"
                )
            if version in inst.quarantined(self.layout):
                raise ApplyError("quarantined", f"{version} was quarantined meanwhile")
            if inst.read_link(self.layout.current) == version:
                return installed_now, False  # another node of the install switched already
            inst.switch_current(self.layout, version)
            return installed_now, True

    async def _wait_for_others(self, version: str) -> None:
        with trio.move_on_after(self.options.wait_for_others) as scope:
            while True:
                others = {
                    k: n
                    for k, n in inst.registered_nodes(self.layout).items()
                    if k != self.key and n.get("release") != version
                }
                if not others:
                    return
                await trio.sleep(0.2)
        if scope.cancelled_caught:
            log.warning(
                "self-update: other nodes of %s did not move to %s within %g s; going anyway",
                self.layout.root,
                version,
                self.options.wait_for_others,
            )

    def _restart(self, to: str, why: str) -> None:
        if self.restart_requested.is_set():
            return
        self.state = "restarting"
        self.restart_to = to
        self._emit(
            "self_update_restarting",
            {"version": to, "running": self.running, "reason": why, "channel": self.channel},
        )
        self.restart_requested.set()

    # -- watching ---------------------------------------------------------------
    def check_now(self) -> None:
        """SIGHUP: look at ``current`` now."""
        log.info("SIGHUP: checking %s now", self.layout.current)
        self._check.set()

    def _say_once(self, message: str) -> None:
        if message != self._said:
            log.warning("self-update: %s", message)
            self._said = message

    def check_current(self) -> str | None:
        """The release to re-exec into because ``current`` moved, or None (and why, logged)."""
        try:
            name = inst.read_link(self.layout.current)
        except StateFileError as exc:
            self._say_once(f"cannot be sure what to run, doing nothing: {exc}")
            return None
        if name is None:
            self._say_once(f"cannot be sure: {self.layout.current} is missing; doing nothing")
            return None
        if name == self.running:
            self._said = None
            return None
        if not inst.is_complete(self.layout, name):
            self._say_once(f"current points at {name}, not a complete release; doing nothing")
            return None
        if name in inst.quarantined(self.layout):
            self._say_once(f"current points at quarantined {name}; doing nothing")
            return None
        return name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, report what the launcher did, then watch ``current`` until cancelled."""
        await trio.to_thread.run_sync(self._start_sync)
        task_status.started()
        while True:
            with trio.move_on_after(self.options.poll_interval):
                await self._check.wait()
            self._check = trio.Event()
            name = self.check_current()
            if name is not None and not self._going_last:
                self._restart(name, "current changed")

    def _start_sync(self) -> None:
        inst.register_node(
            self.layout,
            self.key,
            pid=os.getpid(),
            release=self.running,
            data_dir=str(self.data_dir),
        )
        record = inst.read_boot_record(self.layout, self.key)
        notice = record.pop("rolled_back", None)
        if isinstance(notice, dict):
            inst.write_boot_record(self.layout, self.key, record)
            bad, restored = notice.get("version"), notice.get("restored")
            fields = {"channel": self.channel, "version": bad, "reason": "too_many_attempts"}
            if restored is None:
                log.error(
                    "release %s failed its boots and is quarantined; there is nothing to roll "
                    "back to (no good previous release), so it keeps running as it is",
                    bad,
                )
                self._emit("quarantined", {**fields, "detail": "nothing to roll back to"})
            else:
                self._emit("self_update_rolled_back", {**fields, "restored_version": restored})
                self._emit("quarantined", fields)

    async def confirm_healthy(self) -> None:
        """The node is healthy: confirm this boot, then prune old releases."""
        counted = await trio.to_thread.run_sync(
            inst.confirm_boot, self.layout, self.key, self.running, self.options.boot_attempts
        )
        if counted:
            self._emit("self_update_confirmed", {"version": self.running, "channel": self.channel})
            inst.log_history(self.layout, f"confirmed {self.running} node={self.key}")
        busy = {str(n.get("release")) for n in inst.registered_nodes(self.layout).values()}
        removed = await trio.to_thread.run_sync(
            inst.prune_releases, self.layout, busy | {self.running}
        )
        if removed:
            log.info("self-update: removed old releases %s", ", ".join(removed))

    def stopped(self) -> None:
        """The node stops for good (not a re-exec): drop its registration."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self.reexec_fd is None:
            inst.unregister_node(self.layout, self.key)

    # -- status -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        try:
            previous = inst.read_link(self.layout.previous)
            current = inst.read_link(self.layout.current)
        except StateFileError as exc:
            previous = current = f"unreadable: {exc}"
        return {
            "managed": True,
            "install_dir": str(self.layout.root),
            "channel": self.channel,
            "running": self.running,
            "release_dir": str(self.layout.release(self.running)),
            "current": current,
            "previous": previous,
            "quarantined": inst.quarantined(self.layout),
            "state": self.state,
            "last_error": self.last_error,
        }

    def status_line(self) -> str:
        s = self.status()
        q = ", ".join(s["quarantined"]) or "none"
        return (
            f"running {s['running']} from {s['release_dir']}; previous {s['previous'] or 'none'}"
            f"; quarantined {q}; channel {s['channel']}; {s['state']}"
        )


def reexec(launcher: Path, args: Sequence[str], listen_fd: int | None, listen_env: str) -> NoReturn:
    """Replace this process by the launcher with the same arguments (flushes first).

    The listening socket ``listen_fd`` is made inheritable and its number put
    in ``listen_env``. Raises OSError when exec fails (the caller exits 3).
    """
    logging.shutdown()  # os.execv skips `finally` and atexit: flush everything now
    sys.stdout.flush()
    sys.stderr.flush()
    if listen_fd is not None:
        os.set_inheritable(listen_fd, True)
        os.environ[listen_env] = str(listen_fd)
    os.execv(launcher, [str(launcher), *args])
