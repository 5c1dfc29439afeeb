"""A super-seeder joining a swarm that already holds part of the package (a publisher
run again after the first one died): it hands out what the swarm lacks, and counts it."""

from __future__ import annotations

import random

from bitarray import bitarray
from bitarray.util import zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.seeding import SuperSeeder


def bits_of(n: int, indices: set[int] | range) -> bitarray:
    b = zeros(n)
    for i in indices:
        b[i] = 1
    return b


def test_a_seeder_joining_a_partial_swarm_shows_only_what_nobody_holds() -> None:
    n = 40
    ss: SuperSeeder[str] = SuperSeeder(n, rng=random.Random(1), window=8)
    ss.on_peer_joined("A", bits_of(n, range(0, 15)))
    ss.on_peer_joined("B", bits_of(n, range(10, 25)))
    held = set(range(25))
    assert ss.not_out == n - len(held)
    shown = ss.reveal("A") + ss.reveal("B")
    assert len(shown) == n - len(held) and not set(shown) & held
    for p, i in [("A", shown[0]), ("B", shown[8])]:
        assert ss.should_serve(p, i)
        ss.on_sent(p, i)
    # A chunk the swarm holds is refused while something it lacks is still not out.
    assert not ss.should_serve("A", 20)
    assert ss.supplied == 2 and ss.swarm_held == n - 2


def test_a_chunk_sent_that_a_peer_already_held_is_not_counted_as_supplied() -> None:
    n = 4
    ss: SuperSeeder[str] = SuperSeeder(n, rng=random.Random(1), window=8)
    ss.on_peer_joined("A", bits_of(n, {0, 1, 2, 3}))
    ss.on_peer_joined("B", zeros(n))
    assert ss.all_out
    for i in ss.reveal("B"):
        assert ss.should_serve("B", i)
        ss.on_sent("B", i)
    assert ss.total_sent == 4 and ss.supplied == 0 and ss.swarm_held == n


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=200),
    st.lists(st.lists(st.booleans(), min_size=200, max_size=200), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=16),
    st.randoms(use_true_random=False),
)
def test_resume_sends_each_missing_chunk_once_and_nothing_the_swarm_had(
    n: int, holdings: list[list[bool]], window: int, rng: random.Random
) -> None:
    """Peers fetch what they are shown and trade instantly among themselves: the seed
    sends the chunks no peer held when it came, each once, before anything else, and
    counts exactly those as supplied."""
    peers = {f"p{k}": bitarray(h[:n]) for k, h in enumerate(holdings)}
    union0 = zeros(n)
    for bits in peers.values():
        union0 |= bits
    ss: SuperSeeder[str] = SuperSeeder(n, rng=rng, window=window)
    for name, bits in peers.items():
        ss.on_peer_joined(name, bitarray(bits))
    rounds = 0
    early: list[int] = []  # sent while the swarm still lacked something
    while not all(b.all() for b in peers.values()):
        rounds += 1
        assert rounds <= n + 2, "no progress"
        got: set[int] = set()
        for name in peers:
            for i in ss.reveal(name):
                if not ss.all_out:
                    assert not union0[i], "showed a chunk the swarm already had"
                if ss.should_serve(name, i):
                    if not ss.all_out:
                        early.append(i)
                    ss.on_sent(name, i)
                    got.add(i)
        union = zeros(n)
        for bits in peers.values():
            union |= bits
        for i in got:
            union[i] = 1
        for name, bits in peers.items():  # instant trading: everyone gets the union
            new = (union & ~bits).search(1)
            bits |= union
            ss.on_peer_have(name, new)
    missing = n - union0.count()
    assert ss.supplied == missing
    assert ss.swarm_held == union0.count()
    # Each chunk the swarm lacked went out once; once nothing was lacking the seed is one
    # more source (those sends are not counted as supplied).
    assert sorted(early) == sorted(set(early)) == list((~union0).search(1))
