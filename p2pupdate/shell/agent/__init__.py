"""The agent: what a node does with an accepted announcement.

It joins the gossip layer (``shell.net.node``), the swarm (``shell.transfer.swarm``) and
the applicator (``shell.applicator``): for an announcement that concerns one
of its targets it runs the one act gate (``core.policy.act_decision``, with the
applicator's installed version, quarantine and size limit), downloads, and applies (or waits for
``p2pupdate apply`` when ``auto_apply`` is off). A node outside the rollout,
or with no target for the channel, still downloads, caches and serves.
A newer announcement for a channel supersedes an older download.

A download or install step that failed for a reason that can pass (a full
disk, a disk or store error, sources gone, ...) is tried again: which reasons,
and after how long, is :mod:`p2pupdate.core.retry`'s decision; the agent only
sleeps until then, or wakes early when the condition is seen to be gone (free
space back, polled cheaply; a peer advertising the package).

It also answers the control socket (status, apply, rollback, quarantine
clear). It makes no protocol decision itself.

The agent is split by concern, one module each, put together here:
:mod:`.base` (state, the act gate, refusals, the cache), :mod:`.retries`,
:mod:`.downloads` (download and apply), :mod:`.feedback` (reports, staged rollouts,
aborts, yanks) and :mod:`.control` (the control socket and ``status``). They share
one state (the channels), so they are mixins of one class, each under 300 lines.
"""

from __future__ import annotations

import logging
import random
import shutil

import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.reasons import Reason
from p2pupdate.shell.agent.base import AgentOptions, SelfUpdateHook
from p2pupdate.shell.agent.control import Control
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.net.node import Node, PeerConn
from p2pupdate.shell.transfer.reuse import LocalChunks
from p2pupdate.shell.transfer.swarm import Swarm

__all__ = ["Agent", "AgentOptions", "SelfUpdateHook"]

log = logging.getLogger("p2pupdate.agent")


class Agent(Control):
    """What a node does with an accepted announcement (see the module doc)."""

    def __init__(
        self,
        node: Node,
        swarm: Swarm,
        applicator: Applicator,
        events: EventLog,
        options: AgentOptions,
        *,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(node, swarm, applicator, events, options, rng=rng)
        node.on_announcement = self.on_announcement
        swarm.on_source = self.on_source
        # Unchanged chunks come from the installed target, its backups and older packages.
        self.local_chunks = LocalChunks(swarm.store, self._reuse_candidates)
        swarm.fetcher.local_chunks = self.local_chunks.fill
        events.listeners.append(self._on_event)
        node.reports.build = self._build_report
        node.reports.listeners.append(self._on_report)
        node.yanks.listeners.append(self._on_yank)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover interrupted installs, resume what the data dir holds, then serve."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Ready at once (systemd READY=1 follows): recovery and resume run while
                # the node serves; an install that arrives meanwhile waits on the
                # applicator's per-channel lock and finishes any pending record first.
                task_status.started()
                await self.applicator.recover(list(self.targets.values()))
                for yank in self.node.yanks.all():
                    self._on_yank(yank)
                nursery.start_soon(self._stage_loop)
                for ann in self.node.book.all_newest():
                    pid = ann.body.package_id
                    if not self.swarm.store.has_complete(pid):
                        continue
                    # A cached package is re-hashed before it is served again: a corrupt
                    # one is dropped (and fetched again when it is needed), never served.
                    if await self.swarm.store.verify_complete(pid):
                        await self.swarm.add_complete(ann)
                    else:
                        log.warning("dropped corrupt cached package %s", pid.hex()[:16])
                for ann in self.node.book.all_newest():
                    await self.on_announcement(ann, None)
                await self.maintain_cache()
                await trio.sleep_forever()
        finally:
            # The export dir is ours alone (DiskStore exports leave it empty); no await
            # here, so it goes even when run is cancelled.
            shutil.rmtree(self._tmp, ignore_errors=True)

    async def reload_targets(self, targets: tuple[TargetSpec, ...]) -> list[str]:
        """New targets from a config reload (SIGHUP); returns the channels that changed.

        A target that is new or changed is handed the channel's newest announcement
        again, as if it had just arrived, so a release it lacks is downloaded and
        applied now, not at the next release. A removed target is no longer installed
        into (what is installed stays; the node still relays and caches the channel).
        """
        new = {t.channel: t for t in targets}
        changed = sorted(
            ch for ch in set(new) | set(self.targets) if new.get(ch) != self.targets.get(ch)
        )
        self.targets = new
        for channel in changed:
            ann = self.node.book.newest(channel)
            if channel in new and ann is not None:
                await self.on_announcement(ann, None)
        return changed

    async def on_announcement(self, ann: Announcement, peer: PeerConn | None) -> None:
        """Called by the node for every announcement that passed the relay decision."""
        b = ann.body
        st = self._chan(b.channel)
        target = self.targets.get(b.channel)
        apply_it = False
        if self.self_update is not None and self.self_update.handles(b.channel):
            self.self_update.on_announcement(ann)
        stopped = self._stopped(ann)
        if stopped is not None:
            # Not downloaded either (not even to cache it for others).
            if target is not None and self.applicator.installed_version(target) != b.version:
                self._refuse(ann, stopped)
            return
        if target is not None:
            reason = self._refusal(ann, target)
            if (
                reason == Reason.NOT_NEWER
                and self.applicator.installed_version(target) == b.version
            ):
                return  # already installed: nothing to say
            if reason is not None:
                self._refuse(ann, reason)
                if reason != Reason.OUTSIDE_ROLLOUT:
                    return
            else:
                apply_it = True
        elif b.size > self.options.cache_size:
            return  # relay only: too big to cache for others
        if st.retry is not None:
            if st.retry.ann.body.package_id == b.package_id:
                # Already waiting to try this package again; a re-signed replacement
                # (wider rollout) is what the retry will act on.
                st.retry.ann, st.retry.target = ann, target
                st.retry.apply_it = st.retry.apply_it or apply_it
                return
            self._cancel_retry(st)  # superseded
        if st.download is not None:
            if st.download.body.package_id == b.package_id:
                return  # already on it (a re-signed replacement changes nothing here)
            if st.scope is not None:
                log.info("%s %s supersedes %s", b.channel, b.version, st.download.body.version)
                st.scope.cancel()
        if not self.options.auto_download:
            st.available = ann
            if self.swarm.store.has_complete(b.package_id) and self._nursery is not None:
                # In the agent's nursery, not the caller's (a peer's reader task): a
                # peer that disconnects must not cancel an install half way.
                self._nursery.start_soon(self._downloaded, ann, target, apply_it)
            return
        self._start_download(ann, target, apply_it)
