"""Gossip of announcements: take, check, relay, persist, refuse (``core.gossip`` decides).

A new announcement that passes the relay checks is forwarded to a fan-out of
peers, persisted in ``DATA_DIR/announcements/`` and handed to the node's
``on_announcement`` callback (the agent); a refused one is logged and reported
(``update_refused``, throttled per peer) and a bad signature strikes its sender.
Stored announcements are checked again at every start and on a trust reload.
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from p2pupdate.core.announcement import Announcement, decode_announcement
from p2pupdate.core.messages import Announce, Inventory
from p2pupdate.core.policy import Decision, TrustConfig
from p2pupdate.core.reasons import Reason
from p2pupdate.errors import RemoteProtocolError
from p2pupdate.shell.datadir import announcement_path, announcements_dir
from p2pupdate.shell.fsutil import atomic_write_bytes
from p2pupdate.shell.net.nodebase import NodeBase
from p2pupdate.shell.net.peerconn import PeerConn

__all__ = ["AnnouncementGossip"]

log = logging.getLogger("p2pupdate.node")


class AnnouncementGossip(NodeBase):
    """The node's announcement gossip (see the module doc)."""

    def load_announcements(self) -> None:
        """Restore announcements persisted in the data dir (a restart keeps them).

        Each goes through the same checks as one from the network, with the trust
        settings and clock of *this* start: one whose signer was removed from the trust
        set, that expired meanwhile, or that is valid for longer than the current cap
        is refused (``update_refused``), its file removed, and never becomes the
        channel's newest, so it blocks no later release.
        """
        if self.options.data_dir is None:
            return
        directory = announcements_dir(self.options.data_dir)
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.ann")):
            try:
                ann = decode_announcement(path.read_bytes())
            except (OSError, RemoteProtocolError) as exc:
                log.warning("dropping unreadable stored announcement %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            decision = self.book.restore(ann, self.wall_clock())
            if not decision.ok:
                log.warning(
                    "dropping stored announcement %s %s: %s",
                    ann.body.channel,
                    ann.body.version,
                    decision.reason,
                )
                self._refused(None, ann, decision)
                path.unlink(missing_ok=True)

    async def _on_announce(self, peer: PeerConn | None, data: bytes) -> Decision | None:
        ann = decode_announcement(data)  # RemoteProtocolError closes the connection
        if self.book.seen_message(ann):
            return None
        decision = self.book.offer(ann, self.wall_clock())
        if not decision.ok:
            self._refused(peer, ann, decision)
            return decision
        if peer is not None:
            peer.mark_useful(trio.current_time())
        # Forward first, persist at the same time: duplicates are harmless.
        self.broadcast(Announce(ann.encode()), exclude=peer)
        self.nursery.start_soon(self._persist_announcement, ann)
        self.emit(
            "announcement_received",
            channel=ann.body.channel,
            version=ann.body.version,
            package_id=ann.body.package_id.hex(),
            size=ann.body.size,
            announcement_id=ann.id.hex(),
            critical=ann.body.critical,
            via=peer.label if peer is not None else None,
        )
        if self.on_announcement is not None:
            await self.on_announcement(ann, peer)
        return decision

    def _refused(self, peer: PeerConn | None, ann: Announcement, decision: Decision) -> None:
        body = ann.body
        if decision.reason == Reason.DUPLICATE:
            return
        if decision.reason == Reason.EQUIVOCATION:
            log.error(
                "EQUIVOCATION: the authority signed two packages for %s %s; refusing %s",
                body.channel,
                body.version,
                body.package_id.hex(),
            )
        elif peer is not None:  # per peer: throttled (signing junk announcements is cheap)
            self._log_throttled(
                logging.INFO,
                "refused_announcement",
                self._who(peer.host, peer.node_id),
                "not relaying %s %s: %s",
                body.channel,
                body.version,
                decision.reason,
            )
        else:
            log.info("not relaying %s %s: %s", body.channel, body.version, decision.reason)
        if decision.reason == Reason.BAD_SIGNATURE and peer is not None:
            self._strike(peer.conn, "bad signature")
        fields: dict[str, object] = {
            "channel": body.channel,
            "version": body.version,
            "package_id": body.package_id.hex(),
            "reason": decision.reason,
            "relay": False,
        }
        if peer is None:
            self.emit("update_refused", **fields)
        else:  # per peer: throttled, like the log line
            self.emit_peer("update_refused", self._who(peer.host, peer.node_id), **fields)

    async def inject(self, ann: Announcement) -> Decision | None:
        """Accept an announcement from this process (publish, tests) and gossip it."""
        return await self._on_announce(None, ann.encode())

    def reload_trust(self, trust: TrustConfig) -> list[Announcement]:
        """New trust settings from a config reload (SIGHUP), with no connection dropped.

        Announcements held under keys no longer trusted are dropped as at a restart
        (``update_refused``, their stored file removed): a key removed from the trust
        set is revoked at once. Anti-entropy runs at once so announcements of newly
        trusted keys are pulled from the peers. Returns the dropped announcements.
        """
        self.options = dataclasses.replace(self.options, trust=trust)
        dropped = self.book.retrust(trust, self.wall_clock())
        for ann, decision in dropped:
            log.warning(
                "reload: dropping %s %s: %s", ann.body.channel, ann.body.version, decision.reason
            )
            self._refused(None, ann, decision)
            if self.options.data_dir is not None:
                announcement_path(self.options.data_dir, ann.body.channel).unlink(missing_ok=True)
        # One anti-entropy round now: peers answer with what we lack under the new keys.
        self.broadcast_all(Inventory(self.book.inventory()))
        return [ann for ann, _ in dropped]

    async def _persist_announcement(self, ann: Announcement) -> None:
        if self.options.data_dir is None:
            return
        path = announcement_path(self.options.data_dir, ann.body.channel)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, ann.encode())

        await trio.to_thread.run_sync(write)
