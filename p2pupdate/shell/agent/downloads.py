"""Downloading a package through the swarm and handing it to the applicator.

A download reports its progress as events; one that fails is reported
(``download_failed``, a reason code and a detail) and handed to the retries; a
finished one is installed at once (``auto_apply``), or waits for ``p2pupdate
apply``, or goes to the self-update hook for the node's own channel.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any

import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.reasons import Reason, split_reason
from p2pupdate.errors import DiskFullError, P2PUpdateError
from p2pupdate.shell.agent.base import DOWNLOAD, INSTALL
from p2pupdate.shell.agent.retries import Retries
from p2pupdate.shell.install.applicator import TargetSpec

__all__ = ["Downloads"]

log = logging.getLogger("p2pupdate.agent")

# errno values that mean "no room" (ENOSPC; EDQUOT: a quota is a full disk too).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class Downloads(Retries):
    """Starts, runs and finishes downloads, and applies what they fetched."""

    def _start_download(self, ann: Announcement, target: TargetSpec | None, apply_it: bool) -> None:
        if self._nursery is None:
            return
        st = self._chan(ann.body.channel)
        scope = trio.CancelScope()
        st.download, st.scope = ann, scope
        self._nursery.start_soon(self._download, ann, target, apply_it, scope)

    def _reuse_candidates(self, channel: str) -> list[Path]:
        """Files that may hold chunks of a new package of ``channel``, likeliest first:
        the installed target (a directory target: its live release), then its backups,
        newest first (the store's cached packages are added by LocalChunks)."""
        out: list[Path] = []
        target = self.targets.get(channel)
        if target is not None:
            out.append(target.path)
        ch = self.applicator.status()["channels"].get(channel, {})
        for b in reversed(ch.get("backups", [])):
            if isinstance(b.get("path"), str):
                out.append(Path(b["path"]))
        return out

    # -- downloading ------------------------------------------------------------------
    async def _download(
        self, ann: Announcement, target: TargetSpec | None, apply_it: bool, scope: trio.CancelScope
    ) -> None:
        b = ann.body
        st = self._chan(b.channel)
        base = {"channel": b.channel, "version": b.version, "package_id": b.package_id.hex()}
        st.progress = {"progress": 0.0, "bytes_done": 0, "bytes_total": b.size}
        try:
            with scope:
                started = time.monotonic()

                def progress(p: float, done: int, total: int, rate: float) -> None:
                    st.progress = {"progress": p, "bytes_done": done, "bytes_total": total}
                    self.events.emit(
                        "download_progress",
                        **base,
                        progress=round(p, 4),
                        bytes_done=done,
                        bytes_total=total,
                        rate=round(rate, 1),
                        peers=len(self.node.peers),
                        sources=self.swarm.sources_of(b.package_id),
                    )

                def started_cb() -> None:
                    self.events.emit("download_started", **base, size=b.size)

                already = self.swarm.store.has_complete(b.package_id)
                try:
                    result = await self.swarm.download(
                        ann, on_progress=progress, on_started=None if already else started_cb
                    )
                except DiskFullError as exc:
                    await self._download_failed(ann, target, apply_it, Reason.DISK_FULL, str(exc))
                    return
                except OSError as exc:
                    kind = Reason.DISK_FULL if exc.errno in _NO_SPACE else Reason.DISK_ERROR
                    await self._download_failed(ann, target, apply_it, kind, str(exc))
                    return
                except P2PUpdateError as exc:
                    # A corrupt state file, a store that lost a file under us: this
                    # download fails, the node and every other download go on.
                    log.error("download of %s %s failed: %s", b.channel, b.version, exc)
                    await self._download_failed(ann, target, apply_it, Reason.ERROR, str(exc))
                    return
                if not result.ok:
                    # The swarm still says "code: detail" in one string; split it here.
                    code, detail = split_reason(result.reason)
                    await self._download_failed(ann, target, apply_it, code, detail)
                    return
                st.failures.pop((b.package_id, DOWNLOAD), None)
                if not already:
                    self.events.emit(
                        "download_complete",
                        **base,
                        size=b.size,
                        seconds=round(time.monotonic() - started, 3),
                        sources=result.sources,
                        reused_bytes=result.reused_bytes,
                    )
                    st.last_download = {
                        "version": b.version,
                        "bytes_total": b.size,
                        "reused_bytes": result.reused_bytes,
                    }
                st.progress = {"progress": 1.0, "bytes_done": b.size, "bytes_total": b.size}
        finally:
            if st.scope is scope:
                st.download, st.scope = None, None
        if scope.cancelled_caught:
            return
        await self._downloaded(ann, target, apply_it)
        await self.maintain_cache()

    async def _downloaded(
        self, ann: Announcement, target: TargetSpec | None, apply_it: bool
    ) -> None:
        if target is None and self.self_update is not None:
            if self.self_update.handles(ann.body.channel):
                await self.self_update.on_downloaded(ann)
            return
        if target is None or not apply_it:
            return
        st = self._chan(ann.body.channel)
        asked = st.apply_when_done == ann.body.package_id
        if asked:
            st.apply_when_done = None
        if not target.auto_apply and not asked:
            st.waiting = ann
            log.info(
                "%s %s downloaded; waiting for `p2pupdate apply`",
                ann.body.channel,
                ann.body.version,
            )
            return
        await self._apply(ann, target)

    async def _apply(self, ann: Announcement, target: TargetSpec) -> bool:
        b = ann.body
        st = self._chan(b.channel)
        reason = self._refusal(ann, target)
        if reason is not None:
            self._refuse(ann, reason)
            return False
        st.applying = True
        try:
            try:
                path = await self.swarm.store.export(b.package_id, self._tmp)
            except (OSError, P2PUpdateError) as exc:
                self.events.emit(
                    "update_failed",
                    channel=b.channel,
                    version=b.version,
                    package_id=b.package_id.hex(),
                    reason=Reason.PACKAGE_MISSING,
                    detail=str(exc),
                )
                self._schedule_retry(ann, target, True, INSTALL, Reason.PACKAGE_MISSING)
                return False
            before = self._last_result(target)
            ok = await self.applicator.apply(
                target, b.version, path, b.package_id, min_version=b.min_version
            )
        finally:
            st.applying = False
        if ok:
            st.failures.pop((b.package_id, INSTALL), None)
            if st.retry is not None and st.retry.ann.body.package_id == b.package_id:
                self._cancel_retry(st)  # installed meanwhile (`p2pupdate apply`)
        else:
            last = self._last_result(target)
            if last is before or last is None:
                reason = Reason.STATE_ERROR  # nothing could be recorded: the state dir failed
            elif last.get("version") == b.version:
                reason = str(last.get("reason") or "")
            else:
                reason = ""
            self._schedule_retry(ann, target, True, INSTALL, reason)
        for attr in ("waiting", "available"):
            held = getattr(st, attr)
            if held is not None and held.body.package_id == b.package_id:
                setattr(st, attr, None)
        return ok

    def _last_result(self, target: TargetSpec) -> dict[str, Any] | None:
        """The applicator's record of the channel's last install result (a fresh dict)."""
        channel = self.applicator.status([target])["channels"].get(target.channel, {})
        last = channel.get("last")
        return last if isinstance(last, dict) else None
