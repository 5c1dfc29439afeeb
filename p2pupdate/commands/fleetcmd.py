"""``p2pupdate fleet``: the running node's view of the whole fleet, from node reports.

Asks the node of ``--data-dir`` (else ``P2PUPDATE_DATA_DIR``, else the platform
default) over its control socket, ``{"op": "fleet", "channel": C | null}``, and
prints a summary per channel and installed version, then one row per node and
channel, problems first. ``--json`` prints the node's answer as it is
(documented in docs/operations.md, "Watching the fleet")::

    {
      "format": 1,
      "nodes_reporting": int,
      "channels": {CHANNEL: {VERSION | "none": {"nodes": int, "downloading": int,
                   "applying": int, "healthy": int, "rolled_back": int,
                   "quarantined": int, "refused": {REASON: int}}}},
      "nodes": [{"node_id": hex, "short_id": str, "listen": "host:port", "agent": str,
                 "channel": str, "version": str | null, "state": str,
                 "pending": str | null, "progress": int, "last": null |
                 {"version": str, "result": str, "reason": str},
                 "quarantined": [str], "last_seen": int (unix), "age": int (s)}]
    }

Exit 0; 1 when no node runs with that data dir (the fleet view lives in memory).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from p2pupdate.core.announcement import validate_channel
from p2pupdate.errors import P2PUpdateError, UsageError
from p2pupdate.shell.control import NodeNotRunning, control_request_sync
from p2pupdate.shell.nodeconfig import config_data_dir

__all__ = ["format_fleet", "run_fleet_command"]

_TIMEOUT = 30.0


def run_fleet_command(args: argparse.Namespace) -> int:
    data_dir, where = config_data_dir(args)
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "does not exist"
        hint = "" if where == "--data-dir" else " (give --data-dir, or set P2PUPDATE_DATA_DIR)"
        raise UsageError(f"{where} {data_dir} {what}{hint}")
    channel = args.channel
    if channel is not None:
        try:
            validate_channel(channel)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        answer = control_request_sync(
            data_dir, {"op": "fleet", "channel": channel}, timeout=_TIMEOUT
        )
    except NodeNotRunning as exc:
        raise NodeNotRunning(f"{exc}; fleet needs the running node") from None
    if not answer.get("ok"):
        raise P2PUpdateError(f"fleet: {answer.get('error', 'the node refused')}")
    view = {k: v for k, v in answer.items() if k != "ok"}
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
    else:
        print(format_fleet(view), end="")
    return 0


def _last(row: dict[str, Any]) -> str:
    last = row.get("last")
    if not isinstance(last, dict):
        return "-"
    text = f"{last.get('result')} {last.get('version')}"
    return f"{text}: {last['reason']}" if last.get("reason") else text


def _age(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "?"
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def format_fleet(view: dict[str, Any]) -> str:
    lines = [f"{view.get('nodes_reporting', 0)} nodes reporting"]
    for channel, versions in (view.get("channels") or {}).items():
        lines.append(f"{channel}:")
        for version, c in versions.items():
            parts = [f"{c.get('nodes', 0)} nodes"]
            for key in ("downloading", "applying", "healthy", "rolled_back", "quarantined"):
                if c.get(key):
                    parts.append(f"{c[key]} {key.replace('_', ' ')}")
            refused = c.get("refused") or {}
            if refused:
                why = ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()))
                parts.append(f"{sum(refused.values())} refused ({why})")
            lines.append(f"  {version:<12} " + ", ".join(parts))
    rows = view.get("nodes") or []
    if rows:
        lines.append("")
        lines.append(
            f"{'NODE':<12}  {'ADDRESS':<21}  {'CHANNEL':<16}  {'VERSION':<10}  "
            f"{'STATE':<14}  {'LAST SEEN':<9}  LAST OUTCOME"
        )
    for row in rows:
        state = str(row.get("state"))
        if state == "downloading":
            state = f"downloading {row.get('progress', 0)}%"
        lines.append(
            f"{row.get('short_id', '?'):<12}  {row.get('listen', '?'):<21}  "
            f"{row.get('channel', '?'):<16}  {row.get('version') or '-':<10}  "
            f"{state:<14}  {_age(row.get('age')):<9}  {_last(row)}"
        )
    return "\n".join(lines) + "\n"
