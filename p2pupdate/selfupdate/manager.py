"""The node side of self-update: follow the own platform channel, install, switch, re-exec.

:func:`detect_managed_install` tells whether this process runs from a
managed install (``DIR/releases/<version>/...`` beside ``DIR/bin/p2pupdate``);
a node started any other way has self-update off and never touches its own
files. For a managed install, ``p2pupdate node`` makes one
:class:`SelfUpdater`, which

* registers the node in the install (pid, release) and says once for every
  release it was rolled back from, by its own launcher or by another node
  (``self_update_rolled_back`` and ``quarantined``);
* decides on announcements of its channel (trusted already, strictly newer
  than the running release, not quarantined by any node of the install):
  ``self_update_available``, or ``update_refused`` with the reason;
* once the agent has the package: installs it (in a worker thread, under the
  install lock), arms ``previous``, switches ``current``
  (``self_update_installed``), then waits until another node of the install
  was seen healthy on it and the others moved (the installing node goes
  last), and asks the node to re-exec (``self_update_restarting``); when the
  others die on it instead, it quarantines the release and switches
  ``current`` back without ever running it (``self_update_rolled_back``,
  ``quarantined``), see :func:`p2pupdate.core.selfupdate.installer_decision`;
* watches ``current`` (every second, and at once on SIGHUP): when it points
  at another complete release, the node re-execs at its own safe boundary;
  when it cannot be sure (unreadable link, release missing) it does nothing
  and says why;
* after the node is healthy, confirms the boot (``self_update_confirmed``)
  and, when it runs the release ``current`` names, removes the releases the
  install does not keep (:func:`p2pupdate.core.selfupdate.retention`).

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
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import trio

import p2pupdate
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import act_decision
from p2pupdate.core.selfupdate import (
    InstallerAction,
    InstallerDecision,
    OtherNode,
    installer_decision,
    rollback_notices,
)
from p2pupdate.errors import ApplyError, StateFileError
from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate.release import platform_channel
from p2pupdate.shell.faults import fault
from p2pupdate.shell.tmpdirs import node_tmp_dir

__all__ = [
    "LAUNCHER_ENV",
    "ManagedInstall",
    "SelfUpdateOptions",
    "SelfUpdater",
    "detect_managed_install",
    "install_and_switch",
    "off_message",
    "other_nodes",
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
    others_interval: float = 0.05  # how often the installing node looks at the others


class SelfUpdater:
    """Self-update of one node running from a managed install.

    Size: kept as one class over 300 lines (about 360) on purpose: its methods are the
    steps of one sequence (announcement, download, install, switch, wait for the others,
    re-exec, confirm, report a rollback) sharing one state (``state``, ``restart_to``,
    the registration) that a split would have to pass around; the decisions themselves
    are already apart in :mod:`p2pupdate.core.selfupdate`, the file work in
    :mod:`p2pupdate.selfupdate.install`, and the two blocking steps that need none of
    its state (:func:`install_and_switch`, :func:`other_nodes`) are functions below.
    """

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
        self._reported: set[str] = set()
        # Under the data dir, which the next start cleans: a node killed here leaves
        # nothing behind in the system's temp dir.
        self._tmp = Path(tempfile.mkdtemp(prefix="self-", dir=node_tmp_dir(data_dir)))

    def attach(
        self,
        swarm: Any,
        node_id: bytes,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        """Give the updater the swarm (to export a downloaded release), the node id and,
        once the node's events file is open, where its events go from now on."""
        self._swarm = swarm
        self.node_id = node_id
        if emit is not None:
            self._emit = emit

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
        elif b.version != self.running:  # the running release itself: nothing to say
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
            installed_now, others = await trio.to_thread.run_sync(
                install_and_switch, self.layout, self.key, path, b.version, b.package_id
            )
        except (ApplyError, OSError, StateFileError) as exc:
            self.state = "idle"
            self.last_error = f"{b.version}: {exc}"
            reason = exc.reason if isinstance(exc, ApplyError) else "install_failed"
            log.error("self-update to %s failed: %s", b.version, exc)
            self._emit("update_failed", {**fields, "reason": reason, "detail": str(exc)})
            return
        switched = others is not None
        self._emit(
            "self_update_installed",
            {
                **fields,
                "release_dir": str(self.layout.release(b.version)),
                "installed_now": installed_now,
                "switched": switched,
            },
        )
        if others is not None:
            self._going_last = True
            self.state = "waiting_for_others"
            decision = await self._wait_for_others(b.version, others)
            if decision.action is not InstallerAction.GO:
                await self._back_off(b.version, decision, fields)
                return
        self._restart(b.version, "installed" if switched else "current changed")

    async def _wait_for_others(self, version: str, at_switch: set[str]) -> InstallerDecision:
        """Until another node was seen healthy on ``version`` (and the others moved), or
        the others failed on it; see :func:`installer_decision`."""
        started = trio.current_time()
        said = ""
        while True:
            others, bad = await trio.to_thread.run_sync(
                other_nodes, self.layout, self.key, version, at_switch
            )
            decision = installer_decision(
                others,
                version=version,
                quarantined=bad,
                now=trio.current_time(),
                started=started,
                wait=self.options.wait_for_others,
            )
            if decision.action is not InstallerAction.WAIT:
                states = ", ".join(f"{k}={s.value}" for k, s in decision.states.items())
                log.info(
                    "self-update to %s: %s (%s) after %.1f s; others: %s",
                    version,
                    decision.action.value,
                    decision.reason,
                    trio.current_time() - started,
                    states or "none",
                )
                return decision
            if decision.reason != said:
                log.info("self-update to %s: waiting (%s)", version, decision.reason)
                said = decision.reason
            await trio.sleep(self.options.others_interval)

    async def _back_off(
        self, version: str, decision: InstallerDecision, fields: dict[str, Any]
    ) -> None:
        """Take the install off ``version`` without ever running it; stay on the running one."""
        quarantine = decision.action is InstallerAction.ROLL_BACK
        try:
            restored = await trio.to_thread.run_sync(
                partial(
                    inst.roll_back_install,
                    self.layout,
                    version,
                    self.key,
                    quarantine_reason=decision.reason if quarantine else None,
                )
            )
        except (OSError, StateFileError) as exc:
            restored = None
            log.error("self-update: could not switch %s back: %s", self.layout.current, exc)
        self._going_last = False
        self.state = "idle"
        failed = sorted(k for k, s in decision.states.items() if s.value == "failed")
        if quarantine:
            self.last_error = f"{version}: {decision.reason} ({', '.join(failed) or 'none'})"
            log.error(
                "self-update: release %s %s (nodes %s); quarantined, current -> %s; this node "
                "never ran it",
                version,
                "failed on the other nodes" if failed else "was quarantined",
                ", ".join(failed) or "-",
                restored,
            )
            info = {"reason": decision.reason, "booted": False, "failed_nodes": failed}
            self._emit("self_update_rolled_back", {**fields, **info, "restored_version": restored})
            self._emit("quarantined", {**fields, "reason": decision.reason})
            self._reported.add(version)
        else:
            self.last_error = f"{version}: {decision.reason}"
            log.warning(
                "self-update: no other node ran %s healthily within %g s; current -> %s",
                version,
                self.options.wait_for_others,
                restored,
            )
            self._emit(
                "update_failed",
                {**fields, "reason": decision.reason, "detail": "not seen healthy on another node"},
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
            # While this node installs, ``current`` may be its own switch (the install
            # thread has not returned yet): on_downloaded decides then, not this watch.
            if name is not None and not self._going_last and self.state != "installing":
                self._restart(name, "current changed")

    def _start_sync(self) -> None:
        inst.register_node(
            self.layout,
            self.key,
            pid=os.getpid(),
            release=self.running,
            data_dir=str(self.data_dir),
        )
        self._report_rollbacks()

    def _report_rollbacks(self) -> None:
        """Say once for every release this node was rolled back from: by its own launcher
        past the bound, by another node's launcher, or by the installing node."""
        record = inst.read_boot_record(self.layout, self.key)
        notice = record.pop("rolled_back", None)
        reasons = inst.quarantine_reasons(self.layout)
        versions = rollback_notices(record["releases"], self.running, reasons)
        if isinstance(notice, dict) and notice.get("restored") is None:
            bad = notice.get("version")
            log.error(
                "release %s failed its boots and is quarantined; there is nothing to roll "
                "back to (no good previous release), so it keeps running as it is",
                bad,
            )
            fields = {"channel": self.channel, "version": bad, "reason": "too_many_attempts"}
            self._emit("quarantined", {**fields, "detail": "nothing to roll back to"})
        for bad in versions:
            entry = record["releases"][bad]
            entry["reported"] = True
            if bad in self._reported:
                continue
            reason = reasons.get(bad) or "too_many_attempts"
            fields = {"channel": self.channel, "version": bad, "reason": reason}
            self._emit(
                "self_update_rolled_back",
                {
                    **fields,
                    "restored_version": self.running,
                    "booted": True,
                    "attempts": entry.get("attempts"),
                },
            )
            self._emit("quarantined", fields)
            self._reported.add(bad)
        if notice is not None or versions:
            inst.write_boot_record(self.layout, self.key, record)

    async def confirm_healthy(self) -> None:
        """The node is healthy: confirm this boot, then prune old releases."""
        counted = await trio.to_thread.run_sync(
            inst.confirm_boot, self.layout, self.key, self.running, self.options.boot_attempts
        )
        if counted:
            self._emit("self_update_confirmed", {"version": self.running, "channel": self.channel})
            inst.log_history(self.layout, f"confirmed {self.running} node={self.key}")
        try:
            current = inst.read_link(self.layout.current)
        except StateFileError:
            current = None
        if current != self.running:
            return  # only a node that runs what `current` names prunes (never mid-update)
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


def install_and_switch(
    layout: inst.Layout, key: str, archive: Path, version: str, package_id: bytes
) -> tuple[bool, set[str] | None]:
    """Install the release in ``archive`` and switch ``current`` to it, under the install
    lock (blocking): (installed now, the other live nodes when ``current`` was switched,
    or None when another node of the install had switched it already)."""
    with inst.install_lock(layout):
        # The export was verified in the cache; the unpack hashes what it reads again, so a
        # file changed on disk since is refused (hash_mismatch), never installed.
        manifest, installed_now = inst.install_release(layout, archive, package_id=package_id)
        if manifest.version != version:
            raise ApplyError(
                "bad_archive", f"announced {version}, the release says {manifest.version}"
            )
        if version in inst.quarantined(layout):
            raise ApplyError("quarantined", f"{version} was quarantined meanwhile")
        if inst.read_link(layout.current) == version:
            return installed_now, None  # another node of the install switched already
        others = set(inst.registered_nodes(layout)) - {key}
        inst.switch_current(layout, version)
        return installed_now, others


def other_nodes(
    layout: inst.Layout, key: str, version: str, at_switch: set[str]
) -> tuple[list[OtherNode], bool]:
    """What the install's files say of the nodes other than ``key`` (alive at the switch,
    or that booted ``version`` since), and whether ``version`` is quarantined (blocking)."""
    regs = inst.node_registrations(layout)
    records = inst.boot_records(layout)
    keys = set(at_switch)
    for other, record in records.items():
        entry = record["releases"].get(version)
        if isinstance(entry, dict) and entry.get("attempts", 0):
            keys.add(other)
    keys.discard(key)
    out = []
    for other in sorted(keys):
        entry = records.get(other, {"releases": {}})["releases"].get(version)
        entry = entry if isinstance(entry, dict) else {}
        attempts = entry.get("attempts", 0)
        reg = regs.get(other, {})
        release = reg.get("release")
        out.append(
            OtherNode(
                key=other,
                attempts=attempts if isinstance(attempts, int) else 0,
                confirmed=bool(entry.get("confirmed", False)),
                alive=bool(reg.get("alive", False)),
                release=release if isinstance(release, str) else None,
            )
        )
    return out, version in inst.quarantined(layout)


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
