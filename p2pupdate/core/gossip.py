"""Gossip state: the newest announcement per channel, a bounded seen-set,
inventory digests for anti-entropy, and fan-out choice.

Pure: the shell hands in decoded announcements and ``now``; this module says
whether to relay (via ``p2pupdate.core.policy.relay_decision``), remembers
what was accepted, and answers which ids to pull after an INVENTORY. It does
not decide whether to act on an announcement (that needs the node's targets).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import blake3

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import Decision, TrustConfig, relay_decision
from p2pupdate.core.reasons import Reason

__all__ = ["AnnouncementBook", "choose_fanout"]

T = TypeVar("T")

# Refusals that say who signed, not what was signed: they never settle a body id.
_SIGNER_REASONS = frozenset({Reason.UNTRUSTED, Reason.BAD_SIGNATURE, Reason.BELOW_THRESHOLD})

# Seen-set size (Limits.max_seen says why).
MAX_SEEN = DEFAULT_LIMITS.max_seen


class AnnouncementBook:
    """Accepted announcements (newest per channel) and the ids already looked at."""

    def __init__(self, trust: TrustConfig, max_seen: int = MAX_SEEN) -> None:
        self.trust = trust
        self._max_seen = max_seen
        # Two bounded sets. ``_seen_wire``: hashes of exact envelopes looked at (any
        # verdict), so the same bytes are never verified twice. ``_seen_ids``: body ids
        # whose verdict did not depend on who signed (accepted, expired, stale...). A
        # refusal for bad or untrusted signatures does not settle the id: otherwise a
        # peer could send a genuine body with junk signatures first and make the node
        # ignore the real announcement (and never pull it by anti-entropy).
        self._seen_wire: OrderedDict[bytes, None] = OrderedDict()
        self._seen_ids: OrderedDict[bytes, None] = OrderedDict()
        self._newest: dict[str, Announcement] = {}
        # Told of every announcement offered whose signers were trusted, with the
        # verdict (accepted or not: an older version is refused as stale but is still a
        # genuine release). ``publish`` uses it to learn what the fleet already runs.
        self.on_genuine: Callable[[Announcement, Decision], None] | None = None

    def seen(self, ann_id: bytes) -> bool:
        """Whether the announcement with this body id was settled (not worth pulling)."""
        return ann_id in self._seen_ids

    def seen_message(self, ann: Announcement) -> bool:
        """Whether these exact envelope bytes were looked at already."""
        return blake3.blake3(ann.encode()).digest() in self._seen_wire

    def _mark(self, table: OrderedDict[bytes, None], key: bytes) -> None:
        table[key] = None
        table.move_to_end(key)
        while len(table) > self._max_seen:
            table.popitem(last=False)

    def offer(self, ann: Announcement, now: float) -> Decision:
        """Run the relay decision; an accepted announcement becomes the channel's newest."""
        self._mark(self._seen_wire, blake3.blake3(ann.encode()).digest())
        decision = relay_decision(ann, self.trust, now, self._newest.get(ann.body.channel))
        if decision.ok or decision.reason not in _SIGNER_REASONS:
            self._mark(self._seen_ids, ann.id)
            if self.on_genuine is not None:
                self.on_genuine(ann, decision)
        if decision.ok:
            self._newest[ann.body.channel] = ann
        return decision

    def restore(self, ann: Announcement, now: float) -> Decision:
        """Load a persisted announcement at start, checked as if it had just arrived.

        The relay decision runs again with the node's *current* trust settings and
        ``now``: an announcement stored under a key since removed from the trust set,
        one past its expiry, or one valid for longer than the current cap is refused
        (and never becomes the channel's newest, so it blocks nothing). Of several
        stored for one channel, the newest that passes wins.
        """
        return self.offer(ann, now)

    def retrust(self, trust: TrustConfig, now: float) -> list[tuple[Announcement, Decision]]:
        """Take new trust settings (a live reload) and re-check what is held under them.

        Each channel's newest announcement is checked as if it had just arrived; one
        that fails (its signer was removed: a revocation; or a threshold was raised) is
        dropped, so it blocks no later release, and returned with the verdict. What was
        looked at before is forgotten: an announcement refused under the old keys may
        be trusted now, and anti-entropy must be able to bring it back.
        """
        self.trust = trust
        self._seen_wire.clear()
        self._seen_ids.clear()
        dropped: list[tuple[Announcement, Decision]] = []
        for channel, ann in list(self._newest.items()):
            decision = relay_decision(ann, trust, now, None)
            if decision.ok:
                self._mark(self._seen_ids, ann.id)
            else:
                del self._newest[channel]
                dropped.append((ann, decision))
        return dropped

    def newest(self, channel: str) -> Announcement | None:
        return self._newest.get(channel)

    def all_newest(self) -> list[Announcement]:
        return list(self._newest.values())

    def by_id(self, ann_id: bytes) -> Announcement | None:
        for ann in self._newest.values():
            if ann.id == ann_id:
                return ann
        return None

    def inventory(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(sorted((ch, ann.id) for ch, ann in self._newest.items()))

    def wants(self, entries: Iterable[tuple[str, bytes]]) -> list[bytes]:
        """Ids in a peer's inventory worth pulling: not seen, not our newest."""
        out: list[bytes] = []
        for channel, ann_id in entries:
            mine = self._newest.get(channel)
            if mine is not None and mine.id == ann_id:
                continue
            if not self.seen(ann_id):
                out.append(ann_id)
        return out

    def expire(self, now: float) -> list[Announcement]:
        """Drop announcements past expiry (plus skew); returns what was dropped."""
        gone = [a for a in self._newest.values() if now > a.body.expires + self.trust.clock_skew]
        for a in gone:
            del self._newest[a.body.channel]
        return gone


def choose_fanout(
    peers: Sequence[T], rng: random.Random, *, exclude: T | None = None, fanout: int = 8
) -> list[T]:
    """Every peer but ``exclude`` when there are few, else a random subset of ``fanout``."""
    candidates = [p for p in peers if p != exclude]
    if len(candidates) <= fanout:
        return candidates
    return rng.sample(candidates, fanout)
