"""Trust policy: the relay decision, the act decision, every named reason, rollout, attacks."""

from __future__ import annotations

from fractions import Fraction

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import (
    CLOCK_SKEW,
    REASONS,
    Decision,
    TrustConfig,
    act_decision,
    in_rollout,
    is_newer,
    relay_decision,
    valid_now,
    version_key,
)
from tests.core.announce_helpers import KEYS, NOW, from_parts, pub, resign, sign_bytes, signed

AUTHORITY = KEYS[0]
SECOND = KEYS[1]
STRANGER = KEYS[5]
TRUST = TrustConfig(frozenset({pub(AUTHORITY), pub(SECOND)}))
TRUST2 = TrustConfig(frozenset({pub(AUTHORITY), pub(SECOND)}), threshold=2)
NODE = b"\x07" * 32


def relay(
    ann: Announcement,
    newest: Announcement | None = None,
    *,
    now: float = NOW + 10,
    trust: TrustConfig = TRUST,
) -> Decision:
    return relay_decision(ann, trust, now, newest)


def act(
    ann: Announcement,
    installed: str | None = None,
    quarantined: tuple[str, ...] = (),
    node_id: bytes = NODE,
) -> Decision:
    return act_decision(ann, node_id=node_id, installed_version=installed, quarantined=quarantined)


def refused(decision: Decision, reason: str) -> bool:
    return not decision.ok and decision.reason == reason


# -- Decision and TrustConfig -------------------------------------------------------------------


def test_reasons_are_the_documented_set() -> None:
    assert {
        "malformed",
        "untrusted",
        "bad_signature",
        "below_threshold",
        "expired",
        "not_yet_valid",
        "validity_too_long",
        "not_newest",
        "duplicate",
        "equivocation",
        "not_newer",
        "quarantined",
        "below_min_version",
        "outside_rollout",
        "bad_version",
        "too_large",
        "yanked",
        "rollout_aborted",
    } == REASONS


def test_decision_refuses_unknown_reason() -> None:
    with pytest.raises(ValueError):
        Decision(False, "because")
    assert Decision(True).ok


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TrustConfig(frozenset(), threshold=0)


# -- relay: signatures and threshold ------------------------------------------------------------


def test_relay_accepts_trusted_fresh_first_announcement() -> None:
    d = relay(signed(AUTHORITY))
    assert d.ok and not d.replaces and d.reason == ""


def test_relay_untrusted() -> None:
    assert refused(relay(signed(STRANGER)), "untrusted")


def test_relay_bad_signature() -> None:
    good = signed(AUTHORITY)
    other = signed(AUTHORITY, version="2.0.0")
    # the authority's key id with a signature that belongs to another body
    forged = from_parts(good.body_bytes, [other.signatures[0]])
    assert refused(relay(forged), "bad_signature")


def test_relay_below_threshold() -> None:
    assert refused(relay(signed(AUTHORITY), trust=TRUST2), "below_threshold")
    assert relay(signed(AUTHORITY, SECOND), trust=TRUST2).ok


def test_untrusted_extra_signers_do_not_count_toward_threshold() -> None:
    ann = signed(AUTHORITY, STRANGER, KEYS[6])
    assert refused(relay(ann, trust=TRUST2), "below_threshold")
    assert relay(ann).ok


def test_valid_trusted_signatures_pass_beside_a_bad_one() -> None:
    # a relay may append junk to an envelope; it must not make a good announcement fail
    good = signed(AUTHORITY)
    junk = (pub(SECOND), b"\x00" * 64)
    ann = from_parts(good.body_bytes, [*good.signatures, junk])
    assert relay(ann).ok
    assert refused(relay(ann, trust=TRUST2), "below_threshold")


# -- relay: time ---------------------------------------------------------------------------------


def test_relay_expired_with_clock_skew() -> None:
    ann = signed(AUTHORITY)
    expires = ann.body.expires
    assert relay(ann, now=expires).ok
    assert relay(ann, now=expires + CLOCK_SKEW).ok
    assert refused(relay(ann, now=expires + CLOCK_SKEW + 1), "expired")


def test_relay_not_yet_valid_with_clock_skew() -> None:
    ann = signed(AUTHORITY)
    assert relay(ann, now=NOW - CLOCK_SKEW).ok
    assert refused(relay(ann, now=NOW - CLOCK_SKEW - 1), "not_yet_valid")


def test_clock_skew_is_five_minutes_and_configurable() -> None:
    assert CLOCK_SKEW == 300
    ann = signed(AUTHORITY)
    strict = TrustConfig(TRUST.trusted_keys, clock_skew=0)
    assert refused(relay(ann, now=ann.body.expires + 1, trust=strict), "expired")


