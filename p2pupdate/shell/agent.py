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
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from bitarray.util import zeros

from p2pupdate import __version__
from p2pupdate.core import reports
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.chunks import chunk_count
from p2pupdate.core.policy import act_decision, valid_now
from p2pupdate.core.reasons import Reason, split_reason
from p2pupdate.core.retry import FREE_SPACE, NEW_SOURCE, Backoff, Retry, decide
from p2pupdate.core.store import PIN_IN_PROGRESS, PIN_INSTALLED, PIN_NEWEST, CacheIndex
from p2pupdate.core.versions import is_newer
from p2pupdate.core.yank import Yank
from p2pupdate.errors import DiskFullError, P2PUpdateError
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.net.node import Node, PeerConn
from p2pupdate.shell.tmpdirs import node_tmp_dir
from p2pupdate.shell.transfer.reuse import LocalChunks
from p2pupdate.shell.transfer.swarm import Swarm

__all__ = ["Agent", "AgentOptions", "SelfUpdateHook"]

log = logging.getLogger("p2pupdate.agent")


# While a disk-full retry waits, free space is looked at this often (one statvfs).
FREE_SPACE_POLL = 2.0

DOWNLOAD = "download"
INSTALL = "install"


@dataclass
class AgentOptions:
    targets: tuple[TargetSpec, ...] = ()
    auto_download: bool = True
    cache_size: int = 1024**3
    retry_min: float = 30.0  # first wait before a failed step is tried again
    retry_max: float = 1800.0  # the wait doubles up to this
    free_space_poll: float = FREE_SPACE_POLL


class SelfUpdateHook(Protocol):
    """The node's own program (``p2pupdate.selfupdate.manager.SelfUpdater``)."""

    def handles(self, channel: str) -> bool: ...

    def on_announcement(self, ann: Announcement) -> None: ...

    async def on_downloaded(self, ann: Announcement) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def status_line(self) -> str: ...


@dataclass
class _PendingRetry:
    """A failed step waiting to be tried again (one per channel at most)."""

    ann: Announcement
    target: TargetSpec | None
    apply_it: bool
    step: str  # DOWNLOAD or INSTALL
    reason: str
    attempt: int
    delay: float
    due: float  # trio clock
    next_try: float  # unix time, for status
    wake_on: str | None
    # FREE_SPACE: whether the free-space check failed when the step failed (judged then,
    # not when the waiting task first runs: space freed in between must still count).
    seen_full: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wake: trio.Event = field(default_factory=trio.Event)


@dataclass
class _ChannelState:
    download: Announcement | None = None
    scope: trio.CancelScope | None = None
    waiting: Announcement | None = None  # downloaded, needs `p2pupdate apply`
    available: Announcement | None = None  # not downloaded (auto_download off)
    last_refusal: dict[str, str] | None = None
    applying: bool = False
    # Package id that `p2pupdate apply` asked for before its download finished.
    apply_when_done: bytes | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    # The last completed download: version, bytes copied from local files, bytes fetched.
    last_download: dict[str, Any] | None = None
    retry: _PendingRetry | None = None
    # (package id, step) -> failures in a row that were retried
    failures: dict[tuple[bytes, str], int] = field(default_factory=dict)


