"""The applicator: turns a verified package into the running program, or undoes it.

For each target (a file, or a directory made live through a symlink) it
verifies the package hash, persists a pending record, backs the current
version up, swaps the new one in atomically, optionally restarts the
service, health-checks it inside a confirmation window, and then either
commits the new version or rolls back to the last good one and quarantines
the bad version. On start, :meth:`Applicator.recover` rolls back an install
that a crash or SIGTERM left unconfirmed and tries it again, counting one
attempt.

What to do is decided by :mod:`p2pupdate.core.apply` (the upgrade gate, the
attempt/confirmation state machine, the recovery decision); the file
operations are in :mod:`p2pupdate.shell.install.targets`, the processes in
:mod:`p2pupdate.shell.install.healthcheck`, the persisted state in
:mod:`p2pupdate.shell.install.applystate`. docs/applying.md describes the sequence for
operators. This module does not parse command lines or talk to peers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from p2pupdate.core import apply as core
from p2pupdate.core.policy import install_decision
from p2pupdate.errors import ApplyError, DiskFullError, StateFileError
from p2pupdate.shell.faults import fault
from p2pupdate.shell.install import targets as ops
from p2pupdate.shell.install.applystate import (
    BackupEntry,
    ChannelState,
    LastResult,
    Pending,
    QuarantineEntry,
    StateStore,
    channel_file_name,
)
from p2pupdate.shell.install.healthcheck import (
    CommandResult,
    Health,
    health_check,
    run_target_command,
)
from p2pupdate.shell.install.targets import TargetSpec

__all__ = ["KEEP_BACKUPS", "Applicator", "Emit", "TargetSpec"]

log = logging.getLogger("p2pupdate.applicator")

# The issue asks for the last two backups per channel: one to roll back to,
# one more for an operator who rolls back twice.
KEEP_BACKUPS = 2

Emit = Callable[[str, dict[str, Any]], None]


class Applicator:
    """Installs packages into targets; see the module docstring.

    ``emit(event, fields)`` receives the docs/operations.md events (the node adds
    ``t`` and ``node``). One install per channel runs at a time.
    """

    def __init__(
        self,
        data_dir: Path,
        backup_dir: Path,
        emit: Emit,
        max_package_size: int = 4 * 1024**3,
    ) -> None:
        self._store = StateStore(data_dir / "apply")
        self._backup_dir = backup_dir
        self._emit_fn = emit
        self._max_size = max_package_size
        self._locks: dict[str, trio.Lock] = {}
        self._reported_corrupt = 0

    # ------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------

    def installed_version(self, target: TargetSpec) -> str | None:
        """The version p2pupdate installed, else the configured one, else None."""
        return self._state(target.channel).installed_version or target.version

    def quarantined(self, channel: str) -> list[str]:
        """Quarantined versions of ``channel``, oldest first."""
        return self._state(channel).quarantined_versions()

    def is_quarantined(self, channel: str, version: str) -> bool:
        """Whether ``version`` (build metadata ignored) is quarantined on ``channel``."""
        return core.version_in(version, self.quarantined(channel))

    def quarantine_clear(self, channel: str, version: str) -> bool:
        """Lift the quarantine of ``version``; False if it was not quarantined."""
        st = self._state(channel)
        keep = [q for q in st.quarantine if not core.version_in(q.version, [version])]
        if len(keep) == len(st.quarantine):
            return False
        st.quarantine = keep
        self._store.save(st)
        self._emit("quarantine_cleared", channel=channel, version=version)
        return True

    @property
    def max_size(self) -> int:
        """The largest package this applicator installs (``max_package_size``)."""
        return self._max_size

    def has_room(self, target: TargetSpec, size: int) -> bool:
        """Whether the free-space checks of installing ``size`` bytes into ``target``
        would pass now (cheap: a statvfs or two). The agent polls it while an install
        that found the disk full waits to be tried again."""
        try:
            target = ops.resolved_target(target)
            checks = [(target.path.parent, size)]
            if not target.is_dir and target.path.is_file():
                backup_dir = self._channel_backup_dir(target.channel)
                checks.append((backup_dir, target.path.stat().st_size))
            for directory, needed in checks:
                while not directory.exists() and directory != directory.parent:
                    directory = directory.parent  # made at install time
                ops.check_free_space(directory, needed)
        except (OSError, DiskFullError, ApplyError):
            return False
        return True

    def status(self, targets: Sequence[TargetSpec] = ()) -> dict[str, Any]:
        """JSON-able state of every channel (and of the given targets)."""
        channels: dict[str, Any] = {}
        by_channel = {t.channel: t for t in targets}
        for channel in sorted(set(self._store.channels()) | set(by_channel)):
            st = self._state(channel)
            spec = by_channel.get(channel)
            installed = st.installed_version or (spec.version if spec else None)
            channels[channel] = {
                "installed_version": installed,
                "installed_package_id": st.installed_package_id,
                "quarantined": [asdict(q) for q in st.quarantine],
                "attempts": dict(st.attempts),
                "backups": [asdict(b) for b in st.backups],
                "pending": asdict(st.pending) if st.pending else None,
                "last": asdict(st.last) if st.last else None,
            }
            if spec is not None:
                channels[channel]["target"] = str(spec.path) + ("/" if spec.is_dir else "")
                channels[channel]["auto_apply"] = spec.auto_apply
        return {
            "channels": channels,
            "corrupt_state_files": [{"path": str(p), "detail": d} for p, d in self._store.corrupt],
        }

    # ------------------------------------------------------------------
    # Actions
    # ------------------------------------------------------------------

    async def recover(self, targets: Sequence[TargetSpec]) -> None:
        """On start: roll back every unconfirmed install, then retry it (one attempt counted)."""
        targets = [ops.resolved_target(t) for t in targets]
        by_channel = {t.channel: t for t in targets}
        for spec in targets:
            ops.cleanup_leftovers(spec.path)
        for path in ops.cleanup_backup_leftovers(self._backup_dir):
            log.info("removed %s, left by an interrupted backup", path)
        for channel in sorted(set(self._store.channels()) | set(by_channel)):
            st = self._state(channel)
            if st.pending is None:
                continue
            spec = by_channel.get(channel) or TargetSpec(
                channel, Path(st.pending.target), is_dir=st.pending.is_dir
            )
            async with self._lock(channel):
                try:
                    await self._recover_pending(spec, st, retry=True)
                except StateFileError as exc:
                    self._state_error(spec, st.pending.version if st.pending else None, exc)

    async def apply(
        self,
        target: TargetSpec,
        version: str,
        package: Path,
        package_id: bytes,
        *,
        explicit_rollback: bool = False,
        min_version: str | None = None,
    ) -> bool:
        """Install ``package`` as ``version`` of ``target``. True if installed and healthy.

        Refusals, failures and rollbacks are reported as events and in
        :meth:`status`, not raised. Cancellation (SIGTERM of the node) stops
        at once and leaves a pending record for :meth:`recover`.
        """
        target = ops.resolved_target(target)
        async with self._lock(target.channel):
            st = self._state(target.channel)
            try:
                if st.pending is not None:
                    await self._recover_pending(target, st, retry=False)
                return await self._apply_locked(
                    target, version, package, package_id, explicit_rollback, min_version
                )
            except StateFileError as exc:
                # The state directory cannot be written: nothing is touched
                # before the pending record is durable, so the target is intact
                # or (past the swap) rolled back at the next start.
                self._state_error(target, version, exc, package_id=package_id.hex())
                return False

    async def rollback(self, target: TargetSpec) -> bool:
        """Operator rollback: restore the newest backup, quarantine the current version."""
        target = ops.resolved_target(target)
        async with self._lock(target.channel):
            try:
                return await self._rollback_locked(target)
            except StateFileError as exc:
                self._state_error(target, self.installed_version(target), exc)
                return False

    async def _rollback_locked(self, target: TargetSpec) -> bool:
        st = self._state(target.channel)
        if st.pending is not None:
            await self._recover_pending(target, st, retry=False)
        current = self.installed_version(target)
        base = {"channel": target.channel, "version": current}
        if not st.backups:
            self._set_last(st, "failed", current, core.NO_BACKUP, "nothing to roll back to")
            self._emit("update_failed", **base, reason=core.NO_BACKUP)
            return False
        entry = st.backups[-1]
        live = ops.read_live_release(target.path) if target.is_dir else None
        st.pending = Pending(
            kind="operator_rollback",
            phase="rolling_back",
            version=current or "",
            package_id=st.installed_package_id or "",
            package="",
            target=str(target.path),
            is_dir=target.is_dir,
            had_previous=True,
            previous_version=entry.version,
            backup=entry.path,
            release=str(live) if live else None,
            adopt=False,
            attempt=0,
            started=time.time(),
            reason=core.OPERATOR_ROLLBACK,
        )
        self._store.save(st)
        try:
            await self._restore(target, st.pending)
        except (OSError, ApplyError) as exc:
            self._rollback_failed(target, st, "operator rollback requested", exc)
            return False
        await self._restart_after_rollback(target, entry.version)
        self._finish_rollback(target, st, core.OPERATOR_ROLLBACK, quarantine=current)
        return True

    # ------------------------------------------------------------------
    # Install
    # ------------------------------------------------------------------

    async def _apply_locked(
        self,
        target: TargetSpec,
        version: str,
        package: Path,
        package_id: bytes,
        explicit: bool,
        min_version: str | None,
    ) -> bool:
        st = self._state(target.channel)
        base = {"channel": target.channel, "version": version, "package_id": package_id.hex()}
        try:
            size = os.stat(package).st_size  # one stat: not worth a thread
        except OSError as exc:
            self._set_last(st, "failed", version, core.PACKAGE_MISSING, str(exc))
            self._emit("update_failed", **base, reason=core.PACKAGE_MISSING, detail=str(exc))
            return False
        # The act gate again, under the channel's lock: what the agent decided may have
        # changed meanwhile (another install, a quarantine, an operator's rollback).
        decision = install_decision(
            version,
            size=size,
            installed_version=self.installed_version(target),
            quarantined=st.quarantined_versions(),
            max_size=self._max_size,
            min_version=min_version,
            explicit_rollback=explicit,
        )
        if not decision.ok:
            return self._refuse(st, base, decision.reason, decision.detail)
        # The package was verified when its download finished; it is hashed once more,
        # exactly once, as it is staged (file) or unpacked (directory): the bytes hashed are
        # the bytes installed. A mismatch undoes the partial work and refuses (hash_mismatch).
        self._emit("verifying", **base)
        old_version = self.installed_version(target)
        self._emit("applying", **base, old_version=old_version)
        machine = core.ConfirmMachine(
            attempts_done=st.attempts.get(version, 0),
            max_attempts=target.max_attempts,
            window=target.confirm_window,
            has_restart=bool(target.restart_cmd),
            health_timeout=target.health_timeout,
        )
        action = machine.start(trio.current_time())
        in_place = False
        health = Health(False, "", "", "")
        restart_detail = ""
        while True:
            match action:
                case core.PersistAttempt(attempt=n):
                    if in_place:
                        assert st.pending is not None
                        st.attempts[version] = n
                        st.pending.attempt = n
                        self._store.save(st)
                    else:
                        refused = await self._put_in_place(
                            target, st, base, version, package, package_id, n, explicit
                        )
                        if refused is not None:
                            return refused
                        in_place = True
                    action = machine.on_installed(trio.current_time())
                case core.RunRestart(timeout=timeout):
                    res = await self._run(target, target.restart_cmd or [], version, timeout)
                    fault("after_restart")
                    restart_detail = res.describe()
                    action = machine.on_restart_result(
                        res.ok, trio.current_time(), started=not res.error
                    )
                case core.RunHealthCheck(timeout=timeout):
                    health = await self._health_check(target, version, timeout)
                    action = machine.on_health_result(
                        health.ok, trio.current_time(), health.reason or core.HEALTH_CHECK_FAILED
                    )
                case core.WaitUntil(deadline=deadline):
                    await trio.sleep_until(deadline)
                    action = machine.on_timer(trio.current_time())
                case core.Confirmed():
                    fault("after_health")
                    self._commit(target, st, version, package_id)
                    fault("after_commit")
                    self._prune_backups(target, st)
                    self._emit(
                        "update_complete",
                        **base,
                        old_version=old_version,
                        new_version=version,
                        health_check=health.check,
                        health_output=health.output,
                        attempts=machine.attempts_done,
                    )
                    return True
                case core.GiveUp(reason=reason, quarantine=quarantine):
                    if not in_place:  # the bound was used up before this call
                        self._quarantine(st, version, reason)
                        st.attempts.pop(version, None)
                        self._set_last(st, "failed", version, reason, "")
                        self._emit("update_failed", **base, reason=reason)
                        self._emit("quarantined", **base, reason=reason)
                        return False
                    if machine.last_failure == core.RESTART_NOT_STARTED:
                        detail = restart_detail
                    elif machine.last_failure == core.RESTART_FAILED:
                        detail = ""
                    else:
                        detail = health.output
                    await self._give_up(target, st, reason, detail, quarantine=quarantine)
                    return False
                case _:  # pragma: no cover - ConfirmAction is closed
                    raise ApplyError("illegal_transition", repr(action))

    async def _put_in_place(
        self,
        target: TargetSpec,
        st: ChannelState,
        base: dict[str, Any],
        version: str,
        package: Path,
        package_id: bytes,
        attempt: int,
        explicit: bool,
    ) -> bool | None:
        """Persist the pending record, back up, swap. None when done; else apply's result."""
        path = target.path
        plan = ops.plan_install(
            path,
            target.is_dir,
            version,
            self.installed_version(target),
            self._channel_backup_dir(target.channel),
        )
        st.attempts[version] = attempt
        st.pending = Pending(
            kind="install",
            phase="installing",
            version=version,
            package_id=package_id.hex(),
            package=str(package),
            target=str(path),
            is_dir=target.is_dir,
            had_previous=plan.had_previous,
            previous_version=self.installed_version(target),
            backup=plan.backup,
            release=plan.release,
            adopt=plan.adopt,
            attempt=attempt,
            started=time.time(),
            explicit=explicit,
        )
        self._store.save(st)
        fault("after_pending")
        try:
            if target.is_dir:
                await self._swap_dir(target, st.pending, package, package_id)
            else:
                await self._swap_file(target, st.pending, package, package_id)
        except (OSError, DiskFullError, ApplyError) as exc:
            # Nothing is live yet (every step before the swap leaves the target
            # as it was); undo the partial work and report.
            reason = exc.reason if isinstance(exc, ApplyError) else core.INSTALL_FAILED
            # The code goes in ``reason``; ``detail`` is the rest (not the code again).
            detail = exc.detail if isinstance(exc, ApplyError) else str(exc)
            if isinstance(exc, DiskFullError):
                reason = core.DISK_FULL
            try:
                await self._restore(target, st.pending)
            except (OSError, ApplyError) as restore_exc:
                self._rollback_failed(target, st, f"{reason}: {exc}", restore_exc)
                return False
            self._discard(target, st.pending)
            st.pending = None
            st.attempts[version] = attempt - 1
            if not st.attempts[version]:
                del st.attempts[version]
            if reason == core.BAD_ARCHIVE:
                self._quarantine(st, version, reason)
                self._store.save(st)
                self._refuse(st, base, reason, detail)
                self._emit("quarantined", **base, reason=reason)
                return False
            if reason == core.HASH_MISMATCH:
                return self._refuse(st, base, reason, detail)
            self._set_last(st, "failed", version, reason, detail)
            self._emit("update_failed", **base, reason=reason, detail=detail)
            return False
        return None

    async def _swap_file(
        self, target: TargetSpec, p: Pending, package: Path, package_id: bytes
    ) -> None:
        path = target.path
        mode, owner = ops.prepare_file_install(path, package, p.backup)
        if p.backup is not None:
            await trio.to_thread.run_sync(
                ops.backup_file, path, Path(p.backup), trio.from_thread.check_cancelled
            )
            fault("after_backup")
        staging, digest = await trio.to_thread.run_sync(
            lambda: ops.copy_to_staging(
                package,
                path,
                mode,
                owner=owner,
                check=trio.from_thread.check_cancelled,
                fault_mid="mid_stage",
            )
        )
        if digest != package_id:
            staging.unlink(missing_ok=True)
            raise ApplyError(core.HASH_MISMATCH, "package changed while it was copied")
        fault("after_stage")
        ops.install_staged(staging, path)
        fault("after_swap")

    async def _swap_dir(
        self, target: TargetSpec, p: Pending, package: Path, package_id: bytes
    ) -> None:
        path = target.path
        assert p.release is not None
        release = Path(p.release)
        adopt_to = Path(p.backup) if p.adopt and p.backup else None
        ops.prepare_releases(path, package, release.parent, adopt_to)
        await trio.to_thread.run_sync(
            lambda: ops.extract_release(
                package,
                release,
                self._max_size,
                check=trio.from_thread.check_cancelled,
                package_id=package_id,  # what is unpacked is hashed as it is read
            )
        )
        fault("after_extract")
        ops.make_symlink_live(path, release)
        fault("after_switch")

    # ------------------------------------------------------------------
    # Health checks and restarts
    # ------------------------------------------------------------------

    async def _run(
        self, target: TargetSpec, argv: Sequence[str], version: str | None, seconds: float
    ) -> CommandResult:
        """Run a restart command for ``target`` (its background children may stay)."""
        return await run_target_command(
            argv,
            path=target.path,
            is_dir=target.is_dir,
            env=ops.command_env(target, version),
            seconds=seconds,
            keep_children=True,
        )

    async def _health_check(self, target: TargetSpec, version: str, seconds: float) -> Health:
        return await health_check(
            target.health_cmd,
            path=target.path,
            is_dir=target.is_dir,
            env=ops.command_env(target, version),
            seconds=seconds,
        )

    async def _restart_after_rollback(self, target: TargetSpec, version: str | None) -> None:
        if target.restart_cmd:
            res = await self._run(target, target.restart_cmd, version, target.health_timeout)
            if not res.ok:
                self._emit(
                    "restart_failed",
                    channel=target.channel,
                    version=version,
                    detail=res.describe(),
                    output=res.output,
                )

    # ------------------------------------------------------------------
    # Commit, give up, roll back
    # ------------------------------------------------------------------

    def _commit(self, target: TargetSpec, st: ChannelState, version: str, pid: bytes) -> None:
        p = st.pending
        assert p is not None
        if p.backup is not None:
            st.backups.append(
                BackupEntry(p.previous_version, p.backup, st.installed_package_id, time.time())
            )
        st.installed_version = version
        st.installed_package_id = pid.hex()
        st.attempts.pop(version, None)
        st.pending = None
        st.last = LastResult("installed", version, None, time.time())
        self._store.save(st)

    async def _give_up(
        self,
        target: TargetSpec,
        st: ChannelState,
        reason: str,
        detail: str,
        *,
        quarantine: bool = True,
    ) -> None:
        p = st.pending
        assert p is not None
        p.phase = "rolling_back"
        p.reason = reason
        p.detail = detail
        self._store.save(st)
        fault("before_restore")
        try:
            await self._restore(target, p)
        except (OSError, ApplyError) as exc:
            self._rollback_failed(target, st, f"{reason}: {detail}", exc)
            return
        await self._restart_after_rollback(target, p.previous_version)
        self._finish_rollback(
            target, st, reason, quarantine=p.version if quarantine else None, detail=detail
        )

    def _finish_rollback(
        self,
        target: TargetSpec,
        st: ChannelState,
        reason: str,
        *,
        quarantine: str | None,
        detail: str = "",
    ) -> None:
        """Record a completed rollback: state first, then events, then cleanup."""
        p = st.pending
        assert p is not None
        base = {"channel": target.channel, "version": p.version, "package_id": p.package_id}
        if p.kind == "operator_rollback":
            entry = next((b for b in st.backups if b.path == p.backup), None)
            st.installed_version = p.previous_version
            st.installed_package_id = entry.package_id if entry else None
            if entry is not None:
                st.backups.remove(entry)
        if quarantine:
            self._quarantine(st, quarantine, reason)
        st.attempts.pop(p.version, None)
        st.pending = None
        self._set_last(st, "rolled_back", p.version, reason, detail)
        self._discard(target, p)
        if p.kind == "install":
            self._emit("update_failed", **base, reason=reason, detail=detail)
        self._emit("rolled_back", **base, restored_version=p.previous_version, reason=reason)
        if quarantine:
            self._emit("quarantined", **base, reason=reason)

    def _rollback_failed(
        self, target: TargetSpec, st: ChannelState, first: str, exc: BaseException
    ) -> None:
        """Critical: the version failed and the rollback failed too. The node keeps running."""
        p = st.pending
        assert p is not None
        where = p.backup or "(no backup)"
        detail = (
            f"{first}; rollback failed: {type(exc).__name__}: {exc}; "
            f"target {target.path}, backup at {where}"
        )
        if p.kind == "install":
            self._quarantine(st, p.version, core.ROLLBACK_FAILED)
        p.phase = "rolling_back"
        p.detail = detail
        self._set_last(st, "failed", p.version, core.ROLLBACK_FAILED, detail)
        self._emit(
            "update_failed",
            channel=target.channel,
            version=p.version,
            package_id=p.package_id,
            reason=core.ROLLBACK_FAILED,
            critical=True,
            detail=detail,
            backup=where,
        )

    async def _restore(self, target: TargetSpec, p: Pending) -> None:
        """Make the target what it was before ``p`` began (idempotent)."""
        path = target.path
        check = trio.from_thread.check_cancelled
        step = ops.restore_quick(p, path)
        if step == "copy":
            assert p.backup is not None
            await trio.to_thread.run_sync(ops.restore_file, Path(p.backup), path, check)
        elif step == "verify":
            # No backup was made, so the swap (which comes after it) never
            # happened -- unless someone removed the backup: then the new file
            # is live and cannot be undone.
            digest, _ = await trio.to_thread.run_sync(ops.hash_file, path, check)
            if digest.hex() == p.package_id:
                raise ApplyError(core.ROLLBACK_FAILED, f"backup {p.backup} is missing")
        fault("after_restore")

    # ------------------------------------------------------------------
    # Recovery
    # ------------------------------------------------------------------

    async def _recover_pending(self, target: TargetSpec, st: ChannelState, *, retry: bool) -> None:
        p = st.pending
        assert p is not None
        ops.cleanup_leftovers(target.path)
        package = Path(p.package) if p.package else None
        decision = core.recovery_decision(
            p.phase,
            st.attempts.get(p.version, p.attempt),
            target.max_attempts,
            package is not None and package.is_file(),
            p.reason,
        )
        try:
            await self._restore(target, p)
        except (OSError, ApplyError) as exc:
            self._rollback_failed(target, st, f"recovering an interrupted {p.kind}", exc)
            self._store.save(st)
            return
        await self._restart_after_rollback(target, p.previous_version)
        match decision:
            case core.RecoverFinishRollback(reason=reason):
                bad = p.version if core.quarantines(reason) else None
                self._finish_rollback(target, st, reason, quarantine=bad or None, detail=p.detail)
                return
            case core.RecoverGiveUp(reason=reason):
                self._finish_rollback(target, st, reason, quarantine=p.version)
                return
            case core.RecoverWait() | core.RecoverRetry():
                version, package_id, explicit = p.version, p.package_id, p.explicit
                self._finish_interrupted(target, st)
                if isinstance(decision, core.RecoverWait):
                    self._emit(
                        "update_failed",
                        channel=target.channel,
                        version=version,
                        package_id=package_id,
                        reason=core.PACKAGE_MISSING,
                        detail=f"{p.package} is gone; the install is tried again when it is back",
                    )
                if retry and isinstance(decision, core.RecoverRetry) and package is not None:
                    await self._apply_locked(
                        target, version, package, bytes.fromhex(package_id), explicit, None
                    )

    def _finish_interrupted(self, target: TargetSpec, st: ChannelState) -> None:
        """An interrupted install was rolled back; its attempt stays counted."""
        p = st.pending
        assert p is not None
        base = {"channel": target.channel, "version": p.version, "package_id": p.package_id}
        st.pending = None
        self._set_last(st, "interrupted", p.version, core.INTERRUPTED, "")
        self._discard(target, p)
        self._emit(
            "rolled_back",
            **base,
            restored_version=p.previous_version,
            reason=core.INTERRUPTED,
            attempts=st.attempts.get(p.version, p.attempt),
        )

    # ------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------

    def _state(self, channel: str) -> ChannelState:
        st = self._store.get(channel)
        while self._reported_corrupt < len(self._store.corrupt):
            path, detail = self._store.corrupt[self._reported_corrupt]
            self._reported_corrupt += 1
            self._emit("state_corrupt", channel=channel, path=str(path), detail=detail)
        return st

    def _state_error(
        self, target: TargetSpec, version: str | None, exc: StateFileError, **fields: Any
    ) -> None:
        self._emit(
            "update_failed",
            channel=target.channel,
            version=version,
            **fields,
            reason="state_error",
            detail=str(exc),
        )

    def _lock(self, channel: str) -> trio.Lock:
        return self._locks.setdefault(channel, trio.Lock())

    def _channel_backup_dir(self, channel: str) -> Path:
        return self._backup_dir / channel_file_name(channel)

    def _emit(self, event: str, **fields: Any) -> None:
        self._emit_fn(event, fields)

    def _refuse(self, st: ChannelState, base: dict[str, Any], reason: str, detail: str) -> bool:
        self._set_last(st, "refused", base.get("version"), reason, detail)
        self._emit("update_refused", **base, reason=reason, detail=detail)
        return False

    def _set_last(
        self, st: ChannelState, result: str, version: str | None, reason: str | None, detail: str
    ) -> None:
        st.last = LastResult(result, version, reason, time.time(), detail)
        try:
            self._store.save(st)
        except StateFileError as exc:
            self._emit("state_write_failed", channel=st.channel, detail=str(exc))

    def _discard(self, target: TargetSpec, p: Pending) -> None:
        """After a completed rollback: drop what ``p`` made that is no longer needed.

        A file target's backup copy is live again; a directory target's new
        (bad or partial) release is not needed. Only files we created are removed.
        """
        try:
            if not p.is_dir and p.backup:
                if ops.inside(Path(p.backup), self._channel_backup_dir(target.channel)):
                    Path(p.backup).unlink(missing_ok=True)
            elif p.is_dir and p.release and p.release != p.backup:
                release = Path(p.release)
                if ops.inside(release, ops.releases_dir(target.path)):
                    ops.remove_tree(release)
        except OSError as exc:
            self._emit("cleanup_failed", channel=target.channel, detail=str(exc))

    def _quarantine(self, st: ChannelState, version: str, reason: str) -> None:
        if not core.version_in(version, st.quarantined_versions()):
            st.quarantine.append(QuarantineEntry(version, reason, time.time()))

    def _prune_backups(self, target: TargetSpec, st: ChannelState) -> None:
        """Keep the newest KEEP_BACKUPS backups; delete the files of older ones."""
        if len(st.backups) <= KEEP_BACKUPS:
            return
        dropped = st.backups[:-KEEP_BACKUPS]
        st.backups = st.backups[-KEEP_BACKUPS:]
        self._store.save(st)
        ours = ops.releases_dir(target.path) if target.is_dir else None
        for entry in dropped:
            path = Path(entry.path)
            try:
                if target.is_dir:
                    if ours is not None and ops.inside(path, ours):
                        ops.remove_tree(path)
                elif ops.inside(path, self._channel_backup_dir(target.channel)):
                    path.unlink(missing_ok=True)
            except OSError as exc:
                self._emit("backup_prune_failed", channel=target.channel, detail=str(exc))
