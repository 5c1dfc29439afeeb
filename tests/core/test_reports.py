"""Node reports: encoding, verification, the book's verdicts, tallies and the fleet view."""

from __future__ import annotations

import dataclasses

import msgpack
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core import reports as r
from p2pupdate.errors import RemoteProtocolError

NOW = 1_800_000_000
KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(12)]


def nid(i: int) -> bytes:
    return bytes(KEYS[i].verify_key)


def report(
    i: int, seq: int = 1, t: int = NOW, channels: tuple[r.ChannelReport, ...] = ()
) -> r.SignedReport:
    return r.sign_report(
        r.NodeReport(nid(i), seq, t, f"127.0.0.1:{4000 + i}", "p2pupdate/0.1", channels), KEYS[i]
    )


def chan(**kw: object) -> r.ChannelReport:
    return r.ChannelReport("app/stable", **kw)  # type: ignore[arg-type]


def test_round_trip_and_signature() -> None:
    c = chan(
        installed="1.0.0",
        state="rolled_back",
        last=("1.1.0", "rolled_back", "health_check exit 3"),
        quarantined=("1.1.0",),
    )
    s = report(0, channels=(c,))
    back = r.decode_report(s.encode())
    assert back.report == s.report
    assert back.verify()
    assert back.report.channel("app/stable") == c
    assert back.report.channel("other") is None


def test_a_record_is_at_most_1_kib() -> None:
    many = tuple(
        r.ChannelReport(
            f"channel-{i:02d}/" + "x" * 40, installed="1.0.0", last=("1.0.0", "refused", "y" * 64)
        )
        for i in range(20)
    )
    with pytest.raises(ValueError, match="exceeds"):
        report(0, channels=many)
    fitted = r.fit_report(
        r.NodeReport(nid(0), 1, NOW, "127.0.0.1:1", "p2pupdate/0.1", many), KEYS[0]
    )
    assert len(fitted.encode()) <= DEFAULT_LIMITS.max_report
    assert 0 < len(fitted.report.channels) < len(many)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        r.decode_report(b"\x92" + b"\x00" * DEFAULT_LIMITS.max_report)


def test_decoder_rejects_non_canonical_and_bad_fields() -> None:
    s = report(0)
    body = msgpack.unpackb(s.body)
    # the same body with an int widened: same values, other bytes
    wide = s.body.replace(b"\x01", b"\xcd\x00\x01", 1)
    assert msgpack.unpackb(wide) == body
    with pytest.raises(RemoteProtocolError, match="canonical"):
        r.decode_report(msgpack.packb([wide, s.signature]))
    bad = list(body)
    bad[6] = [["app/stable", None, "exploded", None, 0, None, []]]
    with pytest.raises(RemoteProtocolError, match="unknown state"):
        r.decode_report(msgpack.packb([msgpack.packb(bad), s.signature]))
    bad[6] = [["../etc", None, "idle", None, 0, None, []]]
    with pytest.raises(RemoteProtocolError, match="bad channel"):
        r.decode_report(msgpack.packb([msgpack.packb(bad), s.signature]))


@settings(max_examples=300)
@given(st.binary(max_size=1100))
def test_any_bytes_give_a_report_or_remote_protocol_error(data: bytes) -> None:
    try:
        got = r.decode_report(data)
    except RemoteProtocolError:
        return
    assert got.encode() == data


@settings(max_examples=200)
@given(
    st.integers(0, len(report(0, channels=(chan(installed="1.0.0"),)).encode()) - 1),
    st.integers(1, 255),
)
def test_a_flipped_byte_never_passes_as_the_same_signed_report(pos: int, delta: int) -> None:
    s = report(0, channels=(chan(installed="1.0.0"),))
    data = bytearray(s.encode())
    data[pos] = (data[pos] + delta) % 256
    try:
        got = r.decode_report(bytes(data))
    except RemoteProtocolError:
        return
    assert not got.verify() or got.report == s.report


