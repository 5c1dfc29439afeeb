"""The ``--events FILE`` log (JSON lines) and the process's logging setup.

:class:`EventLog` appends one JSON object per line,
``{"t": unix_seconds, "node": node_id, "event": NAME, ...fields}``, to a file
opened in append mode; every line is flushed as it is written, so a crash of
the process loses no event that ``emit`` returned from (the kernel holds it).
Lines are not fsynced: a power cut may lose the last few, which a log may.
With ``max_size`` the file is rotated before a line would take it past that
size: it is renamed to ``FILE.1`` (replacing an older one) and a new FILE is
started, so the events of a flood cost at most twice ``max_size`` of disk and
the newest events are always in FILE, one JSON object per line as before.
Field values are made JSON-safe on the way: bytes become hex, paths and other
objects become strings, sets become sorted lists, non-finite floats become null.
A field named ``node`` is written as ``peer_node``, since ``node`` is the id
of the node writing the log (likewise ``t`` -> ``field_t``, ``event`` ->
``field_event``); the one exception is ``peer_banned``, whose ``node`` is the
banned peer's id as docs/operations.md specifies, with the writer in ``reporter``.
Every event is also forwarded to the ``p2pupdate.events`` logger, so people
see it in the human log too (``download_progress`` at DEBUG; ``update_failed``, ``rolled_back``,
``quarantined``, ``rollout_aborted`` and ``yanked`` at WARNING; the rest at INFO).
Listeners (``EventLog.listeners``) see every record after it is written.

:func:`setup_logging` configures the ``p2pupdate`` logger hierarchy: human
lines on stderr by default, one JSON object per line with ``json=True``.

This module decides nothing about which events exist or when they fire; the
node does. The names docs/operations.md guarantees are listed in :data:`EVENT_NAMES`.
"""

from __future__ import annotations

import json as _json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from p2pupdate.errors import UsageError

__all__ = [
    "EVENT_NAMES",
    "LOG_LEVELS",
    "EventLog",
    "JsonLogFormatter",
    "jsonable",
    "setup_logging",
]

EVENT_NAMES = frozenset(
    {
        "announcement_received",
        "update_refused",
        "download_started",
        "download_progress",
        "download_complete",
        "download_failed",
        "verifying",
        "applying",
        "update_complete",
        "update_failed",
        "rolled_back",
        "quarantined",
        "peer_banned",
        "rollout_aborted",
        "yanked",
    }
)
"""The event names docs/operations.md promises; the node may emit others too."""

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Keys of the record itself. A field with one of these names is renamed rather
# than allowed to overwrite them (peer_banned's ``node`` is the exception: docs/operations.md
# makes it the banned peer's id, and the writer moves to ``reporter``).
_RESERVED = frozenset({"t", "node", "event"})
_RENAMED = {"t": "field_t", "node": "peer_node", "event": "field_event"}
# Events frequent enough to drown the human log at INFO.
_CHATTY = frozenset({"download_progress"})
# Events an operator must see with `--log-level warning`: something went wrong with a
# release (docs/operations.md).
_WARN = frozenset({"update_failed", "rolled_back", "quarantined", "rollout_aborted", "yanked"})

_event_logger = logging.getLogger("p2pupdate.events")


def jsonable(value: Any) -> Any:
    """Turn ``value`` into something :func:`json.dumps` accepts, never raising."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=str)
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).hex()
    return str(key)


class EventLog:
    """Append-only JSON-lines event log of one node; ``path=None`` only logs.

    Safe to call from several threads. ``emit`` after ``close`` still logs but
    writes nothing (late events of a node that is shutting down).
    """

    def __init__(self, path: Path | None, node_id: str, *, max_size: int = 0) -> None:
        self.path = path
        self.node_id = node_id
        self.max_size = max_size
        self.rotations = 0
        self._size = 0
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        # Called with (name, record) after each event is written (the node report).
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        if path is not None:
            try:
                self._file = self._open(path)
            except IsADirectoryError:
                raise UsageError(f"--events {path}: is a directory, not a file") from None
            except OSError as exc:
                raise UsageError(
                    f"--events {path}: cannot open for appending: {exc.strerror}"
                ) from None

    def _open(self, path: Path) -> IO[str]:
        # buffering=1: line buffered; we also flush after each line.
        f = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._size = f.tell()
        return f

    def _rotate(self) -> None:
        """Move FILE to FILE.1 and start a new FILE (under the lock)."""
        assert self._file is not None and self.path is not None
        self._file.close()
        self._file = None
        try:
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        except OSError as exc:
            logging.getLogger("p2pupdate").warning("cannot rotate %s: %s", self.path, exc)
        try:
            self._file = self._open(self.path)
        except OSError as exc:
            logging.getLogger("p2pupdate").error("cannot reopen %s: %s", self.path, exc)
            return
        self.rotations += 1

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        """Write one event line and log it; returns the record as written."""
        record: dict[str, Any] = {"t": time.time(), "node": self.node_id, "event": name}
        for key, value in fields.items():
            if name == "peer_banned" and key == "node":
                # docs/operations.md: peer_banned's ``node`` is the banned peer's id; the
                # writer of the line moves to ``reporter``.
                record["reporter"] = self.node_id
                record["node"] = jsonable(value)
                continue
            record[_RENAMED.get(key, key)] = jsonable(value)
        line = _json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        data = line + "\n"
        size = len(data.encode())
        with self._lock:
            full = self.max_size and self._size and self._size + size > self.max_size
            if self._file is not None and full:
                self._rotate()
            if self._file is not None:
                self._file.write(data)
                self._file.flush()
                self._size += size
        for listener in list(self.listeners):
            listener(name, record)
        if name in _CHATTY:
            level = logging.DEBUG
        elif name in _WARN:
            level = logging.WARNING
        else:
            level = logging.INFO
        if _event_logger.isEnabledFor(level):
            text = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in _RESERVED)
            _event_logger.log(
                level,
                "%s %s",
                name,
                text,
                extra={"event": name, "fields": {k: record[k] for k in record if k != "t"}},
            )
        return record

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() for c in value)
        return value if plain else _json.dumps(value)  # one event, one log line
    return _json.dumps(value, separators=(",", ":"))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record: t, level, logger, msg, plus event fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out["event"] = getattr(record, "event", None)
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _json.dumps(jsonable(out), separators=(",", ":"), ensure_ascii=False)


# The handler setup_logging installed last, so a second call replaces it.
_installed: logging.Handler | None = None


def setup_logging(level: str, json: bool) -> None:
    """Send p2pupdate's logs to stderr at ``level``, as human lines or JSON lines."""
    global _installed
    lvl = LOG_LEVELS.get(level.lower()) if isinstance(level, str) else None
    if lvl is None:
        raise UsageError(f"log_level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("p2pupdate")
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(lvl)
    # Our handler prints everything; don't print it twice through the root logger.
    root.propagate = False
    _installed = handler
