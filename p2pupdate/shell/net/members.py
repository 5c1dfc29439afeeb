"""Fleet membership on the node's connections (``core.fleet`` decides).

With membership on, a peer must show a valid admission in its handshake; one
whose admission expires or is revoked later is disconnected. Revocation lists are
gossiped to every member, persisted in ``DATA_DIR/revocations/`` and re-checked at
start as if they had just arrived. We hand out only connected members' addresses.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from p2pupdate.core.fleet import Admission, decode_admission, decode_revocations
from p2pupdate.core.membership import Addr
from p2pupdate.core.messages import Peers, Revoke
from p2pupdate.core.reasons import Reason
from p2pupdate.errors import RemoteProtocolError
from p2pupdate.shell.fsutil import atomic_write_bytes
from p2pupdate.shell.net.nodebase import NodeBase
from p2pupdate.shell.net.peer import Connection
from p2pupdate.shell.net.peerconn import PeerConn

__all__ = ["FleetMembership"]

log = logging.getLogger("p2pupdate.node")


class FleetMembership(NodeBase):
    """The node's fleet membership: admission checks, revocation lists, status."""

    def _membership(self, raw: bytes, node_id: bytes) -> tuple[Admission | None, Reason | None]:
        """The peer's admission and None, or why it is not a member."""
        if not raw:
            return None, Reason.NO_ADMISSION
        try:
            admission = decode_admission(raw, self.limits)
        except RemoteProtocolError:
            return None, Reason.MALFORMED_ADMISSION
        return admission, self.fleet.check(admission, node_id, self.wall_clock())

    def _refuse_member(self, conn: Connection, node_id: bytes, reason: str) -> None:
        who = self._who(conn.remote_host, node_id)
        self._log_throttled(
            logging.INFO,
            Reason.NOT_MEMBER,
            who,
            "refusing %s: not a member (%s)",
            conn.label,
            reason,
        )
        self.emit_peer("peer_refused", who, peer=conn.label, peer_id=node_id.hex(), reason=reason)

    def is_member(self, node_id: bytes) -> bool:
        """Whether reports from or about ``node_id`` count: always in an open swarm; with
        membership on, only a node that showed a valid admission, not expired or revoked
        since. The hook for the fleet-report relay (issue 14)."""
        return node_id == self.node_id or self.fleet.is_member(node_id, self.wall_clock())

    def _pex_sample(self) -> tuple[Addr, ...]:
        """Addresses we share: any known one in an open swarm, only those of connected
        members when membership is on (we never hand out a non-member's address)."""
        if not self.fleet.enabled:
            return tuple(self.peerbook.sample(32))
        addrs = [p.addr for p in self.peers.values() if p.addr[1] and not p.closing]
        self.rng.shuffle(addrs)
        return tuple(addrs[:32])

    def _send_pex(self, peer: PeerConn, now: float) -> None:
        peer.pex_sent_at = now
        peer.post(Peers(self._pex_sample()))

    def recheck_members(self) -> None:
        """Close peers whose admission expired or was revoked since they connected."""
        if not self.fleet.enabled:
            return
        now = self.wall_clock()
        for peer in list(self.peers.values()):
            reason = self.fleet.check(peer.admission, peer.node_id, now)
            if reason is not None:
                self._refuse_member(peer.conn, peer.node_id, reason)
                peer.close()
                self._drop(peer)

    def load_revocations(self) -> None:
        """Revocation lists from the options and the data dir, checked as if from a peer."""
        if not self.fleet.enabled:
            return
        datas = list(self.options.revocations)
        directory = self.options.data_dir / "revocations" if self.options.data_dir else None
        if directory is not None and directory.is_dir():
            datas += [p.read_bytes() for p in sorted(directory.glob("*.rev"))]
        for data in datas:
            try:
                rev = decode_revocations(data, self.limits)
            except RemoteProtocolError as exc:
                log.warning("ignoring a stored revocation list: %s", exc)
                continue
            if self.fleet.offer(rev) is None:
                self._persist_revocations(rev.fleet_key, rev.raw)

    def _persist_revocations(self, fleet_key: bytes, raw: bytes) -> None:
        if self.options.data_dir is None:
            return
        directory = self.options.data_dir / "revocations"
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / (fleet_key.hex() + ".rev"), raw)

    async def _on_revoke(self, peer: PeerConn | None, data: bytes) -> bool:
        """A revocation list: taken if newer for one of our fleet keys, then relayed to
        every member and acted on (revoked peers are disconnected)."""
        if not self.fleet.enabled:
            return False
        rev = decode_revocations(data, self.limits)  # RemoteProtocolError closes the peer
        reason = self.fleet.offer(rev)
        if reason is not None:
            if reason == Reason.BAD_SIGNATURE and peer is not None:
                self._strike(peer.conn, "bad revocation signature")
            return False
        log.info(
            "revocation list of %s: %d node(s) revoked", rev.fleet_key.hex()[:16], len(rev.revoked)
        )
        self.emit(
            "revocations_received",
            fleet=rev.fleet_key.hex(),
            issued=rev.issued,
            revoked=len(rev.revoked),
            via=peer.label if peer is not None else None,
        )
        self.broadcast_all(Revoke(rev.raw), exclude=peer)
        await trio.to_thread.run_sync(self._persist_revocations, rev.fleet_key, rev.raw)
        self.recheck_members()
        return True

    async def inject_revocations(self, data: bytes) -> bool:
        """Take a revocation list from this process (a file, tests) and gossip it."""
        return await self._on_revoke(None, data)

    def fleet_status(self) -> dict[str, Any] | None:
        """Membership for ``status``: fleet keys, our admission, an expiry warning."""
        if not self.fleet.enabled:
            return None
        adm = self.admission
        now = self.wall_clock()
        return {
            "fleet_keys": sorted(k.hex() for k in self.fleet.fleet_keys),
            "admission_fleet": adm.fleet_key.hex() if adm else None,
            "admission_expires": adm.expires if adm else None,
            "warning": self.fleet.expiry_warning(adm, now) if adm else "no admission",
            "revoked": sum(len(r.revoked) for r in self.fleet.lists.values()),
        }
