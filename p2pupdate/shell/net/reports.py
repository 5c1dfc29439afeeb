"""Carrying node reports over the gossip (``core.reports`` decides).

:class:`ReportGossip` holds the node's :class:`~p2pupdate.core.reports.ReportBook`,
issues the node's own report (built by a callback the agent supplies) on every
change it is told about and as a heartbeat, relays every new report to a
fan-out of peers, and runs anti-entropy: on each new connection, and every
``summary_interval`` with one random peer, both sides send a REPORT_SUMMARY
((node id prefix, seq) of what they hold) and each answers with the reports the
other lacks or holds older. A forged or replayed report changes nothing and
strikes its sender; an oversized one is a protocol error (the connection closes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.messages import MAX_SUMMARY, Message, Report, ReportSummary
from p2pupdate.core.reports import (
    FORGED,
    NEW,
    REPLAYED,
    NodeReport,
    ReportBook,
    SignedReport,
    decode_report,
    fit_report,
)
from p2pupdate.errors import TransferError
from p2pupdate.shell.net.host import GossipHost
from p2pupdate.shell.net.peerconn import PeerConn

__all__ = ["ReportGossip"]

log = logging.getLogger("p2pupdate.reports")

# Anti-entropy with one random peer this often (besides every new connection).
SUMMARY_INTERVAL = 60.0


class ReportGossip:
    def __init__(
        self,
        node: GossipHost,
        *,
        limits: Limits = DEFAULT_LIMITS,
        interval: float | None = None,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.node = node
        self.limits = limits
        self.interval = limits.report_interval if interval is None else interval
        self.summary_interval = summary_interval
        self.book = ReportBook(limits, clock_skew=node.options.trust.clock_skew)
        # Builds this node's report (channels etc.); None: the node reports no channels.
        self.build: Callable[[], NodeReport] | None = None
        self.listeners: list[Callable[[SignedReport], None]] = []
        self._partial: dict[bytes, dict[bytes, int]] = {}
        self._changed = trio.Event()
        self._seq = 0
        self.own: SignedReport | None = None
        self.sent_bytes = 0  # own reports and relays, for the cost figure

    # -- own report --------------------------------------------------------------------
    def changed(self) -> None:
        """Something in this node's report changed: re-issue it soon."""
        self._changed.set()

    def _issue(self) -> None:
        now = self.node.wall_clock()
        # Milliseconds of wall time, and always above the last: a restarted node (which
        # forgot its sequence) still outranks its own earlier reports.
        self._seq = max(self._seq + 1, int(now * 1000))
        if self.build is not None:
            base = self.build()
            report = NodeReport(
                self.node.node_id,
                self._seq,
                int(now),
                base.listen,
                base.agent,
                base.channels,
            )
        else:
            host, port = self.node.listen_addr
            report = NodeReport(
                self.node.node_id, self._seq, int(now), f"{host}:{port}", _agent(self.node)
            )
        signed = fit_report(report, self.node.key, self.limits)
        self.own = signed
        self.book.offer(signed, now)
        self._notify(signed)
        self._relay(signed, None)

    async def run(self) -> None:
        """Issue the report at start, on every change (coalesced) and as a heartbeat;
        expire old reports; run anti-entropy with one random peer now and then."""
        last_summary = trio.current_time()
        while True:
            self._changed = trio.Event()
            if self.node.options.report_self:
                self._issue()
            deadline = trio.current_time() + self.interval
            while True:
                with trio.move_on_at(min(deadline, last_summary + self.summary_interval)):
                    await self._changed.wait()
                if self._changed.is_set():
                    # Coalesce a burst of changes (several events at once) into one.
                    await trio.sleep(0.2)
                    break
                self.book.expire(self.node.wall_clock())
                now = trio.current_time()
                # Compared as the deadline was computed (a + b), not as now - a >= b:
                # rounding would otherwise leave a deadline that is past but not due.
                if now >= last_summary + self.summary_interval:
                    last_summary = now
                    if self.node.peers:
                        self.send_summary(self.node.rng.choice(list(self.node.peers.values())))
                if now >= deadline:
                    break

    # -- gossip --------------------------------------------------------------------------
    def _notify(self, signed: SignedReport) -> None:
        for fn in list(self.listeners):
            fn(signed)

    def _relay(self, signed: SignedReport, exclude: PeerConn | None) -> None:
        msg = Report(signed.encode())
        before = sum(self.node.messages_sent.values())
        self.node.broadcast(msg, exclude=exclude)
        sent = sum(self.node.messages_sent.values()) - before
        self.sent_bytes += sent * len(msg.data)

    def on_peer_up(self, peer: PeerConn) -> None:
        self.send_summary(peer)

    def on_peer_down(self, peer: PeerConn) -> None:
        self._partial.pop(peer.node_id, None)

    def send_summary(self, peer: PeerConn) -> None:
        entries = self.book.summary()
        for i in range(0, max(len(entries), 1), MAX_SUMMARY):
            part = entries[i : i + MAX_SUMMARY]
            peer.post(ReportSummary(part, i + MAX_SUMMARY >= len(entries)))

    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        if isinstance(msg, Report):
            self.on_report(peer, msg.data)
            return True
        if isinstance(msg, ReportSummary):
            theirs = self._partial.setdefault(peer.node_id, {})
            if len(theirs) + len(msg.entries) > self.limits.max_reports:
                theirs.clear()  # a peer cannot make us hold more than the cap
            theirs.update(msg.entries)
            if msg.done:
                del self._partial[peer.node_id]
                missing = self.book.newer_than(theirs)
                if missing:
                    self.node.nursery.start_soon(self._send_reports, peer, missing)
            return True
        return False

    async def _send_reports(self, peer: PeerConn, reports: list[SignedReport]) -> None:
        # Under the connection's send lock, paced by TCP: a large fleet's reports do not
        # pile up in the small-message outbox.
        try:
            for s in reports:
                if peer.closing:
                    return
                await peer.send(Report(s.encode()))
                self.sent_bytes += len(s.encode())
        except TransferError:
            return

    def on_report(self, peer: PeerConn | None, data: bytes) -> str:
        signed = decode_report(data, self.limits)  # RemoteProtocolError: closes, strikes
        verdict = self.book.offer(signed, self.node.wall_clock())
        if verdict == NEW:
            self._relay(signed, peer)
            self._notify(signed)
        elif verdict in (FORGED, REPLAYED) and peer is not None:
            log.info("%s: %s report for %s", peer.label, verdict, signed.report.node_id.hex()[:16])
            self.node.strike(peer, f"{verdict} report")
        return verdict


def _agent(node: GossipHost) -> str:
    return node.options.agent[:32]