def test_validity_is_capped_at_90_days_by_default_and_the_cap_is_a_setting() -> None:
    from p2pupdate.config import DEFAULT_LIMITS

    assert DEFAULT_LIMITS.max_validity == TRUST.max_validity == 90 * 86400
    at_cap = signed(AUTHORITY, expires=NOW + 90 * 86400)
    assert relay(at_cap).ok
    # An authority key (or a thief of one) cannot freeze a channel for years.
    frozen = signed(AUTHORITY, version="99.0.0", expires=NOW + 90 * 86400 + 1)
    assert refused(relay(frozen), "validity_too_long")
    assert refused(valid_now(frozen, TRUST, NOW + 10), "validity_too_long")
    newer = signed(AUTHORITY, version="2.0.0", package_id=b"\x44" * 32)
    assert relay(newer, None).ok  # the refused one never became the newest
    loose = TrustConfig(TRUST.trusted_keys, max_validity=10 * 365 * 86400)
    assert relay(frozen, trust=loose).ok
    tight = TrustConfig(TRUST.trusted_keys, max_validity=3600)
    assert refused(relay(signed(AUTHORITY), trust=tight), "validity_too_long")
    with pytest.raises(ValueError):
        TrustConfig(TRUST.trusted_keys, max_validity=0)
    # Who signed is checked first: an untrusted over-long one is "untrusted".
    assert refused(relay(signed(STRANGER, expires=NOW + 400 * 86400)), "untrusted")


@given(st.integers(1, 2**40), st.integers(1, 2**40))
def test_validity_cap_holds_for_any_length(length: int, cap: int) -> None:
    ann = signed(AUTHORITY, expires=NOW + length)
    trust = TrustConfig(TRUST.trusted_keys, max_validity=cap)
    assert valid_now(ann, trust, NOW + 1).ok == (length <= cap)


# -- relay: freshness against the newest for the channel -------------------------------------------


def test_relay_newer_version_accepted() -> None:
    old = signed(AUTHORITY, version="1.4.0")
    new = signed(AUTHORITY, version="1.5.0", package_id=b"\x33" * 32)
    d = relay(new, old)
    assert d.ok and not d.replaces


def test_relay_not_newest() -> None:
    old = signed(AUTHORITY, version="1.4.0")
    new = signed(AUTHORITY, version="1.5.0", package_id=b"\x33" * 32)
    assert refused(relay(old, new), "not_newest")


def test_relay_duplicate() -> None:
    ann = signed(AUTHORITY)
    assert refused(relay(ann, ann), "duplicate")
    # more signatures on the same body is still the same announcement
    assert refused(relay(signed(AUTHORITY, SECOND), ann), "duplicate")


def test_relay_equivocation_other_package() -> None:
    first = signed(AUTHORITY)
    second = signed(AUTHORITY, package_id=b"\x44" * 32, created=NOW + 5)
    assert refused(relay(second, first), "equivocation")


@pytest.mark.parametrize(
    "change", [{"size": 12345}, {"table_root": b"\x55" * 32}], ids=["size", "table_root"]
)
def test_relay_equivocation_same_package_other_content(change: dict[str, object]) -> None:
    first = signed(AUTHORITY)
    second = signed(AUTHORITY, created=NOW + 5, **change)
    assert refused(relay(second, first), "equivocation")


def test_relay_replaces_same_package_later_created() -> None:
    first = signed(AUTHORITY, rollout=10)
    wider = signed(AUTHORITY, rollout=50, created=NOW + 60, expires=NOW + 60 * 86400)
    d = relay(wider, first)
    assert d.ok and d.replaces
    # the earlier one does not replace the later one
    assert refused(relay(first, wider), "not_newest")


def test_relay_same_package_same_created_other_fields_is_not_newest() -> None:
    first = signed(AUTHORITY, rollout=10)
    other = signed(AUTHORITY, rollout=50)
    assert refused(relay(other, first), "not_newest")


def test_relay_build_metadata_ignored_in_version_order() -> None:
    first = signed(AUTHORITY, version="1.4.0+build.1")
    same_later = signed(AUTHORITY, version="1.4.0+build.2", created=NOW + 1)
    d = relay(same_later, first)
    assert d.ok and d.replaces
    other_pkg = signed(AUTHORITY, version="1.4.0+build.2", package_id=b"\x66" * 32)
    assert refused(relay(other_pkg, first), "equivocation")


def test_relay_newest_for_another_channel_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        relay(signed(AUTHORITY), signed(AUTHORITY, channel="other"))


def test_relay_check_order_signature_before_time() -> None:
    # an untrusted, expired announcement is refused as untrusted: trust is checked first
    ann = signed(STRANGER)
    assert refused(relay(ann, now=ann.body.expires + 10 * CLOCK_SKEW), "untrusted")


