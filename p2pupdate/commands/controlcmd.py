"""The ``status``, ``apply``, ``rollback``, ``quarantine`` and ``versions`` commands.

The data dir comes from ``--data-dir``, else ``--config``'s ``data_dir``, else
``P2PUPDATE_DATA_DIR``, else the platform default (:mod:`p2pupdate.shell.datadir`).
``quarantine list`` and ``versions`` only read the status (see
:mod:`p2pupdate.commands.versionscmd`).

Each talks to the running node of ``--data-dir`` over its control socket
(:mod:`p2pupdate.shell.control`), sending one of::

    {"op": "status"}
    {"op": "apply", "channel": CHANNEL}
    {"op": "rollback", "channel": CHANNEL}
    {"op": "quarantine_clear", "channel": CHANNEL, "version": VERSION}

``apply``, ``rollback`` and ``quarantine clear`` need the running node: when
none answers they exit 1 with one line. The node answers ``{"ok": true,
"message"?: str}`` on success (the message is printed), and ``{"ok": false,
"usage": true, "error": ...}`` for a user mistake such as an unknown channel
(exit 2) or ``{"ok": false, "error": ...}`` for a failure (exit 1).

``status`` falls back to the snapshot the node keeps in ``DATA_DIR/status.json``
when the node is down, says so ("node not running (last known state)") and
exits 3, as ``systemctl status`` does for a stopped unit (also when there is no
snapshot: then one line on stderr).
The status dict, as the node's ``status`` op returns it and as the snapshot
stores it (every key optional to this module, which shows what it gets)::

    {
      "node_id": str,                      # ed25519:<hex> or a short id
      "listen": "host:port",
      "peers": ["host:port", ...],         # connected peers
      "channels": {
        CHANNEL: {
          "installed": str | None,         # installed version of the target
          "target": str | None,            # the target's path; None = relay/cache only
          "download": None | {"version": str, "progress": float (0..1),
                              "bytes_done": int, "bytes_total": int,
                              "state": str},   # e.g. "downloading", "verifying"
          "waiting": [{"version": str, "package_id": str (hex)}],  # need `apply`
          "quarantined": [str, ...],       # versions
          "last_refusal": None | {"version": str, "reason": str},
          "retry": None | {"version": str, "step": "download" | "install",
                           "reason": str, "attempt": int, "next_try": float (unix),
                           "wake_on": None | "free_space" | "new_source"},
          "last_download": None | {"version": str, "bytes_total": int,
                                   "reused_bytes": int},  # copied from local files
        },
      },
      "cache": {
        "size": int, "capacity": int,      # bytes
        "entries": [{"package_id": str (hex), "size": int,
                     "pinned": [str, ...]}],   # reasons, e.g. "installed app/stable"
        "over_capacity": str | None,       # why the cache is over capacity, if it is
      },
      "self_update": str,                  # one line about the node's own program
    }

``status --json`` prints that dict plus ``"running": bool`` (and, from a
snapshot, its ``"written_at"`` unix time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pupdate.commands.versionscmd import run_quarantine_list, run_versions
from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.units import format_size
from p2pupdate.errors import P2PUpdateError, UsageError
from p2pupdate.shell.control import (
    NodeNotRunning,
    control_request_sync,
    read_status_snapshot,
    write_status_snapshot,
)
from p2pupdate.shell.nodeconfig import config_data_dir

__all__ = [
    "EXIT_NOT_RUNNING",
    "fetch_status",
    "format_status",
    "not_running",
    "read_status_snapshot",
    "run_control_command",
    "write_status_snapshot",
]

# `status` of a node that is not running, as `systemctl status` does (its last known
# state is still printed when the node saved one).
EXIT_NOT_RUNNING = 3
# status answers at once; apply / rollback may run a health check first.
_STATUS_TIMEOUT = 30.0
_ACTION_TIMEOUT = 600.0


def run_control_command(args: argparse.Namespace) -> int:
    """Run status / apply / rollback / quarantine clear; returns the exit code."""
    data_dir, where = config_data_dir(args)
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "does not exist"
        hint = "" if where == "--data-dir" else " (give --data-dir, or set P2PUPDATE_DATA_DIR)"
        raise UsageError(f"{where} {data_dir} {what}{hint}")
    cmd = args.command
    if cmd == "status":
        return _status(data_dir, json_out=bool(getattr(args, "json", False)))
    if cmd in ("apply", "rollback"):
        channel = _channel(args.channel)
        return _action(data_dir, {"op": cmd, "channel": channel}, f"{cmd} {channel}")
    if cmd == "versions" or (cmd == "quarantine" and getattr(args, "qcommand", None) == "list"):
        got = fetch_status(data_dir)
        if got is None:
            return not_running(data_dir)
        json_out = bool(getattr(args, "json", False))
        if cmd == "versions":
            return run_versions(*got, args.channel, json_out=json_out)
        return run_quarantine_list(*got, getattr(args, "channel", None), json_out=json_out)
    if cmd == "quarantine":
        if getattr(args, "qcommand", None) != "clear":
            raise UsageError("p2pupdate quarantine: expected 'clear CHANNEL VERSION' or 'list'")
        channel = _channel(args.channel)
        try:
            version = validate_version(args.qversion)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        request = {"op": "quarantine_clear", "channel": channel, "version": version}
        return _action(data_dir, request, f"quarantine of {channel} {version} cleared")
    raise UsageError(f"unknown control command {cmd!r}")


def _channel(text: str) -> str:
    try:
        return validate_channel(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _action(data_dir: Path, request: dict[str, Any], done: str) -> int:
    try:
        answer = control_request_sync(data_dir, request, timeout=_ACTION_TIMEOUT)
    except NodeNotRunning as exc:
        raise NodeNotRunning(f"{exc}; {request['op']} needs the running node") from None
    if answer["ok"]:
        message = answer.get("message")
        print(message if isinstance(message, str) and message else f"{done}: done")
        return 0
    error = str(answer.get("error") or "the node refused without a reason")
    if answer.get("usage") is True:
        raise UsageError(error)
    raise P2PUpdateError(error)


def fetch_status(data_dir: Path) -> tuple[dict[str, Any], bool] | None:
    """The node's status and whether it is running (else its last saved snapshot).

    None when no node runs with this data dir and it holds no snapshot.
    """
    try:
        answer = control_request_sync(data_dir, {"op": "status"}, timeout=_STATUS_TIMEOUT)
    except NodeNotRunning:
        snapshot = read_status_snapshot(data_dir)
        return None if snapshot is None else (snapshot, False)
    if not answer["ok"]:
        raise P2PUpdateError(f"status: {answer.get('error', 'the node refused')}")
    return {k: v for k, v in answer.items() if k != "ok"}, True


def not_running(data_dir: Path) -> int:
    """Say that no node runs here and none ever saved its state; the exit code."""
    print(
        f"p2pupdate: no node is running with data dir {data_dir} and it holds no saved status",
        file=sys.stderr,
    )
    return EXIT_NOT_RUNNING


def _status(data_dir: Path, *, json_out: bool) -> int:
    got = fetch_status(data_dir)
    if got is None:
        return not_running(data_dir)
    status, running = got
    if json_out:
        print(json.dumps({**status, "running": running}, indent=2, sort_keys=True))
    else:
        print(format_status(status, running=running), end="")
    return 0 if running else EXIT_NOT_RUNNING


# ---------------------------------------------------------------- human output


def _get(d: Any, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``d[key]`` when ``d`` is a dict and the value has the expected type."""
    if isinstance(d, dict):
        value = d.get(key)
        if isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind)):
            return value
    return default


