"""The virtual network's arithmetic: rates, queueing, latency, draws, figures."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core.codec import encode
from p2pupdate.core.messages import Chunk, Have, Ping, Request
from p2pupdate.core.netmodel import (
    SMALL_WRITE,
    LinkProfile,
    Port,
    assign_profiles,
    churn_schedule,
    connection_lifetime,
    frame_codes,
    kumar_ross_heterogeneous,
    link_latency,
    percentile,
    quantize,
    transmit,
)
from p2pupdate.sim.report import kumar_ross_bound

MIB = 1024 * 1024


def test_a_write_takes_its_size_over_the_rate_plus_the_latency() -> None:
    up, down = Port(MIB), Port(4 * MIB)
    sent, arrival = transmit(10.0, MIB, up, down, 0.05)
    assert sent == pytest.approx(11.0)
    assert arrival == pytest.approx(11.05)
    assert up.free_at == pytest.approx(11.0)


def test_writes_queue_behind_each_other_on_the_uplink() -> None:
    up = Port(MIB)
    a = transmit(0.0, MIB // 2, up, Port(0), 0.0)
    b = transmit(0.0, MIB // 2, up, Port(0), 0.0)
    assert a[0] == pytest.approx(0.5)
    assert b[0] == pytest.approx(1.0)  # after the first, not at the same time


def test_the_slower_downlink_decides_when_bytes_arrive() -> None:
    down = Port(MIB)
    _, first = transmit(0.0, MIB, Port(0), down, 0.01)
    _, second = transmit(0.0, MIB, Port(0), down, 0.01)  # another sender, same receiver
    assert first == pytest.approx(1.01)
    assert second == pytest.approx(2.01)


def test_unlimited_rates_leave_only_the_latency() -> None:
    sent, arrival = transmit(3.0, 10 * MIB, Port(0), Port(0), 0.02)
    assert sent == 3.0
    assert arrival == pytest.approx(3.02)


def test_a_small_write_does_not_wait_behind_bulk_data_but_uses_the_link() -> None:
    up = Port(MIB)
    transmit(0.0, MIB, up, Port(0), 0.0)  # one second of bulk data queued
    sent, arrival = transmit(0.0, 100, up, Port(0), 0.01)
    assert sent < 0.001 and arrival < 0.02
    assert up.free_at == pytest.approx(1.0 + 100 / MIB)  # the bulk is pushed back a little
    assert len(encode(Have(b"\x01" * 32, tuple(range(100))))) <= SMALL_WRITE


def test_latency_of_a_link_is_both_access_latencies() -> None:
    a, b = LinkProfile(1, 1, 0.01), LinkProfile(1, 1, 0.025)
    assert link_latency(a, b) == pytest.approx(0.035)


@given(
    st.lists(
        st.tuples(
            st.floats(0, 5), st.integers(0, 4 * MIB), st.sampled_from([0, 1000, MIB, 8 * MIB])
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(0, 0.5),
)
def test_no_byte_arrives_before_it_was_sent_and_crossed_the_link(
    writes: list[tuple[float, int, int]], latency: float
) -> None:
    up, down = Port(MIB), Port(2 * MIB)
    now = 0.0
    for dt, size, _ in writes:
        now += dt
        free_before = up.free_at
        sent, arrival = transmit(now, size, up, down, latency)
        assert sent >= now
        assert arrival >= sent + latency - 1e-9
        assert arrival >= now + size / down.rate + latency - 1e-9
        assert up.free_at >= free_before  # a port's busy time never goes back


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        Port(-1)
    with pytest.raises(ValueError):
        LinkProfile(math.inf, 1, 0)
    with pytest.raises(ValueError):
        transmit(0.0, -1, Port(1), Port(1), 0.0)


def test_profiles_are_drawn_from_the_seed_with_the_exact_slow_share() -> None:
    base = LinkProfile(2 * MIB, 8 * MIB, 0.02)
    a = assign_profiles(1000, random.Random(5), base, slow_fraction=0.1, slow_factor=10,
                        latency_spread=0.5)  # fmt: skip
    b = assign_profiles(1000, random.Random(5), base, slow_fraction=0.1, slow_factor=10,
                        latency_spread=0.5)  # fmt: skip
    assert a == b
    slow = [p for p in a if p.upload < base.upload]
    assert len(slow) == 100
    assert all(p.upload == base.upload / 10 and p.download == base.download / 10 for p in slow)
    assert all(0.01 <= p.latency <= 0.03 for p in a)
    assert len({p.latency for p in a}) > 900  # drawn, not all the same
    c = assign_profiles(1000, random.Random(6), base, slow_fraction=0.1, slow_factor=10)
    assert [p.upload for p in c] != [p.upload for p in a]


def test_connection_lifetimes_follow_the_loss_rate() -> None:
    assert connection_lifetime(random.Random(1), 0.0) == math.inf
    rng = random.Random(2)
    lifetimes = [connection_lifetime(rng, 60.0) for _ in range(4000)]  # one a minute
    assert 50 < sum(lifetimes) / len(lifetimes) < 70


def test_churn_schedule_is_seeded_and_inside_its_window() -> None:
    a = churn_schedule(random.Random(3), range(1000), 0.05, 2.0, 10.0, 5.0)
    assert a == churn_schedule(random.Random(3), range(1000), 0.05, 2.0, 10.0, 5.0)
    assert len(a) == 50 and len({e.node for e in a}) == 50
    assert all(2.0 <= e.leave < 10.0 and e.rejoin == pytest.approx(e.leave + 5.0) for e in a)
    assert [e.leave for e in a] == sorted(e.leave for e in a)


def test_quantize_rounds_up_to_the_grid() -> None:
    assert quantize(1.2345, 0.0) == 1.2345
    assert quantize(1.2341, 0.001) == pytest.approx(1.235)
    assert quantize(1.235, 0.001) == pytest.approx(1.235)
    assert quantize(0.0, 0.001) == 0.0


def test_frame_codes_name_each_frame_of_a_write() -> None:
    frames = [
        encode(Ping(7)),
        encode(Chunk(b"\x02" * 32, 3, b"x" * 65536)),
        encode(Request(b"\x02" * 32, 4)),
    ]
    got = list(frame_codes(b"".join(frames)))
    assert got == [
        (Ping.TYPE, len(frames[0])),
        (Chunk.TYPE, len(frames[1])),
        (Request.TYPE, len(frames[2])),
    ]
    assert list(frame_codes(frames[1][:100])) == [(-1, 100)]  # not a whole frame


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 1) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_kumar_ross_heterogeneous_reduces_to_the_homogeneous_bound() -> None:
    f, n, u = 16 * MIB, 1000, 2 * MIB
    homogeneous = kumar_ross_heterogeneous(f, u, [u] * n, [0] * n)
    assert homogeneous == pytest.approx(kumar_ross_bound(f, n, u, u))
    # A slow downlink bounds the time from below: 16 MiB at 0.8 MiB/s is 20 s.
    slow = kumar_ross_heterogeneous(f, u, [u] * n, [8 * MIB] * (n - 1) + [0.8 * MIB])
    assert slow == pytest.approx(20.0)
    # Slow uploaders raise the swarm term.
    mixed = kumar_ross_heterogeneous(f, u, [u] * 900 + [u / 10] * 100, [0] * n)
    assert mixed > homogeneous
