"""What the agent learns from the fleet: node reports, staged rollouts, aborts, yanks.

Its own report (``core.reports``) is rebuilt from the events as they are written;
each stage of a staged release that opens hands the release to the agent again; a
release whose abort rule fires (members' reports only, with membership on) is
stopped; a yanked one is stopped and, if installed, rolled back.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from p2pupdate import __version__
from p2pupdate.core import reports
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.yank import Yank
from p2pupdate.shell.agent.base import AgentBase, ChannelState
from p2pupdate.shell.install.applicator import TargetSpec
from p2pupdate.shell.net.node import PeerConn

__all__ = ["Feedback"]

log = logging.getLogger("p2pupdate.agent")


class Feedback(AgentBase):
    """Node reports, staged rollouts, aborts and yanks (see the module doc)."""

    async def on_announcement(self, ann: Announcement, peer: PeerConn | None) -> None:
        raise NotImplementedError  # shell.agent.Agent

    # -- node report ------------------------------------------------------------------
    def _on_event(self, name: str, record: dict[str, Any]) -> None:
        channel = record.get("channel")
        if not isinstance(channel, str) or channel not in self.targets:
            return
        if name == "applying" and isinstance(record.get("version"), str):
            self._applying[channel] = record["version"]
        elif name in ("update_complete", "update_failed", "rolled_back", "quarantined"):
            self._applying.pop(channel, None)
        prev = self.outcomes.get(channel)
        new = reports.next_outcome(prev, name, record)
        if new is not None:
            self.outcomes[channel] = new
        if new != prev or name in ("applying", "download_started", "update_complete"):
            self.node.reports.changed()

    def _build_report(self) -> reports.NodeReport:
        applied = self.applicator.status(list(self.targets.values()))["channels"]
        entries = []
        for ch, target in sorted(self.targets.items()):
            st = self.channels.get(ch, ChannelState())
            a = applied.get(ch, {})
            downloading = None
            if st.download is not None:
                downloading = (st.download.body.version, float(st.progress.get("progress", 0.0)))
            entries.append(
                reports.channel_entry(
                    ch,
                    installed=self.applicator.installed_version(target),
                    downloading=downloading,
                    applying=self._applying.get(ch),
                    last=self.outcomes.get(ch),
                    quarantined=[q["version"] for q in a.get("quarantined", [])],
                )
            )
        host, port = self.node.listen_addr
        return reports.NodeReport(
            self.node.node_id,
            0,
            0,
            f"{host}:{port}"[:64],
            f"p2pupdate/{__version__}"[:32],
            tuple(entries),
        )

    # -- staged rollout, abort, yank -----------------------------------------------------
    async def _stage_loop(self) -> None:
        """Re-examine a staged release each time one of its stages opens."""
        seen: dict[bytes, int] = {}
        while True:
            now = self.node.wall_clock()
            wait = 5.0
            for ann in self.node.book.all_newest():
                b = ann.body
                if not b.stages:
                    continue
                pct = b.rollout_at(now)
                if seen.setdefault(ann.id, pct) != pct:
                    seen[ann.id] = pct
                    log.info("%s %s: stage %d%% open", b.channel, b.version, pct)
                    self.events.emit("rollout_stage", channel=b.channel, version=b.version,
                                     rollout=pct)  # fmt: skip
                    await self.on_announcement(ann, None)
                nxt = b.next_stage_at(now)
                if nxt is not None:
                    wait = min(wait, max(0.05, nxt - now))
            await trio.sleep(wait)

    def _on_report(self, signed: reports.SignedReport) -> None:
        for ann in self.node.book.all_newest():
            b = ann.body
            if b.abort is None or (b.channel, b.version) in self.aborted:
                continue
            if signed.report.channel(b.channel) is None:
                continue
            # With fleet membership on, only members' reports count toward an abort
            # (docs/security.md); the fleet view still shows every report.
            counted = [
                r for r in self.node.reports.book.all() if self.node.is_member(r.report.node_id)
            ]
            failed, attempted = reports.abort_tally(counted, b.channel, b.version)
            if not reports.AbortRule(*b.abort).fired(failed, attempted):
                continue
            self.aborted.add((b.channel, b.version))
            st = self._chan(b.channel)
            if st.download is not None and st.download.body.version == b.version and st.scope:
                st.scope.cancel()
            if st.retry is not None and st.retry.ann.body.version == b.version:
                self._cancel_retry(st)
            self.events.emit(
                "rollout_aborted",
                channel=b.channel,
                version=b.version,
                failed=failed,
                attempted=attempted,
            )

    def _on_yank(self, yank: Yank) -> None:
        b = yank.body
        st = self._chan(b.channel)
        if st.download is not None and st.download.body.version == b.version and st.scope:
            st.scope.cancel()
        target = self.targets.get(b.channel)
        if target is None or self._nursery is None:
            return
        self._nursery.start_soon(self._undo_yanked, target, b.version, b.reason)

    async def _undo_yanked(self, target: TargetSpec, version: str, reason: str) -> None:
        restored = None
        if self.applicator.installed_version(target) == version:
            log.warning("%s %s was yanked; rolling back", target.channel, version)
            if await self.applicator.rollback(target):
                restored = self.applicator.installed_version(target)
        self.events.emit(
            "yanked",
            channel=target.channel,
            version=version,
            restored_version=restored,
            reason=reason,
        )

    def fleet(self, channel: str | None) -> dict[str, Any]:
        """The node's view of the fleet (``p2pupdate fleet``)."""
        return reports.fleet_view(self.node.reports.book.all(), self.node.wall_clock(), channel)