def _clock(t: float | None) -> str:
    """Local wall-clock time of a unix time, or "later" for a missing or absurd one."""
    if t is None:
        return "later"
    try:
        return datetime.datetime.fromtimestamp(t).astimezone().strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "later"


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _size(n: Any) -> str:
    return format_size(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else "?"


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "at an unknown time"
    stamp = datetime.datetime.fromtimestamp(t).astimezone()
    return "written " + stamp.strftime("%Y-%m-%d %H:%M:%S %Z")


def format_status(status: dict[str, Any], *, running: bool) -> str:
    """The human text of ``p2pupdate status``; tolerant of missing or odd fields."""
    out: list[str] = []
    add: Callable[[str], None] = out.append
    add(f"node {_get(status, 'node_id', str, '?')}")
    if not running:
        add(f"  node not running (last known state, {_when(status.get('written_at'))})")
    add(f"  listen  {_get(status, 'listen', str, '?')}")
    peers = [p for p in _get(status, "peers", list, []) if isinstance(p, str)]
    add(f"  peers   {len(peers)}" + (": " + ", ".join(peers) if peers else ""))
    _format_fleet(status, add)
    self_update = _get(status, "self_update", str)
    if self_update:
        add(f"  self-update  {self_update}")

    channels = _get(status, "channels", dict, {})
    if not channels:
        add("channels: none seen yet")
    for name in sorted(channels):
        add(f"channel {name}")
        _format_channel(name, channels[name], add)

    cache = _get(status, "cache", dict)
    if cache is not None:
        entries = [e for e in _get(cache, "entries", list, []) if isinstance(e, dict)]
        add(
            f"cache {_size(cache.get('size'))} of {_size(cache.get('capacity'))}, "
            f"{len(entries)} package{'s' if len(entries) != 1 else ''}"
        )
        over = _get(cache, "over_capacity", str)
        if over:
            add(f"  over its size because pinned: {over}")
        for entry in entries:
            pinned = [r for r in _get(entry, "pinned", list, []) if isinstance(r, str)]
            line = f"  {str(_get(entry, 'package_id', str, '?'))[:16]}  {_size(entry.get('size'))}"
            if pinned:
                line += "  pinned: " + ", ".join(pinned)
            add(line)
    return "\n".join(out) + "\n"


def _format_fleet(status: dict[str, Any], add: Callable[[str], None]) -> None:
    """Membership: the fleet, our admission's expiry, the 7-day warning."""
    fleet = _get(status, "fleet", dict)
    if fleet is None:
        wire = "encrypted" if status.get("encrypted") is True else "plain"
        add(f"  fleet   none (open swarm; {wire} connections)")
        return
    keys = [k for k in _get(fleet, "fleet_keys", list, []) if isinstance(k, str)]
    expires = _get(fleet, "admission_expires", int)
    own = _get(fleet, "admission_fleet", str, "?")
    when = "?"
    if expires is not None:
        try:
            stamp = datetime.datetime.fromtimestamp(expires).astimezone()
            when = stamp.strftime("%Y-%m-%d %H:%M %Z")
        except (OverflowError, OSError, ValueError):
            pass
    add(f"  fleet   {', '.join('ed25519:' + k[:16] for k in keys)}")
    add(f"  admission  by ed25519:{str(own)[:16]}, expires {when}")
    revoked = _get(fleet, "revoked", int, 0)
    if revoked:
        add(f"  revoked nodes  {revoked}")
    warning = _get(fleet, "warning", str)
    if warning:
        add(f"  WARNING: {warning}")


# Say so this long before the announcement of the installed version expires: hosts
# re-imaged after that can no longer fetch it until it is re-signed.
_EXPIRY_WARNING = 7 * 86400


def _expiry_warning(ch: Any, add: Callable[[str], None]) -> None:
    expires = _get(ch, "expires", int)
    newest = _get(ch, "newest", str)
    if expires is None or newest is None or _get(ch, "installed", str) != newest:
        return
    left = expires - time.time()
    if left < _EXPIRY_WARNING:
        when = f"in {left / 86400:.1f} days" if left > 0 else "already"
        add(f"  warning     the announcement of {newest} expires {when}: "
            f"publish --renew {newest} to extend it")  # fmt: skip


def _format_channel(name: str, ch: Any, add: Callable[[str], None]) -> None:
    target = _get(ch, "target", str)
    add(f"  target      {target if target else '(none: relay and cache only)'}")
    add(f"  installed   {_get(ch, 'installed', str) or 'unknown'}")
    download = _get(ch, "download", dict)
    if download is not None:
        progress = _get(download, "progress", (int, float), 0.0)
        add(
            f"  download    {_get(download, 'version', str, '?')} "
            f"{_get(download, 'state', str, '')} {100 * progress:.1f}% "
            f"({_size(download.get('bytes_done'))} of {_size(download.get('bytes_total'))})"
        )
    last = _get(ch, "last_download", dict)
    if last is not None:
        total = _get(last, "bytes_total", int, 0) or 0
        reused = _get(last, "reused_bytes", int, 0) or 0
        add(
            f"  fetched     {_get(last, 'version', str, '?')}: {_size(max(0, total - reused))} "
            f"from peers, {_size(reused)} reused from local files"
        )
    for item in _get(ch, "waiting", list, []):
        version = _get(item, "version", str, "?")
        pkg = str(_get(item, "package_id", str, ""))[:16]
        add(f"  waiting     {version} ({pkg}) for approval: p2pupdate apply {name}")
    quarantined = [
        q if isinstance(q, str) else str(_get(q, "version", str, "?"))
        for q in _get(ch, "quarantined", list, [])
    ]
    _expiry_warning(ch, add)
    details = {str(_get(q, "version", str, "")): q for q in _get(ch, "quarantine", list, [])}
    for version in quarantined:
        # Why and since when, where the node recorded it (older snapshots: the version only).
        q = details.get(version)
        reason = _get(q, "reason", str, "") if q is not None else ""
        at = q.get("at") if isinstance(q, dict) else None
        why = f" ({reason}, {_when(at).removeprefix('written ')})" if reason else ""
        add(f"  quarantined {version}{why}")
    retry = _get(ch, "retry", dict)
    if retry is not None:
        sooner = {
            "free_space": " or as soon as there is room",
            "new_source": " or as soon as a peer offers it",
        }.get(str(_get(retry, "wake_on", str, "")), "")
        when = _clock(_get(retry, "next_try", (int, float)))
        add(
            f"  retry       {_get(retry, 'version', str, '?')} "
            f"{_get(retry, 'step', str, 'download')} failed "
            f"({_get(retry, 'reason', str, '?')}), attempt {_get(retry, 'attempt', int, '?')}; "
            f"next try at {when}{sooner}"
        )
    refusal = _get(ch, "last_refusal", dict)
    if refusal is not None:
        add(
            f"  last refusal {_get(refusal, 'version', str, '?')}: "
            f"{_get(refusal, 'reason', str, '?')}"
        )
