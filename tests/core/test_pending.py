"""PendingBitfields: bitfields of unknown packages, capped and freed with their peer."""

from __future__ import annotations

from bitarray.util import ones, zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.pending import PendingBitfields

LIM = Limits(max_pending_bitfield_packages=8, max_pending_bitfields_per_peer=3)


def test_per_peer_and_per_package_caps() -> None:
    p: PendingBitfields[int, str] = PendingBitfields(LIM)
    assert [p.keep("a", pkg, ones(16)) for pkg in range(5)] == [True] * 3 + [False] * 2
    assert p.keep("a", 0, zeros(16))  # a newer bitfield replaces the older
    assert p.of_peer("a") == 3 and p.count() == 3
    for peer in "bcdefg":
        for pkg in range(10, 13):
            p.keep(peer, pkg, ones(16))
    assert p.packages() == 6
    assert [p.keep("x", pkg, ones(16)) for pkg in (20, 21, 22)] == [True, True, False]
    assert p.packages() == 8


def test_have_sets_bits_of_a_pending_bitfield_and_never_adds_one() -> None:
    p: PendingBitfields[int, str] = PendingBitfields(LIM)
    p.keep("a", 1, zeros(8))
    p.have("a", 1, [0, 7, 99])
    p.have("b", 1, [0])
    p.have("a", 2, [0])
    assert p.count() == 1
    assert p.take(1)["a"].to01() == "10000001"
    assert p.count() == 0 and p.of_peer("a") == 0


def test_everything_of_a_peer_is_freed_when_it_goes() -> None:
    p: PendingBitfields[int, str] = PendingBitfields(LIM)
    for pkg in range(3):
        p.keep("a", pkg, ones(8))
        p.keep("b", pkg, ones(8))
    p.drop_peer("a")
    assert p.count() == 3 and p.of_peer("a") == 0
    p.drop_peer("b")
    assert p.count() == 0 and p.packages() == 0
    assert p._per_peer == {}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["keep", "have", "take", "drop"]),
            st.integers(0, 6),
            st.integers(0, 20),
        ),
        max_size=200,
    )
)
@settings(max_examples=100)
def test_caps_hold_and_counts_match_whatever_the_order(
    ops: list[tuple[str, int, int]],
) -> None:
    p: PendingBitfields[int, int] = PendingBitfields(LIM)
    for op, peer, pkg in ops:
        if op == "keep":
            p.keep(peer, pkg, ones(8))
        elif op == "have":
            p.have(peer, pkg, [1])
        elif op == "take":
            p.take(pkg)
        else:
            p.drop_peer(peer)
        assert p.packages() <= LIM.max_pending_bitfield_packages
        for q in range(7):
            held = sum(1 for h in p._by_package.values() if q in h)
            assert held == p.of_peer(q) <= LIM.max_pending_bitfields_per_peer
    for q in range(7):
        p.drop_peer(q)
    assert p.count() == 0 and p.packages() == 0
