"""``p2pupdate quarantine list`` and ``p2pupdate versions``: what a node knows of versions.

Both read the node's status (over its control socket, or the snapshot it saved
when it stopped; see :mod:`p2pupdate.commands.controlcmd`) and never change
anything. Output, for people and with ``--json`` for programs:

``quarantine list [--channel C]``: one row per quarantined version, with the
reason and the time it was quarantined::

    {"running": bool, "quarantined": [{"channel", "version", "reason", "at"}]}

``versions --channel C``: every version of the channel the node knows, newest
first, each with what the node holds of it and why (``installed``, ``backup``,
``newest announced``, ``downloading``, ``waiting for apply``, ``quarantined:
REASON``, ``refused: REASON``)::

    {"running": bool, "channel": C, "versions": [{"version", "states": [str]}]}

A version that is not semver (a hand-written installed version) sorts last.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import semver

from p2pupdate.core.announcement import validate_channel
from p2pupdate.errors import UsageError

__all__ = ["quarantine_rows", "run_quarantine_list", "run_versions", "version_states"]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _channels(status: dict[str, Any]) -> dict[str, Any]:
    return _dict(status.get("channels"))


def quarantine_rows(status: dict[str, Any], channel: str | None) -> list[dict[str, Any]]:
    """Quarantined versions (channel, version, reason, at), by channel then time."""
    rows: list[dict[str, Any]] = []
    for name, ch in sorted(_channels(status).items()):
        if channel is not None and name != channel:
            continue
        detailed = [q for q in _dict(ch).get("quarantine", []) if isinstance(q, dict)]
        if detailed:
            for q in detailed:
                at = q.get("at")
                rows.append(
                    {
                        "channel": name,
                        "version": _str(q.get("version")) or "?",
                        "reason": _str(q.get("reason")) or "",
                        "at": at if isinstance(at, (int, float)) else None,
                    }
                )
            continue
        # An older snapshot has version strings only.
        for v in _dict(ch).get("quarantined", []):
            if isinstance(v, str):
                rows.append({"channel": name, "version": v, "reason": "", "at": None})
    return rows


def _sort_key(version: str) -> tuple[int, Any]:
    try:
        return (1, semver.Version.parse(version).replace(build=None))
    except ValueError:
        return (0, version)


def version_states(ch: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version one channel's status names, newest first, with its states."""
    states: dict[str, list[str]] = {}

    def add(version: Any, state: str) -> None:
        if isinstance(version, str) and version:
            states.setdefault(version, [])
            if state not in states[version]:
                states[version].append(state)

    add(ch.get("installed"), "installed")
    for b in ch.get("backups", []) or []:
        add(_dict(b).get("version"), "backup")
    add(ch.get("newest"), "newest announced")
    download = _dict(ch.get("download"))
    if download:
        progress = download.get("progress")
        pct = f" {100 * progress:.0f}%" if isinstance(progress, (int, float)) else ""
        add(download.get("version"), f"downloading{pct}")
    for w in ch.get("waiting", []) or []:
        add(_dict(w).get("version"), "waiting for apply")
    for q in ch.get("quarantine", []) or []:
        q = _dict(q)
        add(q.get("version"), f"quarantined: {_str(q.get('reason')) or 'no reason kept'}")
    for v in ch.get("quarantined", []) or []:
        if isinstance(v, str) and not any(s.startswith("quarantined") for s in states.get(v, [])):
            add(v, "quarantined")
    refusal = _dict(ch.get("last_refusal"))
    if refusal:
        add(refusal.get("version"), f"refused: {_str(refusal.get('reason')) or '?'}")
    ordered = sorted(states, key=_sort_key, reverse=True)
    return [{"version": v, "states": states[v]} for v in ordered]


def _when(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _channel_arg(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return validate_channel(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _stale_note(running: bool) -> str:
    return "" if running else "(node not running: its last known state)\n"


def run_quarantine_list(
    status: dict[str, Any], running: bool, channel: str | None, *, json_out: bool
) -> int:
    channel = _channel_arg(channel)
    if channel is not None and channel not in _channels(status):
        raise UsageError(f"the node knows no channel {channel!r}")
    rows = quarantine_rows(status, channel)
    if json_out:
        print(json.dumps({"running": running, "quarantined": rows}, indent=2, sort_keys=True))
        return 0
    out = _stale_note(running)
    if not rows:
        out += "no quarantined versions\n"
    for r in rows:
        reason = r["reason"] or "no reason kept"
        out += f"{r['channel']}  {r['version']}  {reason}  since {_when(r['at'])}\n"
    print(out, end="")
    return 0


def run_versions(status: dict[str, Any], running: bool, channel: str, *, json_out: bool) -> int:
    name = _channel_arg(channel)
    assert name is not None
    channels = _channels(status)
    if name not in channels:
        known = ", ".join(sorted(channels)) or "none"
        raise UsageError(f"the node knows no channel {name!r} (it knows: {known})")
    versions = version_states(_dict(channels[name]))
    if json_out:
        doc = {"running": running, "channel": name, "versions": versions}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    out = _stale_note(running) + f"channel {name}\n"
    if not versions:
        out += "  no versions known yet\n"
    width = max((len(v["version"]) for v in versions), default=0)
    for v in versions:
        out += f"  {v['version']:<{width}}  {', '.join(v['states'])}\n"
    print(out, end="")
    return 0
