"""Connection admission: per-source caps, reserved outbound slots, eviction (pure, exact)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.admission import (
    ConnectionSlots,
    EvictionCandidate,
    choose_eviction,
    is_loopback,
    is_private,
    netgroup,
)

LIM = Limits()


def test_netgroups_are_ipv4_slash_24_and_ipv6_slash_64() -> None:
    assert netgroup("10.1.2.3") == netgroup("10.1.2.250") == "v4:10.1.2.0"
    assert netgroup("10.1.3.3") != netgroup("10.1.2.3")
    assert netgroup("2001:db8:1:2::5") == netgroup("2001:db8:1:2:ffff::1")
    assert netgroup("2001:db8:1:3::5") != netgroup("2001:db8:1:2::5")
    assert netgroup("::ffff:10.1.2.3") == netgroup("10.1.2.9")  # IPv4-mapped
    assert netgroup("fe80::1%eth0") == netgroup("fe80::2")
    assert netgroup("n3") == "name:n3"  # in-memory transport host names
    assert is_loopback("127.0.0.1") and is_loopback("127.5.6.7") and is_loopback("::1")
    assert not is_loopback("10.0.0.1") and not is_loopback("n3")


def test_one_ip_gets_only_its_share_of_handshakes_and_connections() -> None:
    slots = ConnectionSlots(max_connections=64, max_handshakes=16, shared_loopback=False)
    for _ in range(LIM.max_handshakes_per_ip):
        assert slots.handshake_verdict("5.0.0.1") == "ok"
        slots.begin_handshake("5.0.0.1")
    assert slots.handshake_verdict("5.0.0.1") == "handshakes_per_ip"
    slots.begin_handshake("5.0.0.2")
    slots.begin_handshake("5.0.0.2")
    assert slots.handshake_verdict("5.0.0.3") == "handshakes_per_netgroup"
    assert slots.handshake_verdict("5.0.1.3") == "ok"  # another /24
    for _ in range(LIM.max_conns_per_ip):
        assert slots.inbound_verdict("5.9.0.1") == "ok"
        slots.begin_connection("5.9.0.1", outbound=False)
    assert slots.inbound_verdict("5.9.0.1") == "connections_per_ip"
    for i in range(LIM.max_conns_per_netgroup - LIM.max_conns_per_ip):
        slots.begin_connection(f"5.9.0.{i + 2}", outbound=False)
    assert slots.inbound_verdict("5.9.0.99") == "connections_per_netgroup"
    assert slots.inbound_verdict("5.9.1.1") == "ok"


def test_a_private_subnet_is_the_fleet_not_a_cheap_attacker_subnet() -> None:
    # A rack or VPC puts the whole fleet in one /24: only the per-IP caps hold there.
    slots = ConnectionSlots(max_connections=64, max_handshakes=16, shared_loopback=False)
    for i in range(3 * LIM.max_handshakes_per_netgroup):
        assert slots.handshake_verdict(f"10.0.0.{i + 1}") == "ok"
        slots.begin_handshake(f"10.0.0.{i + 1}")
    for i in range(3 * LIM.max_conns_per_netgroup):
        assert slots.inbound_verdict(f"192.168.1.{i + 1}") == "ok"
        slots.begin_connection(f"192.168.1.{i + 1}", outbound=False)
    for _ in range(LIM.max_conns_per_ip):
        slots.begin_connection("fd00::7", outbound=False)
    assert slots.inbound_verdict("fd00::7") == "connections_per_ip"  # one host: still capped
    assert is_private("10.1.2.3") and is_private("fd00::1") and is_private("fe80::1")
    assert not is_private("127.0.0.1") and not is_private("5.6.7.8") and not is_private("n3")


def test_loopback_is_one_shared_host_exempt_from_per_source_caps_unless_turned_off() -> None:
    shared = ConnectionSlots(max_connections=64, max_handshakes=16)
    for _ in range(10):
        shared.begin_handshake("127.0.0.1")
        shared.begin_connection("127.0.0.1", outbound=False)
    assert shared.handshake_verdict("127.0.0.1") == "ok"
    assert shared.inbound_verdict("127.0.0.1") == "ok"
    strict = ConnectionSlots(max_connections=64, max_handshakes=16, shared_loopback=False)
    for _ in range(10):
        strict.begin_handshake("127.0.0.1")
        strict.begin_connection("127.0.0.1", outbound=False)
    assert strict.handshake_verdict("127.0.0.1") == "handshakes_per_ip"
    assert strict.inbound_verdict("127.0.0.1") == "connections_per_ip"


def test_full_handshake_slots_ask_to_drop_the_oldest_and_inbound_is_short_of_the_reserve() -> None:
    slots = ConnectionSlots(max_connections=20, max_handshakes=3)
    for _ in range(3):
        slots.begin_handshake("127.0.0.1")
    assert slots.handshake_verdict("127.0.0.1") == "evict_oldest"
    assert slots.max_inbound == 20 - LIM.reserved_outbound
    for _ in range(slots.max_inbound):
        slots.begin_connection("127.0.0.1", outbound=False)
    assert slots.inbound_verdict("127.0.0.1") == "evict"
    assert slots.may_dial()  # the reserved outbound slots are still free
    for _ in range(LIM.reserved_outbound):
        slots.begin_connection("10.0.0.1", outbound=True)
    assert not slots.may_dial()


@given(
    st.lists(
        st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.1.1", "::1"]), st.booleans()),
        max_size=40,
    )
)
def test_counts_are_freed_when_every_connection_and_handshake_ends(
    events: list[tuple[str, bool]],
) -> None:
    slots = ConnectionSlots(max_connections=64, max_handshakes=16)
    for host, outbound in events:
        slots.begin_handshake(host)
        slots.begin_connection(host, outbound)
    for host, outbound in reversed(events):
        slots.end_handshake(host)
        slots.end_connection(host, outbound)
    assert slots.tracked_sources() == 0
    assert (slots.handshakes, slots.inbound, slots.outbound) == (0, 0, 0)


def _cand(i: int, host: str, **kw: object) -> EvictionCandidate:
    base = EvictionCandidate(bytes([i]) * 32, host, False, False, float(i), 0.0)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_eviction_takes_the_youngest_of_the_largest_netgroup() -> None:
    honest = [_cand(i, f"10.{i}.0.1") for i in range(6)]
    attack = [_cand(10 + i, f"192.0.2.{i}") for i in range(20)]
    victim = choose_eviction(honest + attack)
    assert victim is not None and victim.host.startswith("192.0.2.")
    assert victim.connected_at == 29.0  # the youngest attacker


def test_eviction_never_takes_outbound_configured_useful_or_oldest_peers() -> None:
    peers = (
        [_cand(i, "192.0.2.1", outbound=True) for i in range(5)]
        + [_cand(10 + i, "192.0.2.1", configured=True) for i in range(5)]
        + [
            _cand(20 + i, "192.0.2.1", last_useful=100.0 + i)
            for i in range(LIM.evict_protect_useful)
        ]
        + [
            _cand(30 + i, "192.0.2.1", connected_at=-10.0 + i)
            for i in range(LIM.evict_protect_oldest)
        ]
    )
    assert choose_eviction(peers) is None
    newcomer = _cand(99, "192.0.2.1", connected_at=50.0)
    assert choose_eviction([*peers, newcomer]) == newcomer


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.floats(0, 100)), max_size=60))
def test_eviction_picks_an_unprotected_inbound_peer_or_nobody(
    spec: list[tuple[int, bool, float]],
) -> None:
    peers = [
        _cand(i % 250, f"10.0.{g}.{i % 250}", outbound=out, last_useful=useful)
        for i, (g, out, useful) in enumerate(spec)
    ]
    peers = list({p.key: p for p in peers}.values())
    victim = choose_eviction(peers)
    inbound = [p for p in peers if not p.outbound]
    if victim is None:
        assert len(inbound) <= LIM.evict_protect_useful * 2 + LIM.evict_protect_oldest
    else:
        assert not victim.outbound and victim in peers


def test_the_outbound_reserve_is_at_most_half_so_a_one_connection_node_still_accepts() -> None:
    assert ConnectionSlots(max_connections=64, max_handshakes=16).max_inbound == 56
    assert ConnectionSlots(max_connections=8, max_handshakes=16).max_inbound == 4
    one = ConnectionSlots(max_connections=1, max_handshakes=16)  # the simulation's star
    assert one.max_inbound == 1 and one.inbound_verdict("127.0.0.1") == "ok"
