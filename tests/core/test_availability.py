"""The availability partition behind rarest-first, against a naive model."""

from __future__ import annotations

import random

from bitarray import bitarray
from bitarray.util import ones, zeros
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.availability import Availability, pick_random


def test_pick_random_draws_distinct_positions_and_respects_accept() -> None:
    bits = bitarray("0110110")
    got = pick_random(bitarray(bits), 10, random.Random(0))
    assert sorted(got) == [1, 2, 4, 5]
    assert pick_random(bitarray(bits), 2, random.Random(0), accept=lambda i: i != 1) != [1]
    assert pick_random(zeros(5), 3, random.Random(0)) == []


def test_rarest_comes_first() -> None:
    av = Availability(ones(4))
    av.add(bitarray("1111"))
    av.add(bitarray("1100"))
    av.add(bitarray("1000"))
    assert [av.level_of(i) for i in range(4)] == [3, 2, 1, 1]
    assert sorted(av.pick_rarest(ones(4), 2, random.Random(1))) == [2, 3]
    assert av.pick_rarest(bitarray("1100"), 1, random.Random(1)) == [1]
    av.discard(2)
    assert av.level_of(2) == -1 and av.pick_rarest(ones(4), 1, random.Random(1)) == [3]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_levels_match_a_naive_count(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    av = Availability(ones(n))
    count = [0] * n
    tracked = set(range(n))
    fields: list[bitarray] = []
    for _ in range(data.draw(st.integers(0, 30))):
        op = data.draw(st.integers(0, 3))
        if op == 0:
            b = bitarray([data.draw(st.booleans()) for _ in range(n)])
            av.add(b)
            fields.append(b)
            for i in b.search(1):
                count[i] += 1
        elif op == 1 and fields:
            b = fields.pop(data.draw(st.integers(0, len(fields) - 1)))
            av.remove(b)
            for i in b.search(1):
                count[i] -= 1
        elif op == 2:
            i = data.draw(st.integers(0, n - 1))
            av.move(i, +1)
            count[i] += 1
            fields.append(bits_with(n, i))
        else:
            i = data.draw(st.integers(0, n - 1))
            av.discard(i)
            tracked.discard(i)
        for i in range(n):
            assert av.level_of(i) == (count[i] if i in tracked else -1)
        assert sum(av.counts) == len(tracked)
    cand = bitarray([data.draw(st.booleans()) for _ in range(n)])
    k = data.draw(st.integers(1, n))
    got = av.pick_rarest(cand, k, random.Random(0))
    eligible = sorted((count[i], i) for i in cand.search(1) if i in tracked and count[i] >= 1)
    assert len(got) == min(k, len(eligible)) == len(set(got))
    if got:  # what was picked is never commoner than what was left
        worst = max(count[i] for i in got)
        left = [c for c, i in eligible if i not in got]
        assert not left or min(left) >= worst


def bits_with(n: int, i: int) -> bitarray:
    b = zeros(n)
    b[i] = 1
    return b
