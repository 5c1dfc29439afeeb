"""The applicator's per-channel book: state, locks, events, queries and shared steps.

:class:`ChannelBook` is the base of :class:`~p2pupdate.shell.install.applicator.Applicator`:
it owns the persisted channel state (:mod:`p2pupdate.shell.install.applystate`),
one lock per channel, the event sink and the backup directory, answers the
queries (installed version, quarantine, room, status) and holds the small
steps both installing and recovery use (recording a result, quarantining,
cleaning up, running a restart command). Installing is in
:mod:`p2pupdate.shell.install.applicator`, undoing and recovering in
:mod:`p2pupdate.shell.install.recovery`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from p2pupdate.core import apply as core
from p2pupdate.errors import ApplyError, DiskFullError, StateFileError
from p2pupdate.shell.install import targets as ops
from p2pupdate.shell.install.applystate import (
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

__all__ = ["KEEP_BACKUPS", "ChannelBook", "Emit"]


# The issue asks for the last two backups per channel: one to roll back to,
# one more for an operator who rolls back twice.
KEEP_BACKUPS = 2

Emit = Callable[[str, dict[str, Any]], None]


class ChannelBook:
    """State, locks and events of the applicator's channels (see the module docstring).

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

    def _quarantine(self, st: ChannelState, version: str, reason: str) -> None:
        if not core.version_in(version, st.quarantined_versions()):
            st.quarantine.append(QuarantineEntry(version, reason, time.time()))

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