class Agent:
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
        self.node = node
        self.swarm = swarm
        self.applicator = applicator
        self.events = events
        self.options = options
        self.targets = {t.channel: t for t in options.targets}
        self.channels: dict[str, _ChannelState] = {}
        self._nursery: trio.Nursery | None = None
        # Under the data dir (cleaned at the next start), so a killed node leaves no
        # directory behind in the system's temp dir.
        data_dir = node.options.data_dir
        tmp_base = node_tmp_dir(data_dir) if data_dir is not None else None
        self._tmp = Path(tempfile.mkdtemp(prefix="p2pupdate-export-", dir=tmp_base))
        self.cache = CacheIndex(options.cache_size)
        self.rng = rng or random.Random()
        self.backoff = Backoff(first=options.retry_min, limit=options.retry_max)
        # Self-update: its own channel is cached like any other and handed to the hook.
        self.self_update: SelfUpdateHook | None = None
        self.self_update_off = "off: not a managed install"
        node.on_announcement = self.on_announcement
        swarm.on_source = self.on_source
        # Unchanged chunks come from the installed target, its backups and older packages.
        self.local_chunks = LocalChunks(swarm.store, self._reuse_candidates)
        swarm.fetcher.local_chunks = self.local_chunks.fill
        # Node reports (docs/protocol.md): the last outcome per channel comes from the
        # events as they are written; every one that changes it re-issues the report.
        self.outcomes: dict[str, tuple[str, str, str]] = {}
        self._applying: dict[str, str] = {}
        events.listeners.append(self._on_event)
        node.reports.build = self._build_report
        # Staged rollouts with an abort rule (docs/operations.md): (channel, version)
        # pairs this node saw abort; and yanks (signed revocations).
        self.aborted: set[tuple[str, str]] = set()
        node.reports.listeners.append(self._on_report)
        node.yanks.listeners.append(self._on_yank)

    def _chan(self, channel: str) -> _ChannelState:
        return self.channels.setdefault(channel, _ChannelState())

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

    # -- deciding -------------------------------------------------------------------
    def _stopped(self, ann: Announcement) -> str | None:
        """``yanked`` or ``rollout_aborted`` when this release must not be started."""
        b = ann.body
        if self.node.yanks.yanked(b.channel, b.version) is not None:
            return "yanked"
        if (b.channel, b.version) in self.aborted:
            return "rollout_aborted"
        return None

    def _refusal(self, ann: Announcement, target: TargetSpec) -> str | None:
        stopped = self._stopped(ann)
        if stopped is not None:
            return stopped
        # Trust and expiry are asked again: an announcement held for `p2pupdate apply`
        # or a long download may have expired meanwhile; nothing expired is installed.
        valid = valid_now(ann, self.node.book.trust, self.node.wall_clock())
        if not valid.ok:
            return valid.reason
        decision = act_decision(
            ann,
            node_id=self.node.node_id,
            installed_version=self.applicator.installed_version(target),
            quarantined=self.applicator.quarantined(target.channel),
            max_size=self.applicator.max_size,
            now=self.node.wall_clock(),
        )
        return None if decision.ok else decision.reason

    def _refuse(self, ann: Announcement, reason: str) -> None:
        b = ann.body
        self._chan(b.channel).last_refusal = {"version": b.version, "reason": reason}
        self.events.emit(
            "update_refused",
            channel=b.channel,
            version=b.version,
            package_id=b.package_id.hex(),
            reason=reason,
        )

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
            if reason == "not_newer" and self.applicator.installed_version(target) == b.version:
                return  # already installed: nothing to say
            if reason is not None:
                self._refuse(ann, reason)
                if reason != "outside_rollout":
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

    def _start_download(self, ann: Announcement, target: TargetSpec | None, apply_it: bool) -> None:
        if self._nursery is None:
            return
        st = self._chan(ann.body.channel)
        scope = trio.CancelScope()
        st.download, st.scope = ann, scope
        self._nursery.start_soon(self._download, ann, target, apply_it, scope)

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
                    reason="package_missing",
                    detail=str(exc),
                )
                self._schedule_retry(ann, target, True, INSTALL, "package_missing")
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
                reason = "state_error"  # nothing could be recorded: the state dir failed
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

    # -- trying again -----------------------------------------------------------------
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
        retry = _PendingRetry(
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

    def _cancel_retry(self, st: _ChannelState) -> None:
        if st.retry is not None:
            st.retry.scope.cancel()
            st.retry = None

    def on_source(self, package_id: bytes) -> None:
        """The swarm heard that a connected peer holds chunks of ``package_id``."""
        for st in self.channels.values():
            r = st.retry
            if r is not None and r.wake_on == NEW_SOURCE and r.ann.body.package_id == package_id:
                r.wake.set()

    def _has_room(self, r: _PendingRetry) -> bool:
        b = r.ann.body
        if r.step == INSTALL and r.target is not None:
            return self.applicator.has_room(r.target, b.size)
        return self.swarm.store.has_room(b.package_id, b.size)

    async def _retry_later(self, r: _PendingRetry) -> None:
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
                if reason is not None and reason != "outside_rollout":
                    return  # refused now (quarantined, installed, ...): final
            log.info("%s %s: trying the %s again", b.channel, b.version, r.step)
            if r.step == DOWNLOAD:
                if st.download is None:
                    self._start_download(r.ann, r.target, r.apply_it)
                return
        if r.scope.cancelled_caught or r.step != INSTALL or r.target is None:
            return
        await self._apply(r.ann, r.target)

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

    # -- cache --------------------------------------------------------------------------
    def _refresh_cache_index(self) -> None:
        now = trio.current_time()
        on_disk = dict(self.swarm.store.list_complete())
        for entry in self.cache.entries():
            if entry.package_id not in on_disk:
                self.cache.remove(entry.package_id)
        for pid, size in on_disk.items():
            if pid not in self.cache:
                self.cache.add(pid, size, now)
            served = self.swarm.last_served.get(pid)
            if served is not None:
                self.cache.touch(pid, served)
        installed = {
            bytes.fromhex(c["installed_package_id"])
            for c in self.applicator.status()["channels"].values()
            if c.get("installed_package_id")
        }
        newest = {a.body.package_id for a in self.node.book.all_newest()}
        busy = {st.download.body.package_id for st in self.channels.values() if st.download}
        for pid in set(on_disk) | installed | newest | busy:
            for why, group in (
                (PIN_INSTALLED, installed),
                (PIN_NEWEST, newest),
                (PIN_IN_PROGRESS, busy),
            ):
                if pid in group:
                    self.cache.pin(pid, why)
                else:
                    self.cache.unpin(pid, why)

    async def maintain_cache(self) -> None:
        """Evict least recently used unpinned packages until the cache fits its size."""
        self._refresh_cache_index()
        for pid in self.cache.evictions():
            log.info("evicting package %s from the cache", pid.hex()[:16])
            await self.swarm.forget(pid)
            self.cache.remove(pid)
        reason = self.cache.over_capacity_reason()
        if reason is not None:
            log.warning("cache over its size: %s", reason)

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
            st = self.channels.get(ch, _ChannelState())
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

    # -- control socket -------------------------------------------------------------
    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        channel = request.get("channel")
        if op == "fleet":
            if channel is not None and not isinstance(channel, str):
                return {"ok": False, "usage": True, "error": "channel must be a string"}
            return {"ok": True, **self.fleet(channel)}
        if op in ("apply", "rollback", "quarantine_clear"):
            target = self.targets.get(channel) if isinstance(channel, str) else None
            if target is None:
                return {"ok": False, "usage": True, "error": f"no target for channel {channel!r}"}
            if op == "apply":
                return await self._control_apply(target)
            if op == "rollback":
                if await self.applicator.rollback(target):
                    return {"ok": True, "message": f"{target.channel} rolled back"}
                return {"ok": False, "error": f"rollback failed: {self._last_failure(target)}"}
            version = request.get("version")
            if not isinstance(version, str):
                return {"ok": False, "usage": True, "error": "version missing"}
            if self.applicator.quarantine_clear(target.channel, version):
                return {"ok": True, "message": f"quarantine of {channel} {version} lifted"}
            return {"ok": False, "usage": True, "error": f"{channel} {version} is not quarantined"}
        return {"ok": False, "usage": True, "error": f"unknown op {op!r}"}

    def _last_failure(self, target: TargetSpec) -> str:
        """The reason (and detail) the applicator recorded for the channel's last result."""
        channel = self.applicator.status([target])["channels"].get(target.channel, {})
        last = channel.get("last") or {}
        reason = last.get("reason") or "unknown reason"
        detail = last.get("detail")
        return f"{reason} ({detail})" if detail else str(reason)

    async def _control_apply(self, target: TargetSpec) -> dict[str, Any]:
        st = self._chan(target.channel)
        ann = st.waiting or st.available or self.node.book.newest(target.channel)
        installed = self.applicator.installed_version(target)
        if ann is None:
            if installed is not None:  # nothing to do is not a mistake
                return {"ok": True, "message": f"{target.channel} is already at {installed}"}
            return {"ok": False, "usage": True, "error": f"no update known for {target.channel}"}
        reason = self._refusal(ann, target)
        if reason == "not_newer" and installed is not None:
            return {"ok": True, "message": f"{target.channel} is already at {installed}"}
        if reason is not None:
            return {"ok": False, "usage": True, "error": f"{ann.body.version}: {reason}"}
        if not self.swarm.store.has_complete(ann.body.package_id):
            # Apply this download when it is done; the target's auto_apply stays as it is.
            st.apply_when_done = ann.body.package_id
            if st.download is None or st.download.body.package_id != ann.body.package_id:
                if st.scope is not None:
                    st.scope.cancel()
                self._cancel_retry(st)  # asked for now: no need to wait out a back-off
                self._start_download(ann, target, True)
            return {"ok": True, "message": f"downloading {ann.body.version}; it will be applied"}
        ok = await self._apply(ann, target)
        if ok:
            return {"ok": True, "message": f"{target.channel} {ann.body.version} applied"}
        return {"ok": False, "error": f"applying {ann.body.version} failed (see status)"}

    def status(self) -> dict[str, Any]:
        applied = self.applicator.status(list(self.targets.values()))["channels"]
        channels: dict[str, Any] = {}
        names = set(self.channels) | set(self.targets) | set(applied)
        for ch in sorted(names):
            st = self.channels.get(ch, _ChannelState())
            target = self.targets.get(ch)
            a = applied.get(ch, {})
            dl = None
            if st.download is not None:
                dl = {"version": st.download.body.version, "state": "downloading", **st.progress}
            newest = self.node.book.newest(ch)
            retry = None
            if st.retry is not None:
                r = st.retry
                retry = {
                    "version": r.ann.body.version,
                    "step": r.step,
                    "reason": r.reason,
                    "attempt": r.attempt,
                    "next_try": round(r.next_try, 3),
                    "wake_on": r.wake_on,
                }
            channels[ch] = {
                "installed": a.get("installed_version"),
                "target": str(target.path) if target else None,
                "newest": newest.body.version if newest else None,
                # When the newest announcement stops being valid (publish --renew).
                "expires": newest.body.expires if newest else None,
                "download": dl,
                "waiting": _waiting(st, self.options.auto_download),
                "quarantined": [q["version"] for q in a.get("quarantined", [])],
                "last_refusal": _relevant_refusal(st.last_refusal, a.get("installed_version")),
                # Details for `quarantine list` and `versions`: why and when, and the
                # versions kept to roll back to.
                "quarantine": a.get("quarantined", []),
                "backups": [
                    {"version": b.get("version"), "created": b.get("created")}
                    for b in a.get("backups", [])
                ],
                "last": a.get("last"),
                "retry": retry,
                "last_download": st.last_download,
            }
        self._refresh_cache_index()
        return {
            **self.node.status(),
            "channels": channels,
            "cache": {
                "size": self.cache.used,
                "capacity": self.cache.capacity,
                "entries": [
                    {
                        "package_id": e.package_id.hex(),
                        "size": e.size,
                        "pinned": sorted(self.cache.pins(e.package_id)),
                    }
                    for e in self.cache.entries()
                ],
                "over_capacity": self.cache.over_capacity_reason(),
            },
            "packages": self.swarm.status(),
            "self_update": self.self_update.status_line()
            if self.self_update is not None
            else self.self_update_off,
            "self_update_info": self.self_update.status()
            if self.self_update is not None
            else {"managed": False},
        }


# errno values that mean "no room" (ENOSPC; EDQUOT: a quota is a full disk too).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _relevant_refusal(
    refusal: dict[str, Any] | None, installed: str | None
) -> dict[str, Any] | None:
    """The last refusal, while it still says something: not once the target runs that
    version or a newer one (then the refusal is history, and `status` would mislead)."""
    if refusal is None or installed is None:
        return refusal
    version = refusal.get("version")
    if isinstance(version, str) and not is_newer(version, installed):
        return None
    return refusal


def _waiting(st: _ChannelState, auto_download: bool) -> list[dict[str, str]]:
    """Updates waiting for `p2pupdate apply`: downloaded ones, and (auto_download off)
    announced ones; each package once."""
    held = [st.waiting] if auto_download else [st.waiting, st.available]
    out: dict[str, dict[str, str]] = {}
    for ann in held:
        if ann is not None:
            pid = ann.body.package_id.hex()
            out.setdefault(pid, {"version": ann.body.version, "package_id": pid})
    return list(out.values())
