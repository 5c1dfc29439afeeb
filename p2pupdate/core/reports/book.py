"""Keeping the newest report per node: :class:`ReportBook` and its verdicts.

What it does
    Keeps the report with the highest sequence per node id, capped in number and in age,
    and says of every offered report whether it is new, stale, forged, replayed or from
    a node outside the fleet (the shell strikes the sender of forged and replayed ones).

What it does not do
    Decode or verify the wire form (:mod:`.record`) or send anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.reports.record import SignedReport

__all__ = ["FORGED", "NEW", "OUTSIDER", "REPLAYED", "STALE", "ReportBook"]

NEW = "new"
STALE = "stale"  # not newer than what we hold: changes nothing, not the sender's fault
FORGED = "forged"  # bad signature: the sender relayed junk
REPLAYED = "replayed"  # signed time outside the TTL window: an old record sent again
OUTSIDER = "outsider"  # not a fleet member (when membership is known)


class ReportBook:
    """The newest report per node id, capped in number and age.

    :meth:`offer` answers one of ``new`` (kept; relay it), ``stale`` (older or the
    same sequence: ignored; gossip races make this normal, so it is nobody's fault),
    ``forged`` or ``replayed`` (ignored, and the sender deserves a strike), or
    ``outsider`` (a node outside the fleet's membership: ignored).
    """

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        *,
        clock_skew: float = 300.0,
        member: Any = None,
    ) -> None:
        self.limits = limits
        self.clock_skew = clock_skew
        # Optional ``member(node_id) -> bool`` (fleet membership, when configured).
        self.member = member
        self._reports: dict[bytes, SignedReport] = {}

    def __len__(self) -> int:
        return len(self._reports)

    def get(self, node_id: bytes) -> SignedReport | None:
        return self._reports.get(node_id)

    def all(self) -> list[SignedReport]:
        return list(self._reports.values())

    def offer(self, signed: SignedReport, now: float) -> str:
        r = signed.report
        held = self._reports.get(r.node_id)
        if held is not None and r.seq <= held.report.seq:
            return STALE
        if r.time > now + self.clock_skew or now - r.time > self.limits.report_ttl:
            return REPLAYED
        if not signed.verify():
            return FORGED
        if self.member is not None and not self.member(r.node_id):
            return OUTSIDER
        if held is None and len(self._reports) >= self.limits.max_reports:
            # Full: the report renewed longest ago goes (that node is the likeliest gone).
            oldest = min(self._reports.values(), key=lambda s: s.report.time)
            del self._reports[oldest.report.node_id]
        self._reports[r.node_id] = signed
        return NEW

    def expire(self, now: float) -> list[bytes]:
        """Drop reports not renewed within the TTL; returns their node ids."""
        gone = [
            nid for nid, s in self._reports.items() if now - s.report.time > self.limits.report_ttl
        ]
        for nid in gone:
            del self._reports[nid]
        return gone

    def summary(self) -> tuple[tuple[bytes, int], ...]:
        """(8-byte node id prefix, seq) of every report held, for anti-entropy."""
        return tuple(sorted((nid[:8], s.report.seq) for nid, s in self._reports.items()))

    def newer_than(self, theirs: Mapping[bytes, int]) -> list[SignedReport]:
        """Reports we hold that a peer with summary ``theirs`` (prefix -> seq) lacks or
        holds older. Two node ids sharing a prefix may hide one of them from a single
        exchange; the next heartbeat carries it anyway."""
        return [s for nid, s in self._reports.items() if theirs.get(nid[:8], -1) < s.report.seq]
