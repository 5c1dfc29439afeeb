"""The agent: what a node does with an accepted announcement.

It joins the gossip layer (``shell.node``), the swarm (``shell.swarm``) and
the applicator (``shell.applicator``): for an announcement that concerns one
of its targets it runs the act decision (``core.policy.act_decision`` plus the
applicator's own refusals), downloads, and applies (or waits for
``p2pupdate apply`` when ``auto_apply`` is off). A node outside the rollout,
or with no target for the channel, still downloads, caches and serves.
A newer announcement for a channel supersedes an older download.

It also answers the control socket (status, apply, rollback, quarantine
clear). It makes no protocol decision itself.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import act_decision
from p2pupdate.core.store import PIN_IN_PROGRESS, PIN_INSTALLED, PIN_NEWEST, CacheIndex
from p2pupdate.errors import DiskFullError, P2PUpdateError
from p2pupdate.shell.applicator import Applicator, TargetSpec
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.node import Node, PeerConn
from p2pupdate.shell.swarm import Swarm
from p2pupdate.shell.tmpdirs import node_tmp_dir

__all__ = ["Agent", "AgentOptions", "SelfUpdateHook"]

log = logging.getLogger("p2pupdate.agent")


@dataclass
class AgentOptions:
    targets: tuple[TargetSpec, ...] = ()
    auto_download: bool = True
    cache_size: int = 1024**3


class SelfUpdateHook(Protocol):
    """The node's own program (``p2pupdate.selfupdate.manager.SelfUpdater``)."""

    def handles(self, channel: str) -> bool: ...

    def on_announcement(self, ann: Announcement) -> None: ...

    async def on_downloaded(self, ann: Announcement) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def status_line(self) -> str: ...


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


class Agent:
    def __init__(
        self,
        node: Node,
        swarm: Swarm,
        applicator: Applicator,
        events: EventLog,
        options: AgentOptions,
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
        # Self-update: its own channel is cached like any other and handed to the hook.
        self.self_update: SelfUpdateHook | None = None
        self.self_update_off = "off: not a managed install"
        node.on_announcement = self.on_announcement

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
    def _refusal(self, ann: Announcement, target: TargetSpec) -> str | None:
        b = ann.body
        reason = self.applicator.check(target, b.version, b.size, min_version=b.min_version)
        if reason is not None:
            return reason
        decision = act_decision(
            ann,
            node_id=self.node.node_id,
            installed_version=self.applicator.installed_version(target),
            quarantined=self.applicator.quarantined(target.channel),
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

    async def on_announcement(self, ann: Announcement, peer: PeerConn | None) -> None:
        """Called by the node for every announcement that passed the relay decision."""
        b = ann.body
        st = self._chan(b.channel)
        target = self.targets.get(b.channel)
        apply_it = False
        if self.self_update is not None and self.self_update.handles(b.channel):
            self.self_update.on_announcement(ann)
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
                    self.events.emit("download_failed", **base, reason=f"disk_full: {exc}")
                    return
                except OSError as exc:
                    self.events.emit("download_failed", **base, reason=f"disk_error: {exc}")
                    return
                except P2PUpdateError as exc:
                    # A corrupt state file, a store that lost a file under us: this
                    # download fails, the node and every other download go on.
                    log.error("download of %s %s failed: %s", b.channel, b.version, exc)
                    self.events.emit("download_failed", **base, reason=f"error: {exc}")
                    return
                if not result.ok:
                    self.events.emit("download_failed", **base, reason=result.reason)
                    return
                if not already:
                    self.events.emit(
                        "download_complete",
                        **base,
                        size=b.size,
                        seconds=round(time.monotonic() - started, 3),
                        sources=result.sources,
                    )
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
                return False
            ok = await self.applicator.apply(
                target, b.version, path, b.package_id, min_version=b.min_version
            )
        finally:
            st.applying = False
        for attr in ("waiting", "available"):
            held = getattr(st, attr)
            if held is not None and held.body.package_id == b.package_id:
                setattr(st, attr, None)
        return ok

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

    # -- control socket -------------------------------------------------------------
    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, **self.status()}
        channel = request.get("channel")
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
        if ann is None:
            return {"ok": False, "usage": True, "error": f"no update known for {target.channel}"}
        reason = self._refusal(ann, target)
        if reason is not None:
            return {"ok": False, "usage": True, "error": f"{ann.body.version}: {reason}"}
        if not self.swarm.store.has_complete(ann.body.package_id):
            # Apply this download when it is done; the target's auto_apply stays as it is.
            st.apply_when_done = ann.body.package_id
            if st.download is None or st.download.body.package_id != ann.body.package_id:
                if st.scope is not None:
                    st.scope.cancel()
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
            channels[ch] = {
                "installed": a.get("installed_version"),
                "target": str(target.path) if target else None,
                "newest": newest.body.version if newest else None,
                "download": dl,
                "waiting": _waiting(st, self.options.auto_download),
                "quarantined": [q["version"] for q in a.get("quarantined", [])],
                "last_refusal": st.last_refusal,
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
