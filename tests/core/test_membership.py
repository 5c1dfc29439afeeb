"""PeerBook: dialing choice, back-off with jitter, forgetting, bans (pure, exact)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.membership import PeerBook

A = ("127.0.0.1", 4001)
B = ("127.0.0.1", 4002)
C = ("127.0.0.1", 4003)


def test_bootstrap_peers_are_dialed_at_once_up_to_the_target() -> None:
    book = PeerBook(random.Random(1), [A, B, C], target=2)
    chosen = book.to_dial(0.0, active=0, in_flight=set())
    assert len(chosen) == 2 and set(chosen) <= {A, B, C}
    assert book.to_dial(0.0, active=2, in_flight=set()) == []
    assert book.to_dial(0.0, active=1, in_flight=set(chosen)) == []


def test_failed_dials_back_off_exponentially_with_jitter() -> None:
    book = PeerBook(random.Random(2), [A], target=8, base_backoff=1.0, max_backoff=60.0)
    delays = []
    now = 0.0
    for _ in range(7):
        book.on_dial_failed(A, now)
        deadline = book.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        assert book.to_dial(now, 0, set()) == []  # not before the deadline
        now = deadline
        assert book.to_dial(now, 0, set()) == [A]
    for k, d in enumerate(delays):
        nominal = min(60.0, 2.0**k)
        assert 0.5 * nominal <= d <= 1.5 * nominal


def test_learned_peers_are_forgotten_after_repeated_failures_bootstrap_ones_never() -> None:
    book = PeerBook(random.Random(3), [A], target=8, forget_after=3)
    assert book.add(B)
    for _ in range(3):
        book.on_dial_failed(A, 0.0)
        book.on_dial_failed(B, 0.0)
    assert A in book.known()
    assert B not in book.known()


def test_self_and_port_zero_are_never_dialed_nor_shared() -> None:
    book = PeerBook(random.Random(4), [A], target=8)
    book.mark_self(A)
    assert not book.add(("127.0.0.1", 0))
    book.on_connected(("10.1.1.1", 0))
    assert book.to_dial(0.0, 0, set()) == []
    assert ("10.1.1.1", 0) not in book.sample(10)


def test_bans_cover_node_id_and_address_until_they_expire() -> None:
    book = PeerBook(random.Random(5), [A, B], target=8)
    book.ban(A, b"n" * 32, until=100.0)
    assert book.is_banned(A, 50.0) and book.is_node_banned(b"n" * 32, 50.0)
    assert A not in book.to_dial(50.0, 0, set())
    assert A not in book.sample(10)
    assert not book.is_banned(B, 50.0)  # never a whole IP: B shares A's IP
    book.lift_expired_bans(100.0)
    assert not book.is_banned(A, 100.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "fail", "conn", "disc", "dial"]),
            st.integers(1, 30),
            st.floats(0, 5),
        ),
        max_size=80,
    )
)
def test_dialing_never_exceeds_target_nor_picks_connected_or_in_flight(ops: list) -> None:  # type: ignore[type-arg]
    book = PeerBook(random.Random(0), [("h", 1)], target=4)
    connected: set[tuple[str, int]] = set()
    in_flight: set[tuple[str, int]] = set()
    now = 0.0
    for op, port, dt in ops:
        now += dt
        addr = ("h", port)
        if op == "add":
            book.add(addr)
        elif op == "fail" and addr in in_flight:
            in_flight.discard(addr)
            book.on_dial_failed(addr, now)
        elif op == "conn" and addr in in_flight:
            in_flight.discard(addr)
            connected.add(addr)
            book.on_connected(addr)
        elif op == "disc" and addr in connected:
            connected.discard(addr)
            book.on_disconnected(addr, now)
        elif op == "dial":
            short = book.short_of_addresses(now, len(connected), in_flight)
            chosen = book.to_dial(now, len(connected), in_flight)
            assert len(chosen) + len(connected) + len(in_flight) <= max(
                4, len(connected) + len(in_flight)
            )
            assert not set(chosen) & (connected | in_flight)
            # Short of addresses exactly when below target with nothing to dial.
            assert short == (len(connected) + len(in_flight) < 4 and not chosen)
            in_flight |= set(chosen)


def test_a_dial_that_became_a_connection_counts_once() -> None:
    # The shell keeps a dialled address in ``in_flight`` for the connection's life; it
    # is also in ``active``. Counted twice, 2 outbound peers of a target of 4 left no
    # room: nodes of a 10-node fleet stopped at 5-7 peers of their 8.
    book = PeerBook(random.Random(6), [A, B], target=4)
    assert book.add(C) and book.add(("127.0.0.1", 4004))
    book.on_connected(A)
    book.on_connected(B)
    chosen = book.to_dial(0.0, active=2, in_flight={A, B})
    assert set(chosen) == {C, ("127.0.0.1", 4004)}
    assert not book.short_of_addresses(0.0, 2, {A, B})
    assert book.to_dial(0.0, active=2, in_flight={A, B, *chosen}) == []


def test_short_of_addresses_below_target_with_nothing_left_to_dial() -> None:
    book = PeerBook(random.Random(5), [A], target=3, base_backoff=1.0)
    assert not book.short_of_addresses(0.0, 0, set())  # A can be dialed
    assert book.short_of_addresses(0.0, 0, {A})  # dialing the only one we know
    book.on_connected(A)
    assert book.short_of_addresses(0.0, 1, set())
    assert book.add(B)  # PEX brought one: dial it first
    assert not book.short_of_addresses(0.0, 1, set())
    book.on_dial_failed(B, 0.0)  # backed off: nothing to dial until its deadline
    assert book.short_of_addresses(0.0, 1, set())
    assert not book.short_of_addresses(0.0, 3, set())  # at target: not short


# -- strikes and bans keyed on what a peer cannot choose ----------------------------------


def _lim(**kw: int) -> Limits:
    return Limits(**kw)


def test_rotating_the_listen_port_or_the_key_does_not_evade_strikes() -> None:
    """Strikes count per proven node id and per observed IP, never per claimed port."""
    book = PeerBook(random.Random(0), limits=_lim(strikes_to_ban=3, ip_strikes_to_ban=6))
    nid = b"\x01" * 32
    verdicts = [book.strike("10.0.0.9", nid, float(t), shared=False) for t in range(3)]
    assert [v.ban_node for v in verdicts] == [False, False, True]
    # New keys from the same IP: each alone is below the node threshold, the IP is not.
    more = [book.strike("10.0.0.9", bytes([t]) * 32, 5.0, shared=False) for t in range(2, 5)]
    assert [v.ban_ip for v in more] == [False, False, True]
    assert not any(v.ban_node for v in more)


def test_a_shared_host_is_never_banned_as_a_whole() -> None:
    book = PeerBook(random.Random(0), limits=_lim(ip_strikes_to_ban=2))
    verdicts = [book.strike("127.0.0.1", None, 0.0, shared=True) for _ in range(50)]
    assert not any(v.ban_ip for v in verdicts)


def test_strikes_are_forgotten_after_the_window_and_capped() -> None:
    book = PeerBook(
        random.Random(0), limits=_lim(max_strike_entries=10, strikes_to_ban=2), strike_window=60
    )
    book.strike("10.0.0.1", b"\x01" * 32, 0.0, shared=False)
    assert not book.strike("10.0.0.1", b"\x01" * 32, 61.0, shared=False).ban_node
    for i in range(1000):
        book.strike(f"10.{i // 250}.0.{i % 250}", i.to_bytes(32, "big"), 100.0, shared=False)
    assert book.strike_entries() <= 20
    book.lift_expired_bans(1000.0)
    assert book.strike_entries() == 0


def test_an_ip_ban_never_stops_dials_to_configured_peers() -> None:
    honest_behind_nat = ("10.0.0.9", 4000)
    learned = ("10.0.0.9", 4001)
    book = PeerBook(random.Random(0), [honest_behind_nat], target=8)
    book.add(learned)
    book.ban_ip("10.0.0.9", until=100.0)
    assert book.is_ip_banned("10.0.0.9", 50.0)
    assert book.to_dial(50.0, 0, set()) == [honest_behind_nat]
    assert sorted(book.to_dial(150.0, 0, set())) == [honest_behind_nat, learned]


def test_bans_are_capped_dropping_the_one_ending_soonest() -> None:
    book = PeerBook(random.Random(0), limits=_lim(max_bans=100))
    for i in range(1000):
        book.ban(("10.0.0.1", i + 1), i.to_bytes(32, "big"), until=float(i))
    assert book.ban_entries() == 200
    assert book.is_node_banned((999).to_bytes(32, "big"), 0.0)
    assert not book.is_node_banned((0).to_bytes(32, "big"), -1.0)


def test_aliases_of_ourselves_are_capped() -> None:
    book = PeerBook(random.Random(0), limits=_lim(max_self_addrs=8))
    for i in range(500):
        book.mark_self((f"127.0.{i // 250}.{i % 250}", 4000))
    assert len(book._self) == 8


# -- PEX: per-source quotas, bucketing, addresses that worked stay ------------------------


def test_one_source_cannot_fill_the_table_beyond_its_quota() -> None:
    book = PeerBook(random.Random(0), limits=_lim(max_addrs_per_source=16))
    added = sum(book.add((f"198.51.100.{i % 250}", 1000 + i), "v4:203.0.113.0") for i in range(500))
    assert added == 16
    assert book.add(("10.0.0.1", 4000), "v4:192.0.2.0")  # another source still has room


def test_full_table_evicts_a_never_worked_entry_of_the_largest_source_never_a_working_one() -> None:
    book = PeerBook(random.Random(0), limits=_lim(max_known_addrs=40, max_addrs_per_source=30))
    honest = ("10.0.0.1", 4000)
    assert book.add(honest, "v4:192.0.2.0")
    book.on_connected(honest)
    book.on_disconnected(honest, 0.0)
    for i in range(9):
        assert book.add((f"10.1.0.{i}", 4000), "v4:192.0.2.0")
    for src in range(5):  # many sources flooding fake addresses
        for i in range(100):
            book.add((f"198.51.{src}.{i}", 5000), f"v4:203.0.{src}.0")
    known = book.known()
    assert len(known) == 40
    assert honest in known  # it worked: never evicted
    by_source = [sum(1 for a in known if a[0].startswith(f"198.51.{s}.")) for s in range(5)]
    assert max(by_source) - min(by_source) <= 2  # bucketing keeps sources balanced


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3000)), max_size=300))
@settings(max_examples=50)
def test_addresses_that_worked_are_never_evicted(ops: list[tuple[int, int]]) -> None:
    book = PeerBook(random.Random(0), limits=_lim(max_known_addrs=20, max_addrs_per_source=8))
    worked: set[tuple[str, int]] = set()
    for src, port in ops:
        addr = (f"10.0.{src}.1", port)
        if port % 7 == 0:
            book.on_connected(addr)
            if addr in book.known():
                worked.add(addr)
        else:
            book.add(addr, f"s{src}")
        assert len(book.known()) <= 20
        for src in range(6):  # the per-source counts match the table
            assert book.source_count(f"s{src}") == sum(
                1 for e in book._known.values() if e.source == f"s{src}"
            )
    assert worked <= set(book.known())


def test_dials_go_to_known_good_addresses_before_fresh_pex_ones() -> None:
    book = PeerBook(random.Random(0), [A], target=2)
    good = ("10.0.0.7", 4000)
    book.on_connected(good)
    book.on_disconnected(good, 0.0)
    for i in range(50):
        book.add((f"198.51.100.{i}", 4000), f"v4:203.0.113.{i}")
    assert set(book.to_dial(10.0, active=0, in_flight=set())) == {A, good}
