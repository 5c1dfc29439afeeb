"""Undoing installs: rollbacks (failed, operator-asked) and recovery after a crash.

:class:`Recovery` puts a target back the way it was before a pending install
or rollback began (:meth:`Recovery._restore`), records a completed or failed
rollback, serves the operator's ``rollback``, and on start
(:meth:`Recovery.recover`) rolls back every install a crash or SIGTERM left
unconfirmed, then tries it again (counting one attempt) through
:meth:`Recovery._apply_locked`, which the applicator provides. What to do is
:func:`p2pupdate.core.apply.recovery_decision`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from p2pupdate.core import apply as core
from p2pupdate.errors import ApplyError, StateFileError
from p2pupdate.shell.faults import fault
from p2pupdate.shell.install import targets as ops
from p2pupdate.shell.install.applystate import (
    ChannelState,
    Pending,
)
from p2pupdate.shell.install.channels import ChannelBook
from p2pupdate.shell.install.targets import TargetSpec

__all__ = ["Recovery"]

log = logging.getLogger("p2pupdate.applicator")


class Recovery(ChannelBook):
    """Rollback and crash recovery of the applicator (see the module docstring)."""

    async def _apply_locked(
        self,
        target: TargetSpec,
        version: str,
        package: Path,
        package_id: bytes,
        explicit: bool,
        min_version: str | None,
    ) -> bool:
        """Install under the channel's lock: provided by the applicator."""
        raise NotImplementedError

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