def test_book_keeps_the_newest_per_node() -> None:
    book = r.ReportBook()
    assert book.offer(report(0, seq=5), NOW) == r.NEW
    assert book.offer(report(0, seq=5), NOW) == r.STALE
    assert book.offer(report(0, seq=4), NOW) == r.STALE
    assert book.get(nid(0)).report.seq == 5  # type: ignore[union-attr]
    assert book.offer(report(0, seq=6), NOW) == r.NEW
    assert book.get(nid(0)).report.seq == 6  # type: ignore[union-attr]


def test_forged_report_changes_nothing() -> None:
    book = r.ReportBook()
    book.offer(report(0, seq=5), NOW)
    genuine = report(0, seq=9)
    forged = dataclasses.replace(
        genuine, signature=KEYS[1].sign(r.REPORT_DOMAIN + genuine.body).signature, raw=b""
    )
    assert book.offer(r.decode_report(forged.encode()), NOW) == r.FORGED
    assert book.get(nid(0)).report.seq == 5  # type: ignore[union-attr]


def test_replayed_report_from_outside_the_ttl_changes_nothing() -> None:
    book = r.ReportBook()
    old = report(0, seq=1, t=NOW - int(DEFAULT_LIMITS.report_ttl) - 10)
    assert book.offer(old, NOW) == r.REPLAYED
    future = report(0, seq=2, t=NOW + 3600)
    assert book.offer(future, NOW) == r.REPLAYED
    assert len(book) == 0


def test_membership_filters_outsiders() -> None:
    book = r.ReportBook(member=lambda node_id: node_id == nid(0))
    assert book.offer(report(1), NOW) == r.OUTSIDER
    assert book.offer(report(0), NOW) == r.NEW


def test_cap_evicts_the_report_renewed_longest_ago() -> None:
    book = r.ReportBook(Limits(max_reports=3))
    for i in range(3):
        book.offer(report(i, t=NOW - 100 + i), NOW)
    assert book.offer(report(5, t=NOW), NOW) == r.NEW
    assert len(book) == 3
    assert book.get(nid(0)) is None
    assert book.get(nid(5)) is not None


def test_ttl_expiry_and_anti_entropy_summary() -> None:
    book = r.ReportBook()
    book.offer(report(0, seq=3, t=NOW), NOW)
    book.offer(report(1, seq=7, t=NOW - 3600), NOW)
    assert book.summary() == tuple(sorted(((nid(0)[:8], 3), (nid(1)[:8], 7))))
    theirs = {nid(0)[:8]: 3, nid(1)[:8]: 2}
    assert [s.report.node_id for s in book.newer_than(theirs)] == [nid(1)]
    assert book.expire(NOW + DEFAULT_LIMITS.report_ttl - 1800) == [nid(1)]
    assert len(book) == 1


def test_abort_rule_counts_distinct_nodes() -> None:
    rule = r.AbortRule(30, 3)
    failed = chan(installed="1.0.0", last=("1.1.0", "rolled_back", "health_check"))
    ok = chan(installed="1.1.0", last=("1.1.0", "applied", ""))
    idle = chan(installed="1.0.0")
    recs = [
        report(0, channels=(failed,)),
        report(1, channels=(failed,)),
        report(2, channels=(idle,)),
    ]
    assert r.abort_tally(recs, "app/stable", "1.1.0") == (2, 2)
    assert not rule.fired(2, 2)  # fewer than MIN attempted
    recs.append(report(3, channels=(ok,)))
    assert r.abort_tally(recs, "app/stable", "1.1.0") == (2, 3)
    assert rule.fired(2, 3)
    # the same node twice counts once
    assert r.abort_tally([*recs, recs[0]], "app/stable", "1.1.0") == (2, 3)
    assert not r.AbortRule(80, 3).fired(2, 3)
    with pytest.raises(ValueError):
        r.AbortRule(0, 1)


