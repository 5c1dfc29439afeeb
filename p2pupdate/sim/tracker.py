"""Following the nodes: tailing their ``--events`` files and keeping a view of each.

:class:`EventTail` reads the new complete lines of one JSON-lines file each
time it is polled (a half-written last line waits for the next poll; a line
that is not a JSON object is counted and skipped). :class:`NodeTrack` folds one
node's events, in order, into what the live view and the report show: state,
progress, rate, installed version, where its chunks came from, its outcome for
each version. It only reads events; it never talks to a node.

Events used (docs/operations.md contract): announcement_received, update_refused,
download_started, download_progress, download_complete, download_failed,
verifying, applying, update_complete, update_failed, rolled_back, quarantined,
peer_banned. Beyond the contract, used when a node sends them:
``peer_connected`` / ``peer_disconnected`` (field ``peer``), and ``sources``
(peer -> chunks so far) or ``peers`` (a count) in ``download_progress``;
otherwise the peer count comes from the node's status snapshot when the
harness can read one, and sources appear with ``download_complete``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OUTCOMES", "EventTail", "NodeTrack"]

# Per-version outcomes, in the order a later one overrides an earlier one.
OUTCOMES = ("refused", "failed", "applied", "rolled_back")
_MAX_LINE = 1 << 20


class EventTail:
    """Incremental reader of one JSON-lines events file (which may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.bad_lines = 0

    def poll(self) -> list[dict[str, Any]]:
        """The events appended since the last poll."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            self._partial = b""
            self.bad_lines += 1
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                out.append(obj)
            else:
                self.bad_lines += 1
        return out


def _num(value: object, default: float = 0.0) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


@dataclass
class NodeTrack:
    """What one node has been seen doing, built from its events."""

    index: int
    name: str
    address: str
    process: str = "waiting"  # waiting, running, killed, exited, stopped
    state: str = "idle"
    version: str | None = None  # installed, as far as events tell
    target_version: str | None = None  # the version being fetched/applied
    progress: float = 0.0
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    peers: int | None = None
    connected: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)  # peer -> chunks (last complete)
    reused_bytes: int = 0  # copied from local files (last complete)
    outcomes: dict[str, str] = field(default_factory=dict)  # version -> outcome
    outcome_at: dict[str, float] = field(default_factory=dict)  # version -> time
    quarantined: set[str] = field(default_factory=set)
    bans: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    started_at: float | None = None
    exit_code: int | None = None
    last_reason: str = ""

    def feed(self, ev: dict[str, Any]) -> None:
        """Fold one event into the view."""
        self.events.append(ev)
        name = ev.get("event")
        version = ev.get("version") if isinstance(ev.get("version"), str) else None
        t = _num(ev.get("t"))
        if name == "announcement_received":
            if self.state in ("idle", "applied", "rolled back", "refused", "failed"):
                self.state = "announced"
            self.target_version = version or self.target_version
        elif name == "update_refused":
            self.last_reason = str(ev.get("reason", ""))
            if version is not None and version not in self.outcomes:
                self._outcome(version, "refused", t)
                if self.state == "announced":
                    self.state = "refused"
        elif name == "download_started":
            self.state = "downloading"
            self.target_version = version or self.target_version
            self.progress = 0.0
            self.rate = 0.0
        elif name == "download_progress":
            self.state = "downloading"
            self.progress = min(1.0, max(0.0, _num(ev.get("progress"), self.progress)))
            self.bytes_done = int(_num(ev.get("bytes_done"), self.bytes_done))
            self.bytes_total = int(_num(ev.get("bytes_total"), self.bytes_total))
            self.rate = _num(ev.get("rate"), self.rate)
            self._optional_fields(ev)
        elif name == "download_complete":
            self.progress = 1.0
            self.rate = 0.0
            self.state = "downloaded"
            sources = ev.get("sources")
            if isinstance(sources, dict):
                self.sources = {str(k): int(_num(v)) for k, v in sources.items()}
            self.reused_bytes = int(_num(ev.get("reused_bytes")))
        elif name == "download_failed":
            self.state = "download failed"
            self.last_reason = str(ev.get("reason", ""))
        elif name == "verifying":
            self.state = "verifying"
        elif name == "applying":
            self.state = "applying"
        elif name == "update_complete":
            self.state = "applied"
            new = ev.get("new_version")
            self.version = new if isinstance(new, str) else version
            if self.version is not None:
                self._outcome(self.version, "applied", t)
        elif name == "update_failed":
            self.state = "update failed"
            self.last_reason = str(ev.get("reason", ""))
            if version is not None:
                self._outcome(version, "failed", t)
        elif name == "rolled_back":
            self.state = "rolled back"
            restored = ev.get("restored_version")
            if isinstance(restored, str):
                self.version = restored
            if version is not None:
                self._outcome(version, "rolled_back", t)
        elif name == "quarantined":
            if version is not None:
                self.quarantined.add(version)
                if self.state != "rolled back":
                    self.state = "quarantined"
        elif name == "peer_banned":
            self.bans.append(ev)
        elif name == "peer_connected":
            self.connected.add(str(ev.get("peer")))
            self.peers = len(self.connected)
        elif name == "peer_disconnected":
            self.connected.discard(str(ev.get("peer")))
            self.peers = len(self.connected)

    def _optional_fields(self, ev: dict[str, Any]) -> None:
        """Fields beyond the contract, used when a node sends them: live sources, peers."""
        sources = ev.get("sources")
        if isinstance(sources, dict):
            self.sources = {str(k): int(_num(v)) for k, v in sources.items()}
        peers = ev.get("peers")
        if isinstance(peers, int) and not isinstance(peers, bool) and not self.connected:
            self.peers = peers

    def _outcome(self, version: str, outcome: str, t: float) -> None:
        old = self.outcomes.get(version)
        if old is None or OUTCOMES.index(outcome) >= OUTCOMES.index(old):
            self.outcomes[version] = outcome
            self.outcome_at[version] = t

    def settled(self, version: str) -> bool:
        """Whether this node reached a final outcome for ``version``."""
        outcome = self.outcomes.get(version)
        if outcome == "rolled_back":
            return version in self.quarantined
        return outcome is not None

    def first(self, event: str, version: str | None = None) -> dict[str, Any] | None:
        """The first event named ``event`` (for ``version``, when given)."""
        for ev in self.events:
            if ev.get("event") == event and (version is None or ev.get("version") == version):
                return ev
        return None