# -- version order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0.1", "1.0.0"),
        ("1.10.0", "1.9.0"),
        ("2.0.0", "1.99.99"),
        ("1.0.0", "1.0.0-rc.1"),
        ("1.0.0-rc.2", "1.0.0-rc.1"),
        ("1.0.0-rc.10", "1.0.0-rc.9"),
        ("1.0.0-beta", "1.0.0-alpha"),
    ],
)
def test_is_newer(a: str, b: str) -> None:
    assert is_newer(a, b)
    assert not is_newer(b, a)


def test_build_metadata_ignored() -> None:
    assert version_key("1.0.0+a") == version_key("1.0.0+b") == version_key("1.0.0")
    assert not is_newer("1.0.0+b", "1.0.0+a")
    assert not is_newer("1.0.0+a", "1.0.0+b")
    assert not is_newer("1.0.0", "1.0.0")
    assert is_newer("1.0.0", None)


# -- act -----------------------------------------------------------------------------------------


def test_act_accepts_newer_than_installed() -> None:
    assert act(signed(AUTHORITY), installed="1.3.9").ok
    assert act(signed(AUTHORITY), installed=None).ok


@pytest.mark.parametrize("installed", ["1.4.0", "1.4.0+other", "1.5.0", "2.0.0-rc.1"])
def test_act_not_newer(installed: str) -> None:
    assert refused(act(signed(AUTHORITY), installed=installed), "not_newer")


@pytest.mark.parametrize("quarantined", [("1.4.0",), ("0.1.0", "1.4.0+bad")])
def test_act_quarantined(quarantined: tuple[str, ...]) -> None:
    assert refused(act(signed(AUTHORITY), "1.0.0", quarantined), "quarantined")
    assert act(signed(AUTHORITY), "1.0.0", ("1.3.0", "1.4.1")).ok


def test_act_below_min_version() -> None:
    ann = signed(AUTHORITY, min_version="1.2.0")
    assert refused(act(ann, installed="1.1.9"), "below_min_version")
    assert act(ann, installed="1.2.0").ok
    assert act(ann, installed="1.2.0+x").ok
    assert refused(act(ann, installed="1.2.0-rc.1"), "below_min_version")
    # installed version unknown: min_version cannot be checked, so it does not block
    assert act(ann, installed=None).ok


def test_act_too_large_only_with_a_limit() -> None:
    ann = signed(AUTHORITY)
    size = ann.body.size
    limited = act_decision(
        ann, node_id=NODE, installed_version=None, quarantined=(), max_size=size - 1
    )
    assert refused(limited, "too_large") and limited.detail
    assert act_decision(ann, node_id=NODE, installed_version=None, quarantined=(), max_size=size).ok
    assert act(ann).ok


def test_act_outside_rollout() -> None:
    assert refused(act(signed(AUTHORITY, rollout=0)), "outside_rollout")
    assert act(signed(AUTHORITY, rollout=100)).ok


def test_act_check_order() -> None:
    # The one act gate's order (the applicator's, which the agent always asked first):
    # quarantine over not newer, not newer over min_version, min_version over rollout.
    ann = signed(AUTHORITY, rollout=0, min_version="1.3.0")
    assert refused(act(ann, "1.4.0", ("1.4.0",)), "quarantined")
    assert refused(act(ann, "1.4.0"), "not_newer")
    assert refused(act(ann, "1.0.0", ("1.4.0",)), "quarantined")
    assert refused(act(ann, "1.0.0"), "below_min_version")
    assert refused(act(ann, "1.3.0"), "outside_rollout")


# -- rollout membership ----------------------------------------------------------------------------


def ref_in_rollout(node_id: bytes, version: str, rollout: int) -> bool:
    x = int.from_bytes(blake3.blake3(node_id + version.encode()).digest()[:8], "big")
    return Fraction(x, 2**64) < Fraction(rollout, 100)


@settings(max_examples=300, deadline=None)
@given(
    node_id=st.binary(min_size=32, max_size=32),
    version=st.sampled_from(["1.0.0", "1.4.0", "2.0.0-rc.1", "1.4.0+b"]),
    rollout=st.integers(0, 100),
)
def test_rollout_matches_independent_formula(node_id: bytes, version: str, rollout: int) -> None:
    assert in_rollout(node_id, version, rollout) == ref_in_rollout(node_id, version, rollout)


