"""The virtual network's arithmetic (pure): link rates, latency, loss, churn, figures.

What it does
    A simulated node has an access link with an upload and a download rate (bytes per
    second, 0 = unlimited) and an access latency. A write of ``n`` bytes from A to B
    (:func:`transmit`) queues behind what A's uplink is already sending, leaves A when
    its last byte is serialized at A's rate, crosses the link in ``latency(A) +
    latency(B)`` seconds, and queues on B's downlink behind what B is already
    receiving: its last byte arrives when both the uplink and the downlink let it.
    Small writes (control frames: REQUEST, HAVE, gossip) do not wait behind bulk data
    already queued, as with a fair-queueing qdisc, but still take their share of the
    link. Everything is a function of ``now`` and the ports' state, so a run with the
    same inputs gives the same times.

    It also draws the per-node link profiles (a fraction of slow nodes), connection
    lifetimes (loss), the churn schedule, and computes the report's figures
    (percentiles, the Kumar-Ross bound for heterogeneous uploads) from an injected
    :class:`random.Random`.

What it does not do
    It models no packet loss, retransmission, congestion window, slow start or
    fairness between flows beyond first come, first served on each port; no shared
    bottleneck inside the network (only access links); and it never sleeps: the shell
    (``p2pupdate.sim.virtualnet``) sleeps in virtual time until the times it returns.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "SMALL_WRITE",
    "ChurnEvent",
    "LinkProfile",
    "Port",
    "assign_profiles",
    "churn_schedule",
    "connection_lifetime",
    "frame_codes",
    "kumar_ross_heterogeneous",
    "link_latency",
    "percentile",
    "quantize",
    "transmit",
]

# Writes up to this size are control traffic: they do not queue behind bulk data
# (fair queueing gives sparse flows priority), though they still use the link.
SMALL_WRITE = 2048

_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class LinkProfile:
    """A node's access link: rates in bytes/s (0 = unlimited), one-way latency in s."""

    upload: float
    download: float
    latency: float

    def __post_init__(self) -> None:
        for name in ("upload", "download", "latency"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


class Port:
    """One direction of an access link: busy serializing until ``free_at``."""

    __slots__ = ("free_at", "rate")

    def __init__(self, rate: float, free_at: float = 0.0) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
        self.rate = float(rate)
        self.free_at = float(free_at)

    def duration(self, nbytes: int) -> float:
        return nbytes / self.rate if self.rate > 0 else 0.0


def link_latency(a: LinkProfile, b: LinkProfile) -> float:
    """One-way latency between two nodes: both access latencies."""
    return a.latency + b.latency


def transmit(now: float, nbytes: int, up: Port, down: Port, latency: float) -> tuple[float, float]:
    """Send ``nbytes`` at ``now`` from ``up`` to ``down``: (sender done, last byte arrives).

    Updates both ports. The sender is done when its uplink has serialized the last
    byte; the bytes arrive no earlier than that plus ``latency``, and no earlier than
    the receiver's downlink can take them after what it already receives.
    """
    if nbytes < 0 or latency < 0:
        raise ValueError("nbytes and latency must be >= 0")
    up_time = up.duration(nbytes)
    if nbytes <= SMALL_WRITE:
        start = now
        up.free_at = max(up.free_at, now) + up_time
        sent = now + up_time
    else:
        start = max(now, up.free_at)
        sent = up.free_at = start + up_time
    down_time = down.duration(nbytes)
    first = start + latency
    if nbytes <= SMALL_WRITE:
        down_end = first + down_time
        down.free_at = max(down.free_at, first) + down_time
    else:
        down_end = max(first, down.free_at) + down_time
        down.free_at = down_end
    return sent, max(sent + latency, down_end)


def quantize(t: float, quantum: float) -> float:
    """``t`` rounded up to a multiple of ``quantum`` (``quantum == 0``: ``t`` itself).

    The virtual network delivers on this grid: every delivery due within one quantum
    happens at the same instant, so the scheduler handles them in one pass.
    """
    if quantum <= 0:
        return t
    return math.ceil(t / quantum - 1e-9) * quantum


def assign_profiles(
    n: int,
    rng: random.Random,
    base: LinkProfile,
    *,
    slow_fraction: float = 0.0,
    slow_factor: float = 1.0,
    latency_spread: float = 0.0,
) -> list[LinkProfile]:
    """``n`` link profiles: ``round(n * slow_fraction)`` nodes, drawn at random, get the
    base rates divided by ``slow_factor``; each latency is drawn uniformly in
    ``base.latency * [1 - spread, 1 + spread]``."""
    if not 0.0 <= slow_fraction <= 1.0:
        raise ValueError("slow_fraction must be in 0..1")
    if slow_factor < 1.0:
        raise ValueError("slow_factor must be >= 1")
    if not 0.0 <= latency_spread <= 1.0:
        raise ValueError("latency_spread must be in 0..1")
    slow = set(rng.sample(range(n), round(n * slow_fraction)))
    out = []
    for i in range(n):
        lat = base.latency * (1.0 + latency_spread * (2.0 * rng.random() - 1.0))
        if i in slow:
            out.append(LinkProfile(base.upload / slow_factor, base.download / slow_factor, lat))
        else:
            out.append(LinkProfile(base.upload, base.download, lat))
    return out


def connection_lifetime(rng: random.Random, losses_per_hour: float) -> float:
    """How long a connection lives before the network breaks it (inf: never)."""
    if losses_per_hour <= 0:
        return math.inf
    return rng.expovariate(losses_per_hour / 3600.0)


@dataclass(frozen=True)
class ChurnEvent:
    """Node ``node`` leaves at ``leave`` and comes back at ``rejoin`` (seconds)."""

    node: int
    leave: float
    rejoin: float


def churn_schedule(
    rng: random.Random,
    candidates: Sequence[int],
    fraction: float,
    start: float,
    end: float,
    downtime: float,
) -> list[ChurnEvent]:
    """``round(len(candidates) * fraction)`` nodes, each leaving once at a uniform time
    in [start, end) and coming back ``downtime`` later; sorted by leave time."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in 0..1")
    if end < start or downtime < 0:
        raise ValueError("need start <= end and downtime >= 0")
    chosen = rng.sample(list(candidates), round(len(candidates) * fraction))
    events = []
    for node in chosen:
        leave = start + (end - start) * rng.random()
        events.append(ChurnEvent(node, leave, leave + downtime))
    return sorted(events, key=lambda e: (e.leave, e.node))


def frame_codes(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """(message type code, frame bytes) of each whole frame in a write.

    The shell writes whole frames (``codec.encode``: a 4-byte length, then a msgpack
    array whose first element is the type code, a positive fixint). A truncated tail
    or an unexpected byte is reported as code -1 for the rest of the data.
    """
    pos, total = 0, len(data)
    while pos < total:
        if total - pos < _HEADER.size + 2:
            yield -1, total - pos
            return
        (length,) = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        code = data[pos + _HEADER.size + 1]
        first = data[pos + _HEADER.size]
        if end > total or not (0x90 <= first <= 0x9F or first in (0xDC, 0xDD)) or code > 0x7F:
            yield -1, total - pos
            return
        if first == 0xDC:
            code = data[pos + _HEADER.size + 3] if end >= pos + _HEADER.size + 4 else -1
        elif first == 0xDD:
            code = data[pos + _HEADER.size + 5] if end >= pos + _HEADER.size + 6 else -1
        yield code, end - pos
        pos = end


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values`` (not empty)."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def kumar_ross_heterogeneous(
    size: int, source_upload: float, uploads: Sequence[float], downloads: Sequence[float]
) -> float:
    """Least time for a source to get ``size`` bytes to every peer (Kumar and Ross 2006).

    max(F/u_s, F/d_min, N*F/(u_s + sum u_i)); a rate of 0 (unlimited) drops its term.
    """
    if size < 0 or not uploads or len(uploads) != len(downloads):
        raise ValueError("need a size >= 0 and one upload and download rate per peer")
    terms = [0.0]
    if source_upload > 0:
        terms.append(size / source_upload)
    limited_down = [d for d in downloads if d > 0]
    if limited_down:
        terms.append(size / min(limited_down))
    if source_upload > 0 and all(u > 0 for u in uploads):
        terms.append(len(uploads) * size / (source_upload + sum(uploads)))
    return max(terms)
