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

The class is split by job: :class:`~p2pupdate.shell.install.channels.ChannelBook`
(state, locks, events, queries), :class:`~p2pupdate.shell.install.recovery.Recovery`
(rollbacks and crash recovery) and, here, installing.
"""

from __future__ import annotations

import os
import time
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
)
from p2pupdate.shell.install.channels import KEEP_BACKUPS, Emit
from p2pupdate.shell.install.healthcheck import (
    Health,
)
from p2pupdate.shell.install.recovery import Recovery
from p2pupdate.shell.install.targets import TargetSpec
from p2pupdate.shell.install.unpack import extract_release

__all__ = ["KEEP_BACKUPS", "Applicator", "Emit", "TargetSpec"]

# How much of a failed restart command's output goes into update_failed's detail.
_RESTART_TAIL = 400


class Applicator(Recovery):
    """Installs packages into targets; see the module docstring.

    ``emit(event, fields)`` receives the docs/operations.md events (the node adds
    ``t`` and ``node``). One install per channel runs at a time.
    """

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
                    if not res.ok and res.output.strip():
                        # What the command said last: the line that explains a failure.
                        tail = res.output.strip()[-_RESTART_TAIL:]
                        restart_detail += f"; output: {tail}"
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
                        detail = restart_detail  # the exit code and the output's tail
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
            lambda: extract_release(
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