def test_fleet_view_summarises_and_sorts_problems_first() -> None:
    recs = [
        report(0, channels=(chan(installed="1.1.0", state="healthy"),)),
        report(
            1,
            channels=(
                chan(
                    installed="1.0.0",
                    state="rolled_back",
                    last=("1.1.0", "rolled_back", "health_check exit 3"),
                ),
            ),
        ),
        report(
            2,
            channels=(
                chan(installed="1.0.0", state="refused", last=("1.1.0", "refused", "untrusted")),
            ),
        ),
        report(
            3,
            channels=(chan(installed="1.0.0", state="downloading", pending="1.1.0", progress=40),),
        ),
    ]
    view = r.fleet_view(recs, NOW + 5)
    assert view["nodes_reporting"] == 4
    v10 = view["channels"]["app/stable"]["1.0.0"]
    assert v10["nodes"] == 3 and v10["rolled_back"] == 1 and v10["downloading"] == 1
    assert v10["refused"] == {"untrusted": 1}
    assert view["channels"]["app/stable"]["1.1.0"]["healthy"] == 1
    states = [row["state"] for row in view["nodes"]]
    assert states[:2] in (["rolled_back", "refused"], ["refused", "rolled_back"])
    assert states[2:] == ["downloading", "healthy"]
    assert view["nodes"][0]["age"] == 5
    assert r.fleet_view(recs, NOW, "other")["nodes"] == []


def test_outcomes_follow_the_events() -> None:
    o = r.next_outcome(None, "update_refused", {"version": "1.1.0", "reason": "outside_rollout"})
    assert o is None
    o = r.next_outcome(o, "update_refused", {"version": "1.1.0", "reason": "untrusted"})
    assert o == ("1.1.0", "refused", "untrusted")
    o = r.next_outcome(
        o, "update_failed", {"version": "1.1.0", "reason": "health_check", "detail": "exit 3\nmore"}
    )
    assert o == ("1.1.0", "update_failed", "health_check exit 3")
    o = r.next_outcome(o, "rolled_back", {"version": "1.1.0", "reason": "health_check"})
    assert o == ("1.1.0", "rolled_back", "health_check exit 3")
    assert r.next_outcome(o, "quarantined", {"version": "1.1.0", "reason": "x"}) == o
    assert r.next_outcome(o, "download_progress", {"version": "1.2.0"}) == o
    o = r.next_outcome(o, "update_complete", {"version": "1.2.0", "new_version": "1.2.0"})
    assert o == ("1.2.0", "applied", "")
    o = r.next_outcome(o, "rollout_aborted", {"version": "1.3.0", "failed": 2, "attempted": 3})
    assert o == ("1.3.0", "aborted", "2 of 3 failed")
    # a node that attempted the version itself keeps its own outcome
    mine = ("1.4.0", "rolled_back", "health_check")
    assert r.next_outcome(mine, "rollout_aborted", {"version": "1.4.0"}) == mine


def test_channel_state_from_what_the_node_knows() -> None:
    e = r.channel_entry(
        "app/stable",
        installed="1.0.0",
        downloading=("1.1.0", 0.42),
        applying=None,
        last=None,
        quarantined=[],
    )
    assert (e.state, e.pending, e.progress) == ("downloading", "1.1.0", 42)
    e = r.channel_entry(
        "app/stable",
        installed="1.0.0",
        downloading=None,
        applying=None,
        last=("1.1.0", "rolled_back", "x"),
        quarantined=["1.1.0"],
    )
    assert e.state == "rolled_back" and e.quarantined == ("1.1.0",)
    e = r.channel_entry(
        "app/stable",
        installed=None,
        downloading=None,
        applying=None,
        last=None,
        quarantined=[f"1.0.{i}" for i in range(9)],
    )
    assert e.state == "idle" and len(e.quarantined) == r.MAX_QUARANTINED
    assert r.node_outcome(chan(installed="1.1.0"), "1.1.0") == ("applied", "")
    assert r.node_outcome(
        chan(installed="1.0.0", last=("1.1.0", "refused", "untrusted")), "1.1.0"
    ) == ("refused", "untrusted")