def test_rollout_fraction_is_about_right_and_monotonic() -> None:
    nodes = [i.to_bytes(32, "big") for i in range(2000)]
    inside = {r: {n for n in nodes if in_rollout(n, "1.4.0", r)} for r in (0, 10, 50, 90, 100)}
    assert inside[0] == set()
    assert inside[100] == set(nodes)
    assert 100 < len(inside[10]) < 300
    assert 850 < len(inside[50]) < 1150
    # widening a rollout never drops a node that was in
    assert inside[10] <= inside[50] <= inside[90] <= inside[100]


def test_rollout_depends_on_version() -> None:
    nodes = [i.to_bytes(32, "big") for i in range(400)]
    a = {n for n in nodes if in_rollout(n, "1.4.0", 50)}
    b = {n for n in nodes if in_rollout(n, "1.5.0", 50)}
    assert a != b


def test_rollout_edge_is_exact() -> None:
    # find a node whose value sits just below 1% and check the boundary is strict
    for i in range(100000):
        node = i.to_bytes(32, "big")
        x = int.from_bytes(blake3.blake3(node + b"1.4.0").digest()[:8], "big")
        if x * 100 < 2**64:
            break
    assert in_rollout(node, "1.4.0", 1)
    assert not in_rollout(node, "1.4.0", 0)


# -- attacks: validly signed (or re-signed) bad input --------------------------------------------


def test_attack_replay_of_older_release_is_not_relayed_or_applied() -> None:
    old = signed(AUTHORITY, version="1.3.0", package_id=b"\x31" * 32)
    current = signed(AUTHORITY, version="1.4.0")
    assert refused(relay(old, current), "not_newest")
    assert refused(act(old, installed="1.4.0"), "not_newer")


def test_attack_expired_release_replayed_to_a_fresh_node() -> None:
    old = signed(AUTHORITY, expires=NOW + 3600)
    assert refused(relay(old, None, now=NOW + 7200), "expired")


def test_attack_stranger_key_signs_a_perfect_announcement() -> None:
    evil = resign(signed(AUTHORITY), STRANGER, version="9.0.0", package_id=b"\xee" * 32)
    assert refused(relay(evil), "untrusted")


def test_attack_key_id_spoofing() -> None:
    # the attacker signs with its own key but claims the authority's key id
    evil_body = signed(AUTHORITY, version="9.0.0").body_bytes
    _, sig = sign_bytes(STRANGER, evil_body)
    ann = from_parts(evil_body, [(pub(AUTHORITY), sig)])
    assert refused(relay(ann), "bad_signature")


def test_attack_signature_transplant_onto_other_body() -> None:
    genuine = signed(AUTHORITY)
    evil_body = signed(STRANGER, package_id=b"\xee" * 32).body_bytes
    ann = from_parts(evil_body, list(genuine.signatures))
    assert refused(relay(ann), "bad_signature")


def test_attack_duplicated_signature_to_reach_threshold() -> None:
    genuine = signed(AUTHORITY)
    ann = from_parts(genuine.body_bytes, [genuine.signatures[0]] * 2)
    assert refused(relay(ann, trust=TRUST2), "below_threshold")


def test_attack_equivocation_by_compromised_authority() -> None:
    honest = signed(AUTHORITY)
    evil = resign(honest, AUTHORITY, package_id=b"\xee" * 32, created=NOW + 100)
    assert refused(relay(evil, honest), "equivocation")


def test_attack_replacement_that_swaps_the_chunk_table() -> None:
    honest = signed(AUTHORITY)
    evil = resign(honest, AUTHORITY, table_root=b"\xee" * 32, created=NOW + 100)
    assert refused(relay(evil, honest), "equivocation")


def test_attack_build_metadata_bump_to_reinstall() -> None:
    honest = signed(AUTHORITY)
    bump = resign(honest, AUTHORITY, version="1.4.0+evil", package_id=b"\xee" * 32)
    assert refused(relay(bump, honest), "equivocation")
    assert refused(act(bump, installed="1.4.0"), "not_newer")


def test_attack_future_dated_announcement_to_pin_the_newest() -> None:
    evil = resign(signed(AUTHORITY), AUTHORITY, created=NOW + 10 * 86400, expires=NOW + 40 * 86400)
    assert refused(relay(evil, now=NOW), "not_yet_valid")


def test_attack_reinstall_of_quarantined_version_via_replacement() -> None:
    bad = signed(AUTHORITY)
    renewed = resign(bad, AUTHORITY, created=NOW + 60, expires=NOW + 90 * 86400)
    assert relay(renewed, bad).replaces
    assert refused(act(renewed, installed="1.3.0", quarantined=("1.4.0",)), "quarantined")


def test_attack_skip_required_intermediate_release() -> None:
    ann = signed(AUTHORITY, version="3.0.0", min_version="2.0.0")
    assert refused(act(ann, installed="1.9.0"), "below_min_version")
