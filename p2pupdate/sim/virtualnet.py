"""A simulated network in virtual time: the Transport the virtual simulation gives its nodes.

:class:`VirtualNetwork` implements the node's ``Transport`` interface (like
``shell.transport.MemoryNetwork``) with streams paced by the pure model in
``core.netmodel``: each node has an access link (upload and download rate,
latency); a write waits until the sender's uplink has sent it, and the bytes
become readable at the far end when they have crossed the link and the
receiver's downlink. Dialing takes a round trip. With ``losses_per_hour``, the
network breaks each connection after a random lifetime (both ends see the
stream broken). Run it under ``trio.testing.MockClock`` and hours of network
time pass in as much wall time as the CPU needs.

It counts, per node, the bytes and messages sent and received by message type,
and the connections open at once (now and at peak).

No task is started per write: a stream direction is a FIFO of (arrival time,
bytes) that the reader sleeps on.
"""

from __future__ import annotations

import errno
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

import trio

from p2pupdate.core.netmodel import (
    SMALL_WRITE,
    LinkProfile,
    Port,
    connection_lifetime,
    frame_codes,
    link_latency,
    quantize,
    transmit,
)

__all__ = ["NodeStats", "VirtualNetwork", "VirtualStream"]


@dataclass
class NodeStats:
    """Traffic of one node, by message type code (-1: not a whole frame)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    sent: dict[int, list[int]] = field(default_factory=dict)  # code -> [messages, bytes]
    received: dict[int, list[int]] = field(default_factory=dict)
    connections: int = 0
    peak_connections: int = 0
    dials: int = 0
    broken: int = 0  # connections the network broke (loss)


class _Timers:
    """Wakes every waiter due at one instant with one timer (one sleep each costs more).

    Until :meth:`run` runs, :meth:`wait_until` is a plain ``trio.sleep_until``.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, trio.Event]] = []
        self._seq = 0
        self._kick = trio.Event()
        self.running = False

    async def wait_until(self, t: float) -> None:
        if not self.running:
            await trio.sleep_until(t)
            return
        if t <= trio.current_time():
            await trio.lowlevel.checkpoint()
            return
        ev = trio.Event()
        heapq.heappush(self._heap, (t, self._seq, ev))
        self._seq += 1
        if self._heap[0][2] is ev:
            self._kick.set()
        await ev.wait()

    async def run(self) -> None:
        self.running = True
        heap = self._heap
        try:
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    heapq.heappop(heap)[2].set()
                self._kick = trio.Event()
                if heap:
                    with trio.move_on_at(heap[0][0]):
                        await self._kick.wait()
                else:
                    await self._kick.wait()
        finally:
            self.running = False
            for _, _, ev in heap:
                ev.set()
            heap.clear()


class _Host:
    def __init__(self, profile: LinkProfile, index: int) -> None:
        self.profile = profile
        self.index = index
        self.up = Port(profile.upload)
        self.down = Port(profile.download)
        self.stats = NodeStats()


class _Pipe:
    """One direction of a connection: bytes in flight with their arrival times."""

    __slots__ = (
        "closed",
        "dst",
        "last_arrival",
        "latency",
        "quantum",
        "queue",
        "src",
        "timers",
        "wake",
    )

    def __init__(
        self, src: _Host, dst: _Host, latency: float, quantum: float, timers: _Timers
    ) -> None:
        self.quantum = quantum
        self.timers = timers
        self.src = src
        self.dst = dst
        self.latency = latency
        self.queue: deque[tuple[float, bytes]] = deque()
        self.last_arrival = 0.0
        self.wake: trio.Event | None = None
        self.closed = False  # the receiving end was closed: writes fail

    def push(self, arrival: float, data: bytes) -> None:
        arrival = max(arrival, self.last_arrival)  # a stream delivers in order
        self.last_arrival = arrival
        self.queue.append((arrival, data))
        if self.wake is not None:
            self.wake.set()
            self.wake = None


class _Link:
    """What both ends of one connection share: when the network breaks it."""

    __slots__ = ("broken_at", "counted")

    def __init__(self, broken_at: float) -> None:
        self.broken_at = broken_at
        self.counted = False


