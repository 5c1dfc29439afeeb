"""The applicator's persisted state: one small JSON file per channel.

Each file holds a channel's installed version, its quarantined versions, the
attempt counters of versions being tried, its backups (newest last), the
pending install record (if an install or rollback is under way) and the last
result. Every write is atomic (temp file, fsync, rename, directory fsync). A
file that cannot be parsed or does not have the expected shape is moved
aside as ``<name>.corrupt`` and the channel starts from an empty state: the
node keeps running, and the caller reports it.

Channel names come from announcements, so they never become a path as they
are: a file name is ``ch-`` plus the percent-encoded name (or ``ch=`` and a hash when
that is too long), and the name inside the file must match.

This module only reads and writes; it decides nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import blake3

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import validate_channel as check_channel
from p2pupdate.errors import StateFileError
from p2pupdate.shell.fsutil import atomic_write_bytes, fsync_dir, read_bytes_limited

__all__ = [
    "FORMAT",
    "MAX_STATE_FILE",
    "BackupEntry",
    "ChannelState",
    "LastResult",
    "Pending",
    "QuarantineEntry",
    "StateStore",
    "channel_file_name",
    "validate_channel",
]

FORMAT = 1
MAX_STATE_FILE = DEFAULT_LIMITS.max_apply_state_file  # Limits says why
# A quoted channel name longer than this is hashed instead, so a file name fits NAME_MAX.
_MAX_QUOTED = 200


def validate_channel(channel: str) -> None:
    """Raise ValueError for a channel name that must not reach a file name.

    The one channel rule of the project (:func:`p2pupdate.core.announcement.validate_channel`):
    a state file is only ever made for a channel an announcement or a target could name.
    """
    check_channel(channel)


def channel_file_name(channel: str) -> str:
    """The state file name of ``channel``: safe, unique, reversible through its content."""
    validate_channel(channel)
    quoted = quote(channel, safe="")
    if len(quoted) > _MAX_QUOTED:
        # "=" is always percent-encoded by quote(), so this never collides.
        return "ch=" + blake3.blake3(channel.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"ch-{quoted}"


def _channel_from_file_name(name: str) -> str | None:
    """The channel a quoted state file name stands for (None for hashed names)."""
    if not (name.startswith("ch-") and name.endswith(".json")):
        return None
    channel = unquote(name[3:-5])
    try:
        return channel if channel_file_name(channel) + ".json" == name else None
    except ValueError:
        return None


@dataclass
class BackupEntry:
    """A previous version kept for rollback: a backup file, or a release directory."""

    version: str | None
    path: str
    package_id: str | None
    created: float


@dataclass
class QuarantineEntry:
    """A version that is never downloaded or applied again on this channel."""

    version: str
    reason: str
    at: float


@dataclass
class Pending:
    """An install or rollback under way. Persisted before the target is touched.

    ``kind`` is ``install`` or ``operator_rollback``; ``phase`` is
    ``installing`` or ``rolling_back``. ``backup`` is the backup file (file
    target) or previous release directory (directory target) to restore;
    ``release`` the new release directory of a directory target; ``adopt``
    says a real directory at the target is first moved to ``backup``.
    """

    kind: str
    phase: str
    version: str
    package_id: str
    package: str
    target: str
    is_dir: bool
    had_previous: bool
    previous_version: str | None
    backup: str | None
    release: str | None
    adopt: bool
    attempt: int
    started: float
    explicit: bool = False
    reason: str | None = None
    detail: str = ""


@dataclass
class LastResult:
    """What happened last on this channel, for ``status``."""

    result: str
    version: str | None
    reason: str | None
    at: float
    detail: str = ""


@dataclass
class ChannelState:
    """Everything the applicator remembers about one channel."""

    channel: str
    installed_version: str | None = None
    installed_package_id: str | None = None
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    backups: list[BackupEntry] = field(default_factory=list)
    pending: Pending | None = None
    last: LastResult | None = None

    def quarantined_versions(self) -> list[str]:
        """Quarantined version strings, oldest first."""
        return [q.version for q in self.quarantine]

    def to_json(self) -> bytes:
        """Canonical JSON bytes of this state."""
        obj: dict[str, Any] = {"format": FORMAT, **asdict(self)}
        return json.dumps(obj, sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> ChannelState:
        """Parse and check the shape; raise StateFileError for anything unexpected."""
        try:
            obj = json.loads(data.decode("utf-8"))
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise ValueError("not a format 1 channel state")
            state = cls(
                channel=_str(obj["channel"]),
                installed_version=_opt_str(obj["installed_version"]),
                installed_package_id=_opt_str(obj["installed_package_id"]),
                quarantine=[
                    QuarantineEntry(_str(q["version"]), _str(q["reason"]), _num(q["at"]))
                    for q in _list(obj["quarantine"])
                ],
                attempts={_str(k): _int(v) for k, v in _dict(obj["attempts"]).items()},
                backups=[
                    BackupEntry(
                        _opt_str(b["version"]),
                        _str(b["path"]),
                        _opt_str(b["package_id"]),
                        _num(b["created"]),
                    )
                    for b in _list(obj["backups"])
                ],
                pending=None if obj["pending"] is None else _pending(_dict(obj["pending"])),
                last=None if obj["last"] is None else _last(_dict(obj["last"])),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise StateFileError(f"{type(exc).__name__}: {exc}") from exc
        return state


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _opt_str(v: object) -> str | None:
    return None if v is None else _str(v)


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise TypeError("expected a non-negative integer")
    return v


def _num(v: object) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise TypeError("expected a number")
    return float(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError("expected a boolean")
    return v


def _list(v: object) -> list[Any]:
    if not isinstance(v, list):
        raise TypeError("expected a list")
    return v


def _dict(v: object) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError("expected an object")
    return v


def _pending(d: dict[str, Any]) -> Pending:
    p = Pending(
        kind=_str(d["kind"]),
        phase=_str(d["phase"]),
        version=_str(d["version"]),
        package_id=_str(d["package_id"]),
        package=_str(d["package"]),
        target=_str(d["target"]),
        is_dir=_bool(d["is_dir"]),
        had_previous=_bool(d["had_previous"]),
        previous_version=_opt_str(d["previous_version"]),
        backup=_opt_str(d["backup"]),
        release=_opt_str(d["release"]),
        adopt=_bool(d["adopt"]),
        attempt=_int(d["attempt"]),
        started=_num(d["started"]),
        explicit=_bool(d["explicit"]),
        reason=_opt_str(d["reason"]),
        detail=_str(d["detail"]),
    )
    if p.kind not in ("install", "operator_rollback"):
        raise ValueError(f"unknown pending kind {p.kind!r}")
    if p.phase not in ("installing", "rolling_back"):
        raise ValueError(f"unknown pending phase {p.phase!r}")
    return p


def _last(d: dict[str, Any]) -> LastResult:
    return LastResult(
        result=_str(d["result"]),
        version=_opt_str(d["version"]),
        reason=_opt_str(d["reason"]),
        at=_num(d["at"]),
        detail=_str(d["detail"]),
    )


class StateStore:
    """Loads and saves :class:`ChannelState` files under ``directory``.

    The node's process owns the files; each channel's state is loaded once
    and then kept in memory, so every change is a mutation followed by
    :meth:`save`, with no await in between.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, ChannelState] = {}
        # (path, detail) of every corrupt file found, for the caller to report.
        self.corrupt: list[tuple[Path, str]] = []

    def path(self, channel: str) -> Path:
        """The state file of ``channel``."""
        return self.directory / (channel_file_name(channel) + ".json")

    def get(self, channel: str) -> ChannelState:
        """The state of ``channel`` (empty if it has none; a corrupt file is set aside)."""
        state = self._cache.get(channel)
        if state is None:
            state = self._load(channel, self.path(channel))
            self._cache[channel] = state
        return state

    def save(self, state: ChannelState) -> None:
        """Persist ``state`` atomically. Raises StateFileError when it cannot."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path(state.channel), state.to_json())
        except OSError as exc:
            raise StateFileError(f"cannot write {self.path(state.channel)}: {exc}") from exc

    def channels(self) -> list[str]:
        """Every channel with a state file or loaded state, sorted."""
        names = set(self._cache)
        if self.directory.is_dir():
            for entry in self.directory.iterdir():
                if not (entry.name.startswith(("ch-", "ch=")) and entry.name.endswith(".json")):
                    continue
                channel = _channel_from_file_name(entry.name)
                if channel is None:
                    try:
                        data = read_bytes_limited(entry, MAX_STATE_FILE)
                        channel = ChannelState.from_json(data).channel
                    except (OSError, ValueError, StateFileError) as exc:
                        self._set_aside("", entry, str(exc))  # its channel is unknown
                        continue
                with contextlib.suppress(ValueError):
                    if channel_file_name(channel) + ".json" == entry.name:
                        names.add(channel)
        return sorted(names)

    def _load(self, channel: str, path: Path) -> ChannelState:
        try:
            data = read_bytes_limited(path, MAX_STATE_FILE)
        except FileNotFoundError:
            return ChannelState(channel)
        except (OSError, ValueError) as exc:
            return self._set_aside(channel, path, f"unreadable: {exc}")
        try:
            state = ChannelState.from_json(data)
        except StateFileError as exc:
            return self._set_aside(channel, path, str(exc))
        if state.channel != channel:
            return self._set_aside(channel, path, f"holds channel {state.channel!r}")
        return state

    def _set_aside(self, channel: str, path: Path, detail: str) -> ChannelState:
        aside = path.with_name(path.name + ".corrupt")
        try:
            if aside.is_dir() and not aside.is_symlink():
                raise IsADirectoryError(str(aside))
            os.replace(path, aside)
            fsync_dir(path.parent)
        except OSError as exc:
            detail = f"{detail}; could not move it aside: {exc}"
        self.corrupt.append((path, detail))
        return ChannelState(channel)
