"""The agent's state, its options, and what every part of it shares.

:class:`AgentBase` holds the per-channel state (:class:`ChannelState`, with a
pending retry :class:`PendingRetry`), asks the act gate (``core.policy``) whether a
release may be installed, records refusals, and keeps the package cache within
its size (``core.store`` decides what goes).
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import act_decision, valid_now
from p2pupdate.core.reasons import Reason
from p2pupdate.core.retry import Backoff
from p2pupdate.core.store import PIN_IN_PROGRESS, PIN_INSTALLED, PIN_NEWEST, CacheIndex
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.net.node import Node
from p2pupdate.shell.tmpdirs import node_tmp_dir
from p2pupdate.shell.transfer.swarm import Swarm

__all__ = [
    "DOWNLOAD",
    "INSTALL",
    "AgentBase",
    "AgentOptions",
    "ChannelState",
    "PendingRetry",
    "SelfUpdateHook",
]

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
class PendingRetry:
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
class ChannelState:
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
    retry: PendingRetry | None = None
    # (package id, step) -> failures in a row that were retried
    failures: dict[tuple[bytes, str], int] = field(default_factory=dict)


class AgentBase:
    """The agent's state and shared decisions (see the module doc)."""

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
        self.channels: dict[str, ChannelState] = {}
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
        # Node reports (docs/protocol.md): the last outcome per channel comes from the
        # events as they are written; every one that changes it re-issues the report.
        self.outcomes: dict[str, tuple[str, str, str]] = {}
        self._applying: dict[str, str] = {}
        # Staged rollouts with an abort rule (docs/operations.md): (channel, version)
        # pairs this node saw abort.
        self.aborted: set[tuple[str, str]] = set()

    def _chan(self, channel: str) -> ChannelState:
        return self.channels.setdefault(channel, ChannelState())

    # -- deciding -------------------------------------------------------------------
    def _stopped(self, ann: Announcement) -> str | None:
        """``yanked`` or ``rollout_aborted`` when this release must not be started."""
        b = ann.body
        if self.node.yanks.yanked(b.channel, b.version) is not None:
            return Reason.YANKED
        if (b.channel, b.version) in self.aborted:
            return Reason.ROLLOUT_ABORTED
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

    def _cancel_retry(self, st: ChannelState) -> None:
        if st.retry is not None:
            st.retry.scope.cancel()
            st.retry = None

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
