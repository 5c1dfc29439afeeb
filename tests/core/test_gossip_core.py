"""AnnouncementBook: newest per channel, seen-set bound, inventory pulls, fan-out."""

from __future__ import annotations

import random

import nacl.signing
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core.gossip import AnnouncementBook, choose_fanout
from p2pupdate.core.policy import TrustConfig
from tests.helpers import make_announcement

KEY = nacl.signing.SigningKey(b"\x02" * 32)
TRUST = TrustConfig(frozenset({bytes(KEY.verify_key)}))


def test_newest_per_channel_and_inventory() -> None:
    book = AnnouncementBook(TRUST)
    a1 = make_announcement([KEY], version="1.0.0")
    a2 = make_announcement([KEY], version="1.1.0", data=b"other")
    b1 = make_announcement([KEY], channel="db/stable", version="3.0.0")
    assert book.offer(a1, a1.body.created).ok
    assert book.offer(b1, b1.body.created).ok
    assert book.offer(a2, a2.body.created).ok
    assert book.newest("app/stable") == a2
    assert book.inventory() == (("app/stable", a2.id), ("db/stable", b1.id))
    assert book.by_id(a2.id) == a2 and book.by_id(a1.id) is None
    # An older one arriving late is not newest and is not kept.
    assert book.offer(a1, a1.body.created).reason in ("duplicate", "not_newest")
    assert book.newest("app/stable") == a2


def test_wants_pulls_only_unseen_ids_that_differ_from_ours() -> None:
    book = AnnouncementBook(TRUST)
    a1 = make_announcement([KEY], version="1.0.0")
    book.offer(a1, a1.body.created)
    other = bytes(32)
    assert book.wants([("app/stable", a1.id)]) == []
    assert book.wants([("app/stable", other), ("x/y", other)]) == [other, other]


def test_seen_set_is_bounded() -> None:
    book = AnnouncementBook(TRUST, max_seen=3)
    anns = [make_announcement([KEY], version=f"1.0.{i}") for i in range(5)]
    for a in anns:
        book.offer(a, a.body.created)
    assert not book.seen(anns[0].id) and book.seen(anns[4].id)
    assert not book.seen_message(anns[0]) and book.seen_message(anns[4])


def test_restore_keeps_the_later_of_two_stored_announcements() -> None:
    book = AnnouncementBook(TRUST)
    old = make_announcement([KEY], version="1.0.0", created=1_700_000_000)
    replacement = make_announcement([KEY], version="1.0.0", created=1_700_000_100)
    newer = make_announcement([KEY], version="1.1.0", data=b"x", created=1_700_000_050)
    now = 1_700_000_200
    assert book.restore(replacement, now).ok
    assert book.restore(old, now).reason == "not_newest"
    assert book.newest("app/stable") == replacement
    assert book.restore(newer, now).ok
    assert book.newest("app/stable") == newer


def test_restore_rechecks_trust_expiry_and_validity_with_current_settings() -> None:
    """What was accepted under old settings is refused under new ones, and blocks nothing."""
    revoked = nacl.signing.SigningKey(b"\x05" * 32)
    created = 1_700_000_000
    frozen = make_announcement([revoked], version="9.0.0", created=created, expires_in=86400)
    book = AnnouncementBook(TRUST)  # the key that signed it is no longer trusted
    assert book.restore(frozen, created + 60).reason == "untrusted"
    assert book.newest("app/stable") is None
    genuine = make_announcement([KEY], version="2.0.0", data=b"new", created=created + 30)
    assert book.offer(genuine, created + 60).ok  # not refused as not_newest
    assert book.newest("app/stable") == genuine

    short = make_announcement([KEY], version="1.0.0", created=created, expires_in=5)
    book = AnnouncementBook(TRUST)
    assert book.restore(short, created + 600).reason == "expired"
    assert book.newest("app/stable") is None

    long = make_announcement([KEY], version="1.0.0", created=created, expires_in=200 * 86400)
    book = AnnouncementBook(TRUST)
    assert book.restore(long, created + 60).reason == "validity_too_long"
    capped = AnnouncementBook(TrustConfig(TRUST.trusted_keys, max_validity=365 * 86400))
    assert capped.restore(long, created + 60).ok


def test_refusal_for_signatures_does_not_settle_the_body_id() -> None:
    stranger = nacl.signing.SigningKey(b"\x04" * 32)
    book = AnnouncementBook(TRUST)
    foreign = make_announcement([stranger], version="1.0.0")
    assert book.offer(foreign, foreign.body.created).reason == "untrusted"
    assert not book.seen(foreign.id) and book.seen_message(foreign)
    genuine = make_announcement([KEY], version="1.0.0", created=foreign.body.created)
    assert genuine.id == foreign.id
    assert book.wants([("app/stable", genuine.id)]) == [genuine.id]
    assert book.offer(genuine, genuine.body.created).ok


def test_expire_drops_announcements_past_their_expiry() -> None:
    book = AnnouncementBook(TRUST)
    a = make_announcement([KEY], version="1.0.0", expires_in=100)
    book.offer(a, a.body.created)
    assert book.expire(a.body.created + 50) == []
    assert book.expire(a.body.expires + TRUST.clock_skew + 1) == [a]
    assert book.newest("app/stable") is None


@given(st.integers(0, 30), st.integers(1, 10), st.integers(0, 2**32))
def test_fanout_is_everyone_but_the_sender_when_few_else_a_random_subset(
    n: int, fanout: int, seed: int
) -> None:
    peers = list(range(n))
    exclude = 0 if n else None
    out = choose_fanout(peers, random.Random(seed), exclude=exclude, fanout=fanout)
    assert exclude not in out
    assert len(set(out)) == len(out)
    if n - 1 <= fanout:
        assert sorted(out) == peers[1:]
    else:
        assert len(out) == fanout


def test_on_genuine_hears_trusted_announcements_accepted_or_older_never_forged() -> None:
    heard: list[tuple[str, bool]] = []
    book = AnnouncementBook(TRUST)
    book.on_genuine = lambda ann, decision: heard.append((ann.body.version, decision.ok))
    now = 1_000_000
    new = make_announcement([KEY], version="2.0.0", created=now, data=b"new")
    old = make_announcement([KEY], version="1.0.0", created=now - 10, data=b"old")
    stranger = nacl.signing.SigningKey(b"\x03" * 32)
    forged = make_announcement([stranger], version="1.5.0", created=now, data=b"x")
    assert book.offer(new, now).ok
    assert not book.offer(old, now).ok  # older than the newest: refused, still genuine
    assert not book.offer(forged, now).ok
    assert heard == [("2.0.0", True), ("1.0.0", False)]
