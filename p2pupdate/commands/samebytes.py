"""``publish`` warns when a file's bytes were already published under another version.

Publishing the same bytes as a new version is nearly always a mistake (a build
that did not change, the wrong file): every node "updates" to what it has. Two
sources tell the publisher:

1. **Its own history.** Every publish records ``channel``, ``version`` and
   package id in a small JSON-lines file in the publisher's state directory
   (``$XDG_STATE_HOME/p2pupdate-publish/history.jsonl``, else
   ``~/.local/state/p2pupdate-publish/history.jsonl``; the newest
   :data:`MAX_HISTORY` records are kept). Checked before anything is sent, so
   the warning is certain for releases published from this machine. A damaged
   or unreadable file is ignored line by line (it is a hint, never a reason to
   fail a publish).
2. **The fleet.** As it connects, the publisher pulls the announcements the
   nodes hold (their inventories); one for the same channel, another version
   and this package id also warns. This one is best effort: a node that takes
   the new announcement before the publisher's pull is answered no longer
   offers the old one.

Either way publish goes on; it prints one warning line per earlier version.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import Decision
from p2pupdate.shell.datadir import xdg_state_home
from p2pupdate.shell.fsutil import atomic_write_bytes

__all__ = ["MAX_HISTORY", "SameBytesWarning", "history_path"]

# Records kept in the history file: a release machine publishing hourly to a few
# channels keeps months of history in well under a megabyte.
MAX_HISTORY = 2000
# A line longer than this is not a record we wrote (channel <= 259, version <= 256).
_MAX_LINE = 1024


def history_path(env: Mapping[str, str] | None = None) -> Path:
    """Where this user's publish history lives (XDG state dir, as for a node)."""
    state = xdg_state_home(os.environ if env is None else env)
    return state / "p2pupdate-publish" / "history.jsonl"


def _read(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(MAX_HISTORY * _MAX_LINE).splitlines()
    except OSError:
        return []
    out: list[dict[str, str]] = []
    for line in lines[-MAX_HISTORY:]:
        if len(line) > _MAX_LINE:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and all(
            isinstance(rec.get(k), str) for k in ("channel", "version", "package_id")
        ):
            out.append({k: rec[k] for k in ("channel", "version", "package_id")})
    return out


class SameBytesWarning:
    """Warn once per earlier version that had these very bytes on this channel."""

    def __init__(
        self, channel: str, version: str, file: Path, package_id: bytes, history: Path
    ) -> None:
        self.channel = channel
        self.version = version
        self.file = file
        self.package_id = package_id
        self.history = history
        self.warned: set[str] = set()

    def _warn(self, version: str, where: str) -> None:
        if version == self.version or version in self.warned:
            return
        self.warned.add(version)
        print(
            f"publish: warning: {self.file} has the same bytes (package id "
            f"{self.package_id.hex()[:16]}...) as {self.channel} {version}, {where}: "
            f"{self.version} would change nothing",
            file=sys.stderr,
            flush=True,
        )

    def check_history(self) -> None:
        """Warn from the local history (before anything is sent)."""
        pid = self.package_id.hex()
        for rec in _read(self.history):
            if rec["channel"] == self.channel and rec["package_id"] == pid:
                self._warn(rec["version"], "published from here before")

    def record(self) -> None:
        """Append this publication to the history (kept to MAX_HISTORY records)."""
        recs = [
            r
            for r in _read(self.history)
            if (r["channel"], r["version"]) != (self.channel, self.version)
        ]
        recs.append(
            {"channel": self.channel, "version": self.version, "package_id": self.package_id.hex()}
        )
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs[-MAX_HISTORY:])
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.history, data.encode())
        except OSError:
            pass  # a read-only home: the history is a hint, never a reason to fail

    def check_announcement(self, ann: Announcement, _decision: Decision) -> None:
        """The node book's ``on_genuine`` hook: an announcement heard from the fleet."""
        b = ann.body
        if b.channel == self.channel and b.package_id == self.package_id:
            self._warn(b.version, "which the fleet already has")
