"""Reading a fleet out of its reports: outcomes, rollout tallies, the abort rule, `fleet`.

What it does
    Says what one node's report means for one version (:func:`node_outcome`), counts a
    rollout's attempts and failures (:func:`abort_tally`, :func:`rollout_tally`) and
    whether its :class:`AbortRule` fired, builds the rows of the ``fleet`` view
    (:func:`fleet_view`), and turns a node's own events into the channel entry of its
    next report (:func:`next_outcome`, :func:`channel_entry`).

What it does not do
    Verify reports (:mod:`.record`) or keep them (:mod:`.book`). Reports are heuristics:
    nothing is ever installed because of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2pupdate.core.reports.record import (
    FAILED_RESULTS,
    MAX_QUARANTINED,
    ChannelReport,
    SignedReport,
    cut_reason,
)

__all__ = [
    "AbortRule",
    "abort_tally",
    "channel_entry",
    "fleet_view",
    "next_outcome",
    "node_outcome",
    "rollout_tally",
]

# States and results that mean something needs a look: shown first by `fleet`.
_PROBLEMS = frozenset({"rolled_back", "quarantined", "refused", "update_failed", "aborted"})


@dataclass(frozen=True)
class AbortRule:
    """Abort once at least ``minimum`` nodes attempted and ``percent``% of them failed."""

    percent: int
    minimum: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.percent, int) or not 1 <= self.percent <= 100:
            raise ValueError("abort percentage must be 1..100")
        if not isinstance(self.minimum, int) or not 1 <= self.minimum <= 1_000_000:
            raise ValueError("abort minimum must be 1..1000000")

    def fired(self, failed: int, attempted: int) -> bool:
        return attempted >= self.minimum and failed * 100 >= self.percent * attempted


def _failed(entry: ChannelReport, version: str) -> bool:
    if version in entry.quarantined:
        return True
    last = entry.last
    return last is not None and last[0] == version and last[1] in FAILED_RESULTS


def _attempted(entry: ChannelReport, version: str) -> bool:
    if _failed(entry, version) or entry.installed == version:
        return True
    return entry.state == "applying" and entry.pending == version


def abort_tally(reports: Iterable[SignedReport], channel: str, version: str) -> tuple[int, int]:
    """(failed, attempted) for ``version`` on ``channel``, one vote per node id."""
    failed = attempted = 0
    seen: set[bytes] = set()
    for s in reports:
        if s.report.node_id in seen:
            continue
        seen.add(s.report.node_id)
        entry = s.report.channel(channel)
        if entry is None:
            continue
        if _failed(entry, version):
            failed += 1
        if _attempted(entry, version):
            attempted += 1
    return failed, attempted


def node_outcome(entry: ChannelReport, version: str) -> tuple[str, str]:
    """Where one node stands on ``version``: (applied | downloaded | downloading |
    refused | failed | aborted | pending, reason)."""
    last = entry.last if entry.last is not None and entry.last[0] == version else None
    if entry.installed == version and entry.state != "applying":
        return "applied", ""
    if _failed(entry, version):
        if last is not None and last[1] in FAILED_RESULTS:
            return "failed", f"{last[1]}: {last[2]}" if last[2] else last[1]
        return "failed", "quarantined"
    if last is not None and last[1] == "refused":
        return "refused", last[2]
    if last is not None and last[1] == "aborted":
        return "aborted", last[2]
    if last is not None and last[1] == "yanked":
        return "refused", "yanked"
    if last is not None and last[1] == "downloaded":
        return "downloaded", ""
    if entry.pending == version and entry.state == "downloading":
        return "downloading", ""
    if entry.pending == version and entry.state == "applying":
        return "downloaded", ""
    return "pending", ""


def rollout_tally(
    reports: Iterable[SignedReport], channel: str, version: str
) -> dict[bytes, tuple[str, str, str]]:
    """node id -> (outcome, reason, listen) for every node following ``channel``."""
    out: dict[bytes, tuple[str, str, str]] = {}
    for s in reports:
        entry = s.report.channel(channel)
        if entry is None:
            continue
        outcome, reason = node_outcome(entry, version)
        out[s.report.node_id] = (outcome, reason, s.report.listen)
    return out


# -- the fleet view --------------------------------------------------------------------
def _row(s: SignedReport, c: ChannelReport, now: float) -> dict[str, Any]:
    last = None
    if c.last is not None:
        last = {"version": c.last[0], "result": c.last[1], "reason": c.last[2]}
    return {
        "node_id": s.report.node_id.hex(),
        "short_id": s.report.node_id.hex()[:12],
        "listen": s.report.listen,
        "agent": s.report.agent,
        "channel": c.channel,
        "version": c.installed,
        "state": c.state,
        "pending": c.pending,
        "progress": c.progress,
        "last": last,
        "quarantined": list(c.quarantined),
        "last_seen": s.report.time,
        "age": max(0, round(now - s.report.time)),
    }


def _rank(row: dict[str, Any]) -> int:
    last = row["last"]
    if row["state"] in _PROBLEMS or (last is not None and last["result"] in _PROBLEMS):
        return 0
    if row["state"] in ("downloading", "applying"):
        return 1
    return 2


def fleet_view(
    reports: Iterable[SignedReport], now: float, channel: str | None = None
) -> dict[str, Any]:
    """The fleet as ``p2pupdate fleet --json`` prints it (docs/operations.md).

    ``channels``: per channel and installed version, how many nodes are on it and
    how many are downloading, healthy, rolled back, quarantined or refused (with
    the reasons counted); ``nodes``: one row per node and channel, problems first,
    then nodes busy downloading or applying, then the rest, each group by channel,
    version and node id.
    """
    rows: list[dict[str, Any]] = []
    nodes: set[bytes] = set()
    channels: dict[str, dict[str, dict[str, Any]]] = {}
    for s in reports:
        nodes.add(s.report.node_id)
        for c in s.report.channels:
            if channel is not None and c.channel != channel:
                continue
            rows.append(_row(s, c, now))
            per = channels.setdefault(c.channel, {})
            key = c.installed if c.installed is not None else "none"
            v = per.setdefault(
                key,
                {
                    "nodes": 0,
                    "downloading": 0,
                    "applying": 0,
                    "healthy": 0,
                    "rolled_back": 0,
                    "quarantined": 0,
                    "refused": {},
                },
            )
            v["nodes"] += 1
            if c.state in ("downloading", "applying", "healthy", "rolled_back", "quarantined"):
                v[c.state] += 1
            if c.last is not None and c.last[1] == "refused":
                reason = c.last[2] or "unknown"
                v["refused"][reason] = v["refused"].get(reason, 0) + 1
    rows.sort(key=lambda r: (_rank(r), r["channel"], str(r["version"]), r["node_id"]))
    return {
        "format": 1,
        "nodes_reporting": len(nodes),
        "channels": {ch: dict(sorted(per.items())) for ch, per in sorted(channels.items())},
        "nodes": rows,
    }


# -- what a node says about one channel ------------------------------------------------
# Refusals that say nothing about the release (this node already has it or a newer
# one, is outside the rollout, heard it twice): not an outcome worth reporting.
_QUIET_REFUSALS = frozenset({"not_newer", "outside_rollout", "duplicate", "not_newest"})
_OUTCOME_EVENTS = frozenset(
    {
        "update_refused",
        "download_complete",
        "update_complete",
        "update_failed",
        "rolled_back",
        "quarantined",
        "yanked",
        "rollout_aborted",
    }
)


def _reason(*parts: object) -> str:
    text = " ".join(str(p).strip().splitlines()[0] for p in parts if p and str(p).strip())
    return cut_reason(text)


def next_outcome(
    prev: tuple[str, str, str] | None, event: str, fields: Mapping[str, Any]
) -> tuple[str, str, str] | None:
    """A channel's last outcome (version, result, reason) after ``event``."""
    if event not in _OUTCOME_EVENTS:
        return prev
    version = fields.get("new_version") if event == "update_complete" else fields.get("version")
    if not isinstance(version, str):
        return prev
    reason = fields.get("reason")
    same = prev is not None and prev[0] == version
    if event == "update_refused":
        if reason in _QUIET_REFUSALS:
            return prev
        return (version, "refused", _reason(reason))
    if event == "download_complete":
        if same and prev is not None and prev[1] != "downloaded":
            return prev  # an outcome of this version already says more
        return (version, "downloaded", "")
    if event == "update_complete":
        return (version, "applied", "")
    if event == "update_failed":
        return (version, "update_failed", _reason(reason, fields.get("detail")))
    if event == "rolled_back":
        if same and prev is not None and prev[1] == "update_failed":
            return (version, "rolled_back", prev[2])  # keep the failure's detail
        return (version, "rolled_back", _reason(reason))
    if event == "quarantined":
        if same and prev is not None and prev[1] in ("rolled_back", "update_failed"):
            return prev
        return (version, "quarantined", _reason(reason))
    if event == "yanked":
        return (version, "yanked", _reason(fields.get("reason")))
    if same and prev is not None and prev[1] in ("applied", *FAILED_RESULTS):
        return prev  # this node's own attempt says more than the fleet's abort
    failed, attempted = fields.get("failed"), fields.get("attempted")
    return (version, "aborted", _reason(f"{failed} of {attempted} failed"))


def channel_entry(
    channel: str,
    *,
    installed: str | None,
    downloading: tuple[str, float] | None,
    applying: str | None,
    last: tuple[str, str, str] | None,
    quarantined: Iterable[str],
) -> ChannelReport:
    """One channel of this node's report, its state derived from what it knows."""
    quarantined = tuple(sorted(set(quarantined)))[-MAX_QUARANTINED:]
    pending: str | None = None
    progress = 0
    if applying is not None:
        state, pending, progress = "applying", applying, 100
    elif downloading is not None:
        state, pending = "downloading", downloading[0]
        progress = max(0, min(100, int(downloading[1] * 100)))
    elif last is not None and last[0] != installed and last[1] in ("rolled_back", "yanked"):
        state = "rolled_back"
    elif last is not None and last[0] != installed and last[1] == "quarantined":
        state = "quarantined"
    elif last is not None and last[0] != installed and last[1] in ("refused", "aborted"):
        state = "refused"
    else:
        state = "healthy" if installed is not None else "idle"
    return ChannelReport(channel, installed, state, pending, progress, last, quarantined)
