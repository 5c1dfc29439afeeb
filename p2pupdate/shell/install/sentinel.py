"""Boot sentinel: a freshly swapped program counts its boots until it is confirmed.

Used first thing by ``p2pupdate node``, before networking, and kept generic
(a program path and versions) so the node's self-update and a launcher can
reuse it:

1. Before a new program version is swapped in, :meth:`BootSentinel.arm`
   makes sure a copy of the current (good) program exists as *last good*,
   then persists a sentinel naming the new version with zero boots.
2. Every start calls :meth:`BootSentinel.on_boot` with the running version.
   The counter is persisted before the caller goes on, so a crash counts.
   Past ``boot_attempts`` unconfirmed boots it quarantines the new version,
   restores the last good program and says exit with code 3 (the service
   manager then starts the good one); with no last good it quarantines and
   keeps going. A corrupt sentinel, or one for another version or program,
   is cleared, never fatal.
3. Once healthy (docs/applying.md, Healthy), :meth:`BootSentinel.confirm` promotes
   the running program to last good and removes the sentinel.

A program is a file (its last good copy lives in the state directory) or a
symlink to a release directory (its last good is the release it pointed at).
The decisions are :func:`p2pupdate.core.apply.boot_decision`; this module is
synchronous (it runs before trio starts) and does the file work.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pupdate.core import apply as core
from p2pupdate.errors import ApplyError, StateFileError
from p2pupdate.shell.fsutil import (
    atomic_write_bytes,
    fsync_dir,
    read_json_file,
)
from p2pupdate.shell.install import targets

__all__ = ["EXIT_ROLLED_BACK", "BootOutcome", "BootSentinel"]

# docs/applying.md exit codes: 3 = the node rolled its own program back and wants its
# supervisor to start it again.
EXIT_ROLLED_BACK = 3
_FORMAT = 1
# Sentinel and quarantine files are tiny; refuse to read a huge corrupt one.
_MAX_FILE = 256 * 1024

Emit = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class BootOutcome:
    """What :meth:`BootSentinel.on_boot` did. ``exit_code`` set: exit with it now.

    ``action`` is one of ``continue`` (no sentinel), ``error`` (the
    sentinel's files could not be read or written; keep going), ``counted`` (boot
    ``attempt`` of a new version), ``cleared`` (corrupt or stale sentinel
    removed, ``detail`` says which), ``rolled_back`` (last good restored,
    ``version`` quarantined, exit 3), ``quarantined`` (no last good to
    restore: ``version`` quarantined, keep going) or ``rollback_failed``
    (the restore failed: ``version`` quarantined, keep going, see ``detail``).
    """

    action: str
    exit_code: int | None = None
    version: str | None = None
    attempt: int = 0
    detail: str = ""


def _no_emit(event: str, fields: dict[str, Any]) -> None:
    """Default ``emit``: the caller did not ask for events."""


class BootSentinel:
    """The boot sentinel of one program, with its state in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        program: Path,
        *,
        boot_attempts: int = 3,
        emit: Emit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if boot_attempts < 1:
            raise ValueError("boot_attempts must be at least 1")
        self.state_dir = state_dir
        self.program = program
        self.boot_attempts = boot_attempts
        self._emit = emit or _no_emit
        self._clock = clock
        self.sentinel_path = state_dir / "sentinel.json"
        self.last_good_path = state_dir / "last_good.json"
        self.last_good_copy = state_dir / "last_good" / program.name
        self.quarantine_path = state_dir / "quarantine.json"

    # ------------------------------------------------------------------
    # The three steps
    # ------------------------------------------------------------------

    def arm(self, new_version: str, previous_version: str | None) -> None:
        """Call before swapping ``new_version`` in: keep a last good, persist the sentinel.

        Raises ApplyError(``quarantined``) for a quarantined version and
        ApplyError(``bad_version``) for a version that is not semver.
        """
        try:
            core.parse_version(new_version)
        except ValueError as exc:
            raise ApplyError(core.BAD_VERSION, str(exc)) from exc
        if self.is_quarantined(new_version):
            raise ApplyError(core.QUARANTINED, f"{new_version} is quarantined")
        last_good = self._read_last_good()
        if last_good is None and (self.program.exists() or self.program.is_symlink()):
            self._promote(previous_version)
            last_good = self._read_last_good()
        record = {
            "format": _FORMAT,
            "program": str(self.program),
            "new_version": new_version,
            "last_good_version": last_good.get("version") if last_good else None,
            "boot_attempts": 0,
            "armed_at": self._clock(),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.sentinel_path, json.dumps(record).encode())

    def on_boot(self, running_version: str) -> BootOutcome:
        """Count this boot of a fresh program, or roll it back past the bound.

        Never raises for a file problem: a sentinel that cannot be read or
        written gives ``action="error"`` (reported as ``sentinel_error``) and
        the node starts, since refusing to start would be worse.
        """
        try:
            return self._on_boot(running_version)
        except (OSError, StateFileError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self._emit("sentinel_error", {"detail": detail, "path": str(self.sentinel_path)})
            return BootOutcome("error", detail=detail)

    def _on_boot(self, running_version: str) -> BootOutcome:
        record, corrupt_detail = self._read_sentinel()
        last_good = self._read_last_good()
        decision = core.boot_decision(
            record,
            corrupt_detail is not None,
            running_version,
            self.boot_attempts,
            has_last_good=last_good is not None,
            program=str(self.program),
        )
        match decision:
            case core.BootContinue():
                return BootOutcome("continue")
            case core.BootClear(reason=reason):
                self._remove_sentinel()
                detail = f"{reason}: {corrupt_detail}" if corrupt_detail else reason
                self._emit("sentinel_cleared", {"reason": reason, "detail": detail})
                return BootOutcome("cleared", detail=detail)
            case core.BootCount(attempt=attempt):
                assert record is not None
                self._write_sentinel(record, attempt)
                return BootOutcome("counted", version=record.new_version, attempt=attempt)
            case core.BootRollBack(version=version, restore=restore):
                assert record is not None
                return self._roll_back(record, version, restore, last_good)
            case _:  # pragma: no cover - BootDecision is closed
                raise ApplyError("illegal_transition", repr(decision))

    def confirm(self, running_version: str) -> bool:
        """The running program is healthy: make it the last good, drop the sentinel.

        Promotes when the sentinel names ``running_version`` or when there is no
        last good yet; returns whether it promoted. A file error is reported
        (``sentinel_error``) and gives False: the sentinel stays, so a later
        confirm can still succeed.
        """
        record, _ = self._read_sentinel()
        matches = record is not None and core.version_in(running_version, [record.new_version])
        if not matches and self._read_last_good() is not None:
            return False
        try:
            self._promote(running_version)
            self._remove_sentinel()
        except OSError as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self._emit("sentinel_error", {"detail": detail, "path": str(self.last_good_path)})
            return False
        if matches:
            self._emit("self_update_confirmed", {"version": running_version})
        return True

    # ------------------------------------------------------------------
    # Quarantine (of this program's releases)
    # ------------------------------------------------------------------

    def quarantined(self) -> list[str]:
        """Quarantined versions, oldest first."""
        return [q["version"] for q in self._read_quarantine()]

    def is_quarantined(self, version: str) -> bool:
        """Whether ``version`` (build metadata ignored) is quarantined."""
        return core.version_in(version, self.quarantined())

    def quarantine_clear(self, version: str) -> bool:
        """Lift the quarantine of ``version``; False if it was not quarantined."""
        entries = self._read_quarantine()
        keep = [q for q in entries if not core.version_in(q["version"], [version])]
        if len(keep) == len(entries):
            return False
        self._write_quarantine(keep)
        self._emit("quarantine_cleared", {"version": version})
        return True

    def status(self) -> dict[str, Any]:
        """JSON-able view: sentinel, last good, quarantine."""
        record, corrupt = self._read_sentinel()
        return {
            "program": str(self.program),
            "sentinel": None
            if record is None
            else {"new_version": record.new_version, "boot_attempts": record.boot_attempts},
            "sentinel_corrupt": corrupt,
            "boot_attempts_bound": self.boot_attempts,
            "last_good": self._read_last_good(),
            "quarantined": self._read_quarantine(),
        }

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _roll_back(
        self,
        record: core.SentinelRecord,
        version: str,
        restore: bool,
        last_good: dict[str, Any] | None,
    ) -> BootOutcome:
        # Quarantine first: if the restore is cut short, the next boot still
        # finds the sentinel past its bound and rolls back again.
        self._quarantine(version)
        fields: dict[str, Any] = {"version": version, "reason": core.TOO_MANY_ATTEMPTS}
        if not restore or last_good is None:
            self._remove_sentinel()
            self._emit("quarantined", fields)
            return BootOutcome(
                "quarantined", version=version, detail="no last good program to restore"
            )
        try:
            self._restore(last_good)
        except (OSError, ApplyError) as exc:
            self._remove_sentinel()
            detail = (
                f"{version} failed {record.boot_attempts} boots; restoring the last good "
                f"program failed: {type(exc).__name__}: {exc}; last good at "
                f"{last_good.get('path')}"
            )
            self._emit("update_failed", {**fields, "reason": "rollback_failed", "detail": detail})
            self._emit("quarantined", fields)
            return BootOutcome("rollback_failed", version=version, detail=detail)
        self._remove_sentinel()
        restored = last_good.get("version")
        self._emit("rolled_back", {**fields, "restored_version": restored})
        self._emit("quarantined", fields)
        return BootOutcome(
            "rolled_back",
            exit_code=EXIT_ROLLED_BACK,
            version=version,
            attempt=record.boot_attempts,
            detail=f"restored {restored}",
        )

    def _restore(self, last_good: dict[str, Any]) -> None:
        if last_good.get("kind") == "dir":
            release = Path(str(last_good["path"]))
            if not release.is_dir():
                raise ApplyError(core.ROLLBACK_FAILED, f"last good release {release} is gone")
            targets.make_symlink_live(self.program, release)
        else:
            targets.restore_file(self.last_good_copy, self.program)

    def _promote(self, version: str | None) -> None:
        """Make the current program the last good one (copy, or release path)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        live = targets.read_live_release(self.program)
        if live is not None and live.is_dir():
            info: dict[str, Any] = {"kind": "dir", "path": str(live), "version": version}
        else:
            self.last_good_copy.parent.mkdir(parents=True, exist_ok=True)
            targets.backup_file(self.program, self.last_good_copy)
            info = {"kind": "file", "path": str(self.last_good_copy), "version": version}
        info["format"] = _FORMAT
        info["at"] = self._clock()
        atomic_write_bytes(self.last_good_path, json.dumps(info).encode())

    def _read_json(self, path: Path) -> Any:
        """Parsed JSON of ``path``; None if missing; StateFileError if corrupt."""
        return read_json_file(path, _MAX_FILE)

    def _read_sentinel(self) -> tuple[core.SentinelRecord | None, str | None]:
        """(record, None), (None, None) when absent, (None, why) when corrupt."""
        try:
            obj = self._read_json(self.sentinel_path)
            if obj is None:
                return None, None
            if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
                raise StateFileError("not a format 1 sentinel")
            attempts = obj["boot_attempts"]
            last_good = obj["last_good_version"]
            if not isinstance(attempts, int) or isinstance(attempts, bool):
                raise StateFileError("boot_attempts is not an integer")
            if not isinstance(obj["new_version"], str) or not isinstance(obj["program"], str):
                raise StateFileError("new_version and program must be strings")
            if last_good is not None and not isinstance(last_good, str):
                raise StateFileError("last_good_version must be a string")
            if not isinstance(obj["armed_at"], int | float):
                raise StateFileError("armed_at must be a number")
            record = core.SentinelRecord(
                new_version=obj["new_version"],
                last_good_version=last_good,
                boot_attempts=attempts,
                armed_at=float(obj["armed_at"]),
                program=obj["program"],
            )
        except (StateFileError, KeyError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__
        return record, None

    def _write_sentinel(self, record: core.SentinelRecord, attempts: int) -> None:
        obj = {
            "format": _FORMAT,
            "program": record.program,
            "new_version": record.new_version,
            "last_good_version": record.last_good_version,
            "boot_attempts": attempts,
            "armed_at": record.armed_at,
        }
        atomic_write_bytes(self.sentinel_path, json.dumps(obj).encode())

    def _remove_sentinel(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.sentinel_path.is_dir() and not self.sentinel_path.is_symlink():
                # Corrupt in the strangest way: move it aside instead.
                os.replace(self.sentinel_path, self.sentinel_path.with_suffix(".corrupt"))
            else:
                self.sentinel_path.unlink()
            fsync_dir(self.state_dir)

    def _read_last_good(self) -> dict[str, Any] | None:
        try:
            obj = self._read_json(self.last_good_path)
        except StateFileError:
            return None
        if not isinstance(obj, dict) or obj.get("kind") not in ("file", "dir"):
            return None
        if obj["kind"] == "file" and not self.last_good_copy.is_file():
            return None
        version = obj.get("version")
        return {
            "kind": obj["kind"],
            "path": str(obj.get("path")),
            "version": version if isinstance(version, str) else None,
        }

    def _read_quarantine(self) -> list[dict[str, Any]]:
        try:
            obj = self._read_json(self.quarantine_path)
        except StateFileError as exc:
            self._emit("state_corrupt", {"path": str(self.quarantine_path), "detail": str(exc)})
            return []
        if obj is None:
            return []
        entries = obj.get("versions") if isinstance(obj, dict) else None
        if not isinstance(entries, list):
            self._emit("state_corrupt", {"path": str(self.quarantine_path), "detail": "shape"})
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]

    def _write_quarantine(self, entries: list[dict[str, Any]]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"format": _FORMAT, "versions": entries}).encode()
        atomic_write_bytes(self.quarantine_path, data)

    def _quarantine(self, version: str) -> None:
        entries = self._read_quarantine()
        if not core.version_in(version, [e["version"] for e in entries]):
            entries.append(
                {"version": version, "reason": core.TOO_MANY_ATTEMPTS, "at": self._clock()}
            )
            self._write_quarantine(entries)
