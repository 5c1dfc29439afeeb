"""Staged rollouts and abort rules in the announcement (format 2), their syntax, the
``publish --wait`` verdict, and yanks."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.announcement import (
    FORMAT_STAGED,
    FORMAT_VERSION,
    decode_announcement,
    sign_announcement,
)
from p2pupdate.core.policy import TrustConfig, act_decision
from p2pupdate.core.rollout import parse_abort, parse_stages, wait_verdict
from p2pupdate.core.yank import YankBody, decode_yank, sign_yank, yank_decision
from p2pupdate.errors import RemoteProtocolError
from tests.core.announce_helpers import KEYS, NOW, body, pub, signed

STAGED = dict(format_version=FORMAT_STAGED, stages=((5, 0), (25, 1800), (100, 5400)))


# -- the announcement body, format 2 ----------------------------------------------------


def test_format_1_bodies_are_written_exactly_as_before() -> None:
    # The 12-field array a node of the previous release signs and checks.
    b = body(min_version="1.2.0", rollout=25)
    assert b.format_version == FORMAT_VERSION
    assert msgpack.unpackb(b.encode()) == [
        1, "app/stable", "1.4.0", b"\x11" * 32, 3 * 65536 + 5, 65536, b"\x22" * 32,
        NOW, NOW + 30 * 86400, "1.2.0", False, 25,
    ]  # fmt: skip


def test_staged_round_trip_and_schedule() -> None:
    ann = signed(**STAGED, abort=(30, 3))
    back = decode_announcement(ann.encode())
    assert back == ann
    assert back.body.stages == ((5, 0), (25, 1800), (100, 5400)) and back.body.abort == (30, 3)
    assert len(msgpack.unpackb(back.body_bytes)) == 14
    b = back.body
    assert [b.rollout_at(NOW + t) for t in (0, 1799, 1800, 5399, 5400, 10**6)] == [
        5, 5, 25, 25, 100, 100,
    ]  # fmt: skip
    assert b.next_stage_at(NOW) == NOW + 1800 and b.next_stage_at(NOW + 5400) is None


@pytest.mark.parametrize(
    "changes",
    [
        dict(format_version=FORMAT_STAGED),  # format 2 without stages or a rule
        dict(stages=((100, 0),)),  # stages in format 1
        dict(format_version=FORMAT_STAGED, stages=((5, 10),)),  # first stage not at 0
        dict(format_version=FORMAT_STAGED, stages=((50, 0), (25, 60))),  # shrinks
        dict(format_version=FORMAT_STAGED, stages=((5, 0), (25, 0))),  # no time between
        dict(format_version=FORMAT_STAGED, stages=((0, 0),)),
        dict(format_version=FORMAT_STAGED, stages=tuple((i + 1, i) for i in range(11))),
        dict(format_version=FORMAT_STAGED, abort=(0, 1)),
        dict(format_version=FORMAT_STAGED, abort=(30, 0)),
        dict(format_version=FORMAT_STAGED, abort=(True, 1)),
    ],
)
def test_bad_schedules_and_rules_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        body(**changes)


def test_a_staged_body_with_a_wrong_field_count_is_malformed() -> None:
    ann = signed(**STAGED)
    fields = msgpack.unpackb(ann.body_bytes)
    for bad in (fields[:13], [1, *fields[1:]], [*fields, None]):
        data = msgpack.packb([msgpack.packb(bad), [[pub(KEYS[0]), b"\x00" * 64]]])
        with pytest.raises(RemoteProtocolError):
            decode_announcement(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(1, 255))
def test_a_flipped_byte_of_a_staged_announcement_never_verifies_as_another(
    pos: int, delta: int
) -> None:
    ann = signed(**STAGED, abort=(30, 3))
    data = bytearray(ann.encode())
    pos %= len(data)
    data[pos] = (data[pos] + delta) % 256
    try:
        got = decode_announcement(bytes(data))
    except RemoteProtocolError:
        return
    assert got.body == ann.body or not got.valid_signers()


def test_the_act_decision_follows_the_open_stage() -> None:
    ann = signed(**STAGED)
    # A node id whose rollout position is between 5 % and 25 % (found by search).
    node = next(
        bytes([i]) * 32
        for i in range(256)
        if not act_decision(ann, node_id=bytes([i]) * 32, installed_version=None,
                            quarantined=(), now=NOW).ok
        and act_decision(ann, node_id=bytes([i]) * 32, installed_version=None,
                         quarantined=(), now=NOW + 1800).ok
    )  # fmt: skip
    early = act_decision(ann, node_id=node, installed_version=None, quarantined=(), now=NOW + 60)
    assert early.reason == "outside_rollout"
    later = act_decision(ann, node_id=node, installed_version=None, quarantined=(), now=NOW + 1800)
    assert later.ok


# -- syntax ------------------------------------------------------------------------------


def test_stage_syntax() -> None:
    assert parse_stages("5%:30m,25%:1h,100%") == ((5, 0), (25, 1800), (100, 5400))
    assert parse_stages("100") == ((100, 0),)
    assert parse_stages("10%:1s,50%:1s") == ((10, 0), (50, 1))
    for bad in ("", "5%,100%", "0%", "101%", "50%:1h,25%", "5%:x", "a", ",", "5%:0s,100%"):
        with pytest.raises(ValueError):
            parse_stages(bad)
    assert parse_abort("30:3") == (30, 3) and parse_abort("30") == (30, 1)
    for bad in ("", "0:1", "30:0", "30:x", "x", "101"):
        with pytest.raises(ValueError):
            parse_abort(bad)


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_any_stage_text_parses_to_a_valid_schedule_or_value_error(text: str) -> None:
    try:
        stages = parse_stages(text)
    except ValueError:
        return
    body(format_version=FORMAT_STAGED, stages=stages)  # a schedule the body accepts


# -- publish --wait -------------------------------------------------------------------------


def t(*outcomes: tuple[str, str]) -> dict[bytes, tuple[str, str, str]]:
    return {bytes([i]) * 32: (o, r, f"n{i}") for i, (o, r) in enumerate(outcomes)}


def test_wait_verdict() -> None:
    assert not wait_verdict({}, goal="applied", percent=100).finished
    v = wait_verdict(t(("applied", ""), ("downloading", "")), goal="applied", percent=100)
    assert not v.finished
    v = wait_verdict(t(("applied", ""), ("downloaded", "")), goal="downloaded", percent=100)
    assert v.finished and v.ok
    v = wait_verdict(t(("applied", ""), ("pending", "")), goal="applied", percent=50)
    assert v.finished and v.ok
    # a failure: over once every node settled, never a success
    v = wait_verdict(t(("refused", "untrusted"), ("pending", "")), goal="applied", percent=50)
    assert not v.finished
    v = wait_verdict(
        t(("refused", "untrusted"), ("refused", "untrusted"), ("failed", "rolled_back: x")),
        goal="applied",
        percent=100,
    )
    assert v.finished and not v.ok
    assert (
        v.summary
        == "0 of 3 applied; 1 failed: rolled_back: x on n2; 2 refused: untrusted on n0, n1"
    )
    v = wait_verdict(t(("applied", ""), ("pending", "")), goal="applied", percent=100, aborted=True)
    assert v.finished and not v.ok


# -- yank ---------------------------------------------------------------------------------------


def test_yank_round_trip_and_trust() -> None:
    y = sign_yank(YankBody("app/stable", "1.4.0", NOW, "broken"), [KEYS[0]])
    back = decode_yank(y.encode())
    assert back.body == y.body and back.id == y.id
    trust = TrustConfig(frozenset({pub(KEYS[0]), pub(KEYS[1])}))
    assert yank_decision(back, trust, NOW).ok
    assert yank_decision(back, TrustConfig(frozenset({pub(KEYS[2])})), NOW).reason == "untrusted"
    two = TrustConfig(frozenset({pub(KEYS[0]), pub(KEYS[1])}), threshold=2)
    assert yank_decision(back, two, NOW).reason == "below_threshold"
    assert yank_decision(sign_yank(y.body, [KEYS[0], KEYS[1]]), two, NOW).ok
    assert yank_decision(back, trust, NOW - 3600).reason == "not_yet_valid"
    # an announcement's signature is not a yank's (domain separation)
    ann_sig = sign_announcement(body(), [KEYS[0]]).signatures[0][1]
    forged = dataclasses.replace(back, signatures=((pub(KEYS[0]), ann_sig),), raw=b"")
    assert yank_decision(decode_yank(forged.encode()), trust, NOW).reason == "bad_signature"


@settings(max_examples=300)
@given(st.binary(max_size=1100))
def test_any_bytes_give_a_yank_or_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        assert decode_yank(data).encode() == data
