"""PeerBook: dialing choice, back-off with jitter, forgetting, bans (pure, exact)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

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
            chosen = book.to_dial(now, len(connected), in_flight)
            assert len(chosen) + len(connected) + len(in_flight) <= max(
                4, len(connected) + len(in_flight)
            )
            assert not set(chosen) & (connected | in_flight)
            in_flight |= set(chosen)
