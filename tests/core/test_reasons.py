"""One list of reason codes: short snake_case codes, details apart, old values kept."""

from __future__ import annotations

import re

import nacl.signing
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core import admission, apply, fleet, policy, retry, selfupdate
from p2pupdate.core.reasons import ACT_REASONS, RELAY_REASONS, Reason, split_reason


def test_codes_are_short_snake_case() -> None:
    for r in Reason:
        assert re.fullmatch(r"[a-z][a-z_]*[a-z]", r.value), r
        assert str(r) == r.value  # a member is its string in events and state files


def test_module_names_are_the_enum() -> None:
    """policy, apply, retry and selfupdate name the same codes, with their old values."""
    assert policy.REASONS == RELAY_REASONS | ACT_REASONS
    for name in ("NOT_NEWER", "QUARANTINED", "TOO_LARGE", "HASH_MISMATCH", "DISK_FULL"):
        assert getattr(apply, name) is Reason[name]
    assert apply.TOO_MANY_ATTEMPTS == "too_many_attempts"
    assert selfupdate.FAILED_ON_OTHERS is Reason.FAILED_ON_OTHERS
    assert set(retry.RETRYABLE) <= {r.value for r in Reason}


@given(code=st.sampled_from(list(Reason)), detail=st.text(max_size=20))
def test_split_reason_takes_the_code_apart(code: Reason, detail: str) -> None:
    got_code, got_detail = split_reason(f"{code}: {detail}")
    assert got_code == code and got_detail == detail.strip()
    assert split_reason(code.value) == (code.value, "")


def test_membership_and_connection_refusals_are_codes() -> None:
    """The node's refusals (core.fleet, core.admission) are enum members, and every
    ``peer_refused`` reason docs/operations.md lists is one, with its old value."""
    fleet_key = nacl.signing.SigningKey(b"\x21" * 32)
    node = b"\x33" * 32
    policy = fleet.FleetPolicy([bytes(fleet_key.verify_key)])
    adm = fleet.sign_admission(fleet_key, node, 1_700_000_000, 1_700_086_400)
    assert policy.check(None, node, 1_700_000_000) is Reason.NO_ADMISSION
    assert policy.check(adm, b"\x44" * 32, 1_700_000_000) is Reason.WRONG_NODE
    assert policy.check(adm, node, 1_700_086_400) is Reason.EXPIRED
    slots = admission.ConnectionSlots(max_connections=64, max_handshakes=16)
    for _ in range(DEFAULT_LIMITS.max_handshakes_per_ip):
        slots.begin_handshake("203.0.113.7")
    assert slots.handshake_verdict("203.0.113.7") is Reason.HANDSHAKES_PER_IP
    documented = {
        "no_admission", "malformed_admission", "foreign_fleet", "wrong_node",
        "bad_signature", "expired", "revoked",
    }  # fmt: skip
    assert documented <= {r.value for r in Reason}
