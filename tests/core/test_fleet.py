"""Fleet admissions and revocation lists: canonical encoding, signatures, decisions."""

from __future__ import annotations

import msgpack
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.fleet import (
    FleetPolicy,
    decode_admission,
    decode_revocations,
    sign_admission,
    sign_revocations,
)
from p2pupdate.errors import RemoteProtocolError

FLEET = nacl.signing.SigningKey(b"\x21" * 32)
OTHER = nacl.signing.SigningKey(b"\x22" * 32)
NODE = b"\x33" * 32
T0 = 1_700_000_000
DAY = 86400


def test_admission_round_trip_and_signature() -> None:
    adm = sign_admission(FLEET, NODE, T0, T0 + 365 * DAY)
    back = decode_admission(adm.raw)
    assert back == adm
    assert back.signature_ok()
    assert back.fleet_key == bytes(FLEET.verify_key)
    assert len(adm.raw) < DEFAULT_LIMITS.max_admission


def test_tampered_admission_fails_its_signature() -> None:
    adm = sign_admission(FLEET, NODE, T0, T0 + DAY)
    body = msgpack.packb([1, adm.fleet_key, NODE, T0, T0 + 400 * DAY], use_bin_type=True)
    forged = decode_admission(msgpack.packb([body, adm.signature], use_bin_type=True))
    assert not forged.signature_ok()
    assert FleetPolicy([adm.fleet_key]).check(forged, NODE, T0) == "bad_signature"


def test_non_canonical_admission_refused() -> None:
    adm = sign_admission(FLEET, NODE, T0, T0 + DAY)
    # The same values with a wider integer encoding: decodes, but is not canonical.
    body = b"\x95\x01\xc4\x20" + adm.fleet_key + b"\xc4\x20" + NODE
    body += b"\xcf" + T0.to_bytes(8, "big") + b"\xcf" + (T0 + DAY).to_bytes(8, "big")
    with pytest.raises(RemoteProtocolError, match="canonical"):
        decode_admission(msgpack.packb([body, adm.signature], use_bin_type=True))


@given(st.binary(max_size=600))
def test_admission_parser_never_crashes(data: bytes) -> None:
    try:
        adm = decode_admission(data)
    except RemoteProtocolError:
        return
    assert adm.raw == data  # whatever decodes re-encodes to the same bytes


@given(st.binary(max_size=2000))
def test_revocation_parser_never_crashes(data: bytes) -> None:
    try:
        rev = decode_revocations(data)
    except RemoteProtocolError:
        return
    assert rev.raw == data


@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=40),
    st.integers(0, 2**63 - 1),
)
def test_revocations_round_trip(ids: list[bytes], issued: int) -> None:
    rev = sign_revocations(FLEET, ids, issued)
    back = decode_revocations(rev.raw)
    assert back == rev
    assert set(back.revoked) == set(ids)
    assert back.signature_ok()


@given(
    st.integers(0, 2**63 - 2), st.integers(1, 10 * 365 * DAY), st.binary(min_size=32, max_size=32)
)
def test_admission_round_trip_property(issued: int, span: int, node: bytes) -> None:
    expires = min(issued + span, 2**63 - 1)
    adm = sign_admission(FLEET, node, issued, expires)
    assert decode_admission(adm.raw) == adm


def test_oversized_inputs_refused_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decode_admission(b"\x00" * (DEFAULT_LIMITS.max_admission + 1))
    with pytest.raises(ValueError, match="at most"):
        sign_revocations(FLEET, [i.to_bytes(32, "big") for i in range(1025)], T0)


def test_policy_decisions() -> None:
    policy = FleetPolicy([bytes(FLEET.verify_key)])
    good = sign_admission(FLEET, NODE, T0, T0 + DAY)
    assert policy.check(good, NODE, T0) is None
    assert policy.is_member(NODE, T0)
    assert policy.check(None, NODE, T0) == "no_admission"
    assert policy.check(good, b"\x44" * 32, T0) == "wrong_node"
    assert policy.check(good, NODE, T0 + DAY) == "expired"
    assert not policy.is_member(NODE, T0 + DAY)
    assert policy.check(sign_admission(OTHER, NODE, T0, T0 + DAY), NODE, T0) == "foreign_fleet"


def test_open_swarm_admits_everybody() -> None:
    policy = FleetPolicy()
    assert not policy.enabled
    assert policy.check(None, NODE, T0) is None
    assert policy.is_member(NODE, T0)


def test_revocation_latest_wins() -> None:
    policy = FleetPolicy([bytes(FLEET.verify_key)])
    adm = sign_admission(FLEET, NODE, T0, T0 + DAY)
    assert policy.offer(sign_revocations(FLEET, [NODE], T0 + 10)) is None
    assert policy.check(adm, NODE, T0) == "revoked"
    assert policy.offer(sign_revocations(FLEET, [NODE], T0 + 10)) == "not_newer"
    assert policy.offer(sign_revocations(FLEET, [], T0 + 5)) == "not_newer"
    assert policy.offer(sign_revocations(OTHER, [], T0 + 50)) == "foreign_fleet"
    assert policy.offer(sign_revocations(FLEET, [], T0 + 20)) is None  # reinstated
    assert policy.check(adm, NODE, T0) is None


def test_rotation_accepts_both_keys() -> None:
    policy = FleetPolicy([bytes(FLEET.verify_key), bytes(OTHER.verify_key)])
    assert policy.check(sign_admission(FLEET, NODE, T0, T0 + DAY), NODE, T0) is None
    assert policy.check(sign_admission(OTHER, NODE, T0, T0 + DAY), NODE, T0) is None


def test_expiry_warning() -> None:
    policy = FleetPolicy([bytes(FLEET.verify_key)])
    adm = sign_admission(FLEET, NODE, T0, T0 + 30 * DAY)
    assert policy.expiry_warning(adm, T0) is None
    assert "expires in" in (policy.expiry_warning(adm, T0 + 25 * DAY) or "")
    assert "expired" in (policy.expiry_warning(adm, T0 + 30 * DAY) or "")
