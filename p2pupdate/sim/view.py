"""What a person sees while a simulation runs: a live table, or plain lines.

:class:`LiveView` (a terminal) redraws a rich table a few times a second, one
row per node: process, state, installed version, a progress bar, rate, peers
and where its chunks came from, with the last few harness notes below.
:class:`PlainView` (``--no-live``, or output not a terminal) prints one line
per notable event instead (state changes, progress quarters, bans, faults), so
logs and CI output stay readable. Both only display what they are given.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from p2pupdate.core.units import format_size
from p2pupdate.sim.tracker import NodeTrack

__all__ = ["LiveView", "PlainView", "View", "format_sources", "make_view"]

_NOTABLE = {
    "announcement_received": "announcement received",
    "update_refused": "refused",
    "download_started": "download started",
    "download_complete": "download complete",
    "download_failed": "download failed",
    "verifying": "verifying",
    "applying": "applying",
    "update_complete": "applied",
    "update_failed": "update failed",
    "rolled_back": "rolled back",
    "quarantined": "quarantined",
    "peer_banned": "banned a peer",
    "self_update_available": "self-update available",
    "self_update_installed": "self-update installed",
    "self_update_restarting": "self-update: re-exec into",
    "self_update_confirmed": "self-update confirmed",
    "self_update_rolled_back": "self-update rolled back",
}
_STATE_STYLE = {
    "applied": "bold green",
    "rolled back": "bold yellow",
    "quarantined": "yellow",
    "downloading": "cyan",
    "verifying": "magenta",
    "applying": "magenta",
    "update failed": "bold red",
    "download failed": "red",
    "refused": "yellow",
}


def format_sources(sources: Mapping[str, int], labels: Mapping[str, str], top: int = 3) -> str:
    """``authority 50% n02 30% n05 20%``: the biggest sources of a node's chunks."""
    total = sum(sources.values())
    if not total:
        return ""
    ranked = sorted(sources.items(), key=lambda kv: -kv[1])
    parts = [f"{labels.get(k, k)} {100 * v / total:.0f}%" for k, v in ranked[:top]]
    if len(ranked) > top:
        parts.append(f"+{len(ranked) - top}")
    return " ".join(parts)


class View(Protocol):
    def start(self) -> None: ...

    def note(self, text: str) -> None: ...

    def event(self, track: NodeTrack, ev: dict[str, Any]) -> None: ...

    def refresh(
        self, tracks: Sequence[NodeTrack], labels: Mapping[str, str], header: str
    ) -> None: ...

    def stop(self) -> None: ...


class PlainView:
    """Plain lines: ``[  3.21s] n03 applied 2.0.0``."""

    def __init__(self, started: float, out: TextIO | None = None) -> None:
        self.started = started
        self.out = out or sys.stdout
        self._quarter: dict[str, int] = {}

    def _line(self, text: str, t: float | None = None) -> None:
        when = (time.time() if t is None else t) - self.started
        print(f"[{when:7.2f}s] {text}", file=self.out, flush=True)

    def start(self) -> None:
        return None

    def note(self, text: str) -> None:
        self._line(text)

    def event(self, track: NodeTrack, ev: dict[str, Any]) -> None:
        name = str(ev.get("event"))
        version = ev.get("version")
        vtext = f" {version}" if isinstance(version, str) else ""
        t = ev.get("t")
        when = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
        if name == "download_progress":
            quarter = int(4 * track.progress)
            if 0 < quarter < 4 and quarter > self._quarter.get(track.name, 0):
                self._quarter[track.name] = quarter
                rate = format_size(track.rate)
                self._line(f"{track.name} {25 * quarter}%{vtext} ({rate}/s)", when)
            return
        if name == "download_started":
            self._quarter[track.name] = 0
        label = _NOTABLE.get(name)
        if label is None:
            return
        extra = ""
        if name in ("update_refused", "download_failed", "update_failed"):
            extra = f": {ev.get('reason')}"
        elif name == "peer_banned":
            detail = f" ({ev['detail']})" if ev.get("detail") else ""
            extra = f" {ev.get('peer')}: {ev.get('reason')}{detail}"
        elif name == "update_complete":
            extra = f" ({ev.get('old_version')} -> {ev.get('new_version')})"
        self._line(f"{track.name} {label}{vtext}{extra}", when)

    def refresh(self, tracks: Sequence[NodeTrack], labels: Mapping[str, str], header: str) -> None:
        return None

    def stop(self) -> None:
        return None


class LiveView:
    """A rich table redrawn in place; harness notes scroll below it."""

    def __init__(self, started: float, console: Console | None = None) -> None:
        self.started = started
        self.console = console or Console()
        self.notes: deque[str] = deque(maxlen=8)
        self._live: Live | None = None

    def start(self) -> None:
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._live.start()

    def note(self, text: str) -> None:
        self.notes.append(f"[{time.time() - self.started:6.1f}s] {text}")

    def event(self, track: NodeTrack, ev: dict[str, Any]) -> None:
        name = str(ev.get("event"))
        if name in ("peer_banned", "update_failed", "download_failed", "rolled_back"):
            reason = ev.get("reason") or ev.get("peer") or ev.get("version") or ""
            self.note(f"{track.name} {_NOTABLE.get(name, name)} {reason}")

    def render(self, tracks: Sequence[NodeTrack], labels: Mapping[str, str], header: str) -> Group:
        table = Table(title=header, title_justify="left", expand=False, pad_edge=False)
        table.add_column("node")
        table.add_column("process")
        table.add_column("state")
        table.add_column("version")
        table.add_column("progress", min_width=28)
        table.add_column("rate", justify="right")
        table.add_column("peers", justify="right")
        table.add_column("chunks from")
        for tr in tracks:
            bar = ProgressBar(total=1.0, completed=tr.progress, width=20)
            prog = Table.grid(padding=(0, 1))
            prog.add_row(bar, Text(f"{100 * tr.progress:5.1f}%"))
            state = tr.state + (
                f" {tr.target_version}" if tr.state == "downloading" and tr.target_version else ""
            )
            table.add_row(
                tr.name,
                tr.process + (f" (x{tr.restarts + 1})" if tr.restarts else ""),
                Text(state, style=_STATE_STYLE.get(tr.state, "")),
                tr.version or "-",
                prog,
                f"{format_size(tr.rate)}/s" if tr.state == "downloading" else "",
                "-" if tr.peers is None else str(tr.peers),
                format_sources(tr.sources, labels),
            )
        return Group(table, Text("\n".join(self.notes), style="dim"))

    def refresh(self, tracks: Sequence[NodeTrack], labels: Mapping[str, str], header: str) -> None:
        if self._live is not None:
            self._live.update(self.render(tracks, labels, header), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def make_view(live: bool, started: float) -> View:
    """A live view when asked for and stdout is a terminal, else plain lines."""
    if live and sys.stdout.isatty():
        return LiveView(started)
    return PlainView(started)