class VirtualStream(trio.abc.Stream):
    """One end of a simulated connection."""

    def __init__(self, out: _Pipe, inp: _Pipe, link: _Link) -> None:
        self._out = out
        self._in = inp
        self._link = link
        self._closed = False
        self._eof = False
        self._host = out.src
        self._host.stats.connections += 1
        s = self._host.stats
        s.peak_connections = max(s.peak_connections, s.connections)

    def _check_broken(self) -> None:
        if trio.current_time() >= self._link.broken_at:
            if not self._link.counted:
                self._link.counted = True
                self._out.src.stats.broken += 1
                self._out.dst.stats.broken += 1
            raise trio.BrokenResourceError("connection lost (simulated)")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._out.closed:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("peer closed the connection")
        self._check_broken()
        payload = bytes(data)
        now = trio.current_time()
        src, dst = self._out.src, self._out.dst
        sent, arrival = transmit(now, len(payload), src.up, dst.down, self._out.latency)
        q = self._out.quantum
        sent, arrival = quantize(sent, q), quantize(arrival, q)
        src.stats.bytes_sent += len(payload)
        dst.stats.bytes_received += len(payload)
        for code, size in frame_codes(payload):
            for table in (src.stats.sent, dst.stats.received):
                entry = table.get(code)
                if entry is None:
                    table[code] = [1, size]
                else:
                    entry[0] += 1
                    entry[1] += size
        self._out.push(arrival, payload)
        if sent > now and len(payload) > SMALL_WRITE:
            # Bulk data: the writer waits for its uplink. A control frame is charged to
            # the link too, but its writer goes on at once (as into a socket buffer).
            await self._out.timers.wait_until(sent)
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        pipe = self._in
        while True:
            self._check_broken()
            if pipe.queue:
                arrival, data = pipe.queue[0]
                now = trio.current_time()
                if arrival <= now:
                    if not data:  # EOF
                        await trio.lowlevel.checkpoint()
                        return b""
                    limit = max_bytes if max_bytes is not None else 1 << 30
                    await trio.lowlevel.checkpoint()
                    return self._take(pipe, now, limit)
                await pipe.timers.wait_until(min(arrival, self._link.broken_at))
                continue
            wake = pipe.wake = trio.Event()
            if math.isfinite(self._link.broken_at):
                with trio.move_on_at(self._link.broken_at):
                    await wake.wait()
            else:
                await wake.wait()

    @staticmethod
    def _take(pipe: _Pipe, now: float, limit: int) -> bytes:
        """Everything that has arrived by ``now``, up to ``limit`` bytes, as one read."""
        parts: list[bytes] = []
        size = 0
        queue = pipe.queue
        while queue and size < limit:
            arrival, data = queue[0]
            if arrival > now or not data:  # not yet, or EOF (returned by a later read)
                break
            if size + len(data) > limit:
                cut = limit - size
                queue[0] = (arrival, data[cut:])
                parts.append(data[:cut])
                size = limit
                break
            queue.popleft()
            parts.append(data)
            size += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._host.stats.connections -= 1
            self._in.closed = True  # writes to us fail from now on
            # The far end reads what was sent, then EOF.
            self._out.push(
                quantize(trio.current_time() + self._out.latency, self._out.quantum), b""
            )
        await trio.lowlevel.checkpoint()


class _Listener:
    def __init__(self, network: VirtualNetwork, addr: tuple[str, int]) -> None:
        self._network = network
        self._addr = addr
        self.port = addr[1]
        self._send, self._recv = trio.open_memory_channel[tuple[trio.abc.Stream, str]](128)

    async def accept(self) -> tuple[trio.abc.Stream, str]:
        return await self._recv.receive()

    async def aclose(self) -> None:
        if self._network._listeners.get(self._addr) is self:
            del self._network._listeners[self._addr]
        await self._send.aclose()
        # Connections dialed but never accepted are closed, as a kernel would reset them.
        while True:
            try:
                stream, _ = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            await stream.aclose()
        await self._recv.aclose()


class VirtualNetwork:
    """Hosts with access links; ``transport(host)`` gives each node its Transport."""

    def __init__(
        self, rng: random.Random, *, losses_per_hour: float = 0.0, quantum: float = 0.0
    ) -> None:
        self.rng = rng
        self.quantum = quantum
        self._timers = _Timers()
        self.losses_per_hour = losses_per_hour
        self._hosts: dict[str, _Host] = {}
        self._listeners: dict[tuple[str, int], _Listener] = {}

    async def run(self) -> None:
        """Run beside the nodes: wakes readers and writers (all due at once, together)."""
        await self._timers.run()

    def add_host(self, host: str, profile: LinkProfile) -> None:
        """Give ``host`` its access link (a host is added once; a restart keeps it)."""
        if host not in self._hosts:
            self._hosts[host] = _Host(profile, len(self._hosts))

    def stats(self, host: str) -> NodeStats:
        return self._hosts[host].stats

    def profile(self, host: str) -> LinkProfile:
        return self._hosts[host].profile

    def transport(self, host: str) -> VirtualTransport:
        if host not in self._hosts:
            raise KeyError(f"unknown host {host}")
        return VirtualTransport(self, host)

    def pair(self, a: str, b: str) -> tuple[VirtualStream, VirtualStream]:
        """A connected pair of streams between hosts ``a`` and ``b`` (no dial delay)."""
        ha, hb = self._hosts[a], self._hosts[b]
        latency = link_latency(ha.profile, hb.profile)
        q = self.quantum
        t = self._timers
        ab, ba = _Pipe(ha, hb, latency, q, t), _Pipe(hb, ha, latency, q, t)
        lifetime = connection_lifetime(self.rng, self.losses_per_hour)
        now = trio.current_time()
        link = _Link(
            quantize(now + lifetime, self.quantum) if math.isfinite(lifetime) else math.inf
        )
        return VirtualStream(ab, ba, link), VirtualStream(ba, ab, link)


class VirtualTransport:
    def __init__(self, network: VirtualNetwork, host: str) -> None:
        self._network = network
        self.host = host

    async def listen(self, host: str, port: int) -> _Listener:
        await trio.lowlevel.checkpoint()
        addr = (host, port)
        if host != self.host:
            raise OSError(errno.EADDRNOTAVAIL, f"{host} is not this node's address")
        if addr in self._network._listeners:
            raise OSError(errno.EADDRINUSE, f"address {host}:{port} in use")
        listener = _Listener(self._network, addr)
        self._network._listeners[addr] = listener
        return listener

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        net = self._network
        me = net._hosts[self.host]
        me.stats.dials += 1
        far = net._hosts.get(host)
        # SYN and SYN-ACK: one round trip before anything can be sent.
        rtt = 2 * link_latency(me.profile, far.profile) if far is not None else 0.0
        await net._timers.wait_until(quantize(trio.current_time() + rtt, net.quantum))
        listener = net._listeners.get((host, port))
        if listener is None or far is None:
            raise OSError(errno.ECONNREFUSED, f"connection to {host}:{port} refused")
        ours, theirs = net.pair(self.host, host)
        try:
            listener._send.send_nowait((theirs, self.host))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            await ours.aclose()
            await theirs.aclose()
            raise OSError(errno.ECONNREFUSED, f"{host}:{port} is not accepting") from None
        return ours
