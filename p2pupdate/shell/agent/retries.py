"""Trying a failed download or install step again (``core.retry`` decides).

Which reasons are retried, and after how long, is the core's decision; the agent
only waits until then, or wakes early when the condition is seen to be gone (free
space back, polled cheaply; a peer advertising the package).
"""

from __future__ import annotations

import logging
import time

import trio
from bitarray.util import zeros

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.chunks import chunk_count
from p2pupdate.core.reasons import Reason
from p2pupdate.core.retry import FREE_SPACE, NEW_SOURCE, Retry, decide
from p2pupdate.errors import P2PUpdateError
from p2pupdate.shell.agent.base import DOWNLOAD, INSTALL, AgentBase, PendingRetry
from p2pupdate.shell.install.applicator import TargetSpec

__all__ = ["Retries"]

log = logging.getLogger("p2pupdate.agent")


class Retries(AgentBase):
    """Schedules, waits out and runs the retries of failed steps."""

    def _start_download(self, ann: Announcement, target: TargetSpec | None, apply_it: bool) -> None:
        raise NotImplementedError  # shell.agent.downloads

    async def _apply(self, ann: Announcement, target: TargetSpec) -> bool:
        raise NotImplementedError  # shell.agent.downloads

    async def _download_failed(
        self,
        ann: Announcement,
        target: TargetSpec | None,
        apply_it: bool,
        reason: str,
        detail: str = "",
    ) -> None:
        b = ann.body
        self.events.emit(
            "download_failed",
            channel=b.channel,
            version=b.version,
            package_id=b.package_id.hex(),
            reason=reason,
            detail=detail,
        )
        if reason == Reason.PACKAGE_HASH_MISMATCH:
            # Every chunk was verified when it arrived, so the partial file changed
            # under us (a bad disk): an empty bitmap makes the next try re-hash every
            # chunk from the file, keep the good ones and fetch the rest again.
            try:
                await self.swarm.store.persist(b.package_id, zeros(chunk_count(b.size)))
            except (OSError, P2PUpdateError, ValueError) as exc:
                log.warning("could not reset the bitmap of %s: %s", b.package_id.hex()[:16], exc)
        self._schedule_retry(ann, target, apply_it, DOWNLOAD, reason)

    def _schedule_retry(
        self,
        ann: Announcement,
        target: TargetSpec | None,
        apply_it: bool,
        step: str,
        reason: str,
    ) -> None:
        """Ask the core whether (and when) to try ``step`` again; start the wait."""
        b = ann.body
        st = self._chan(b.channel)
        key = (b.package_id, step)
        if self._nursery is None or not reason:
            return
        decision = decide(reason, st.failures.get(key, 0) + 1, self.backoff, self.rng)
        if not isinstance(decision, Retry):
            st.failures.pop(key, None)
            return
        st.failures[key] = decision.attempt
        self._cancel_retry(st)
        now = trio.current_time()
        # A new source concerns downloads only; free space is watched for both steps.
        wake_on = decision.wake_on if step == DOWNLOAD or decision.wake_on == FREE_SPACE else None
        retry = PendingRetry(
            ann=ann,
            target=target,
            apply_it=apply_it,
            step=step,
            reason=decision.reason,
            attempt=decision.attempt,
            delay=decision.delay,
            due=now + decision.delay,
            next_try=time.time() + decision.delay,
            wake_on=wake_on,
        )
        if wake_on == FREE_SPACE:
            retry.seen_full = not self._has_room(retry)
        st.retry = retry
        log.warning(
            "%s %s %s failed (%s); trying again in %.0f s (attempt %d)",
            b.channel,
            b.version,
            step,
            decision.reason,
            decision.delay,
            decision.attempt,
        )
        self.events.emit(
            "download_retry" if step == DOWNLOAD else "install_retry",
            channel=b.channel,
            version=b.version,
            package_id=b.package_id.hex(),
            attempt=decision.attempt,
            delay=round(decision.delay, 3),
            reason=decision.reason,
            wake_on=wake_on,
        )
        self._nursery.start_soon(self._retry_later, retry)

    def on_source(self, package_id: bytes) -> None:
        """The swarm heard that a connected peer holds chunks of ``package_id``."""
        for st in self.channels.values():
            r = st.retry
            if r is not None and r.wake_on == NEW_SOURCE and r.ann.body.package_id == package_id:
                r.wake.set()

    def _has_room(self, r: PendingRetry) -> bool:
        b = r.ann.body
        if r.step == INSTALL and r.target is not None:
            return self.applicator.has_room(r.target, b.size)
        return self.swarm.store.has_room(b.package_id, b.size)

    async def _retry_later(self, r: PendingRetry) -> None:
        b = r.ann.body
        st = self._chan(b.channel)
        with r.scope:
            with trio.move_on_at(r.due):
                if r.wake_on == FREE_SPACE:
                    # Poll free space cheaply (one statvfs). Only a change counts: the
                    # disk seen full, then with room for the package. A write that
                    # failed while the numbers said there was room (a sparse file, a
                    # quota) waits out its back-off instead of failing in a loop.
                    seen_full = r.seen_full
                    while True:
                        room = self._has_room(r)
                        if room and seen_full:
                            break
                        seen_full = seen_full or not room
                        with trio.move_on_after(self.options.free_space_poll):
                            await r.wake.wait()
                        if r.wake.is_set():
                            break
                else:
                    await r.wake.wait()
            if st.retry is not r:
                return
            st.retry = None
            newest = self.node.book.newest(b.channel)
            if newest is not None and newest.body.package_id != b.package_id:
                return  # superseded meanwhile
            if r.target is not None:
                reason = self._refusal(r.ann, r.target)
                if reason is not None and reason != Reason.OUTSIDE_ROLLOUT:
                    return  # refused now (quarantined, installed, ...): final
            log.info("%s %s: trying the %s again", b.channel, b.version, r.step)
            if r.step == DOWNLOAD:
                if st.download is None:
                    self._start_download(r.ann, r.target, r.apply_it)
                return
        if r.scope.cancelled_caught or r.step != INSTALL or r.target is None:
            return
        await self._apply(r.ann, r.target)
