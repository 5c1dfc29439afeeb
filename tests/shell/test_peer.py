"""Connection frame writing and reading on real sockets: the bytes on the wire are the
encoder's, whatever the kernel takes per write, and the payload buffer is free on return."""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core.codec import encode
from p2pupdate.core.messages import Chunk, Have, Message, Ping
from p2pupdate.errors import TransferError
from p2pupdate.shell.net.peer import Connection, Timeouts
from p2pupdate.shell.net.transport import TcpTransport
from tests.shell.test_tls import tls_pair

PID = bytes(range(32))


def conn(stream: trio.abc.Stream, **timeouts: float) -> Connection:
    return Connection(stream, "127.0.0.1", outbound=True, timeouts=Timeouts(**timeouts))


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a real TCP connection on 127.0.0.1 (port 0, read back)."""
    listener = await TcpTransport().listen("127.0.0.1", 0)
    got: list[trio.abc.Stream] = []

    async def accept() -> None:
        got.append((await listener.accept())[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client = await TcpTransport().connect("127.0.0.1", listener.port)
    await listener.aclose()
    assert isinstance(client, trio.SocketStream) and isinstance(got[0], trio.SocketStream)
    return client, got[0]


async def read_exactly(stream: trio.abc.Stream, n: int, piece: int = 65536) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.receive_some(min(piece, n - len(out)))
        assert data, "EOF before the expected bytes"
        out += data
    return bytes(out)


def shrink_buffers(stream: trio.SocketStream) -> None:
    # Tiny kernel buffers: a 64 KiB payload cannot go in one write.
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


async def test_plain_tcp_takes_the_descriptor_path() -> None:
    a, b = await tcp_pair()
    assert conn(a)._sock is not None  # the path under test below is the writev one
    await a.aclose()
    await b.aclose()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 65536), st.sampled_from([0, 255, 256, 65535, 65536])),
        min_size=1,
        max_size=5,
    ),
    small=st.booleans(),
)
def test_send_chunk_puts_the_encoders_bytes_on_the_wire(sizes: list[int], small: bool) -> None:
    rnd = random.Random(len(sizes) * 7 + sum(sizes))
    payloads = [rnd.randbytes(n) for n in sizes]
    expected = b"".join(encode(Chunk(PID, i, d)) for i, d in enumerate(payloads))

    async def main() -> bytes:
        a, b = await tcp_pair()
        if small:
            shrink_buffers(a)
            shrink_buffers(b)
        c = conn(a)
        got: list[bytes] = []

        async def reader() -> None:
            # Small reads: the sender's writes are taken piecemeal (partial writev).
            got.append(await read_exactly(b, len(expected), piece=1000 if small else 65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for i, d in enumerate(payloads):
                await c.send_chunk(PID, i, memoryview(bytearray(d)))
        assert c.bytes_sent == len(expected)
        await a.aclose()
        await b.aclose()
        return got[0]

    assert trio.run(main) == expected


async def test_payload_buffer_may_be_reused_once_send_chunk_returns() -> None:
    a, b = await tcp_pair()
    shrink_buffers(a)
    shrink_buffers(b)
    c = conn(a)
    buf = bytearray(os.urandom(65536))
    first = bytes(buf)
    got: list[bytes] = []
    frame = len(encode(Chunk(PID, 0, first)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(b, 2 * frame, got))
        await c.send_chunk(PID, 0, buf)
        buf[:] = os.urandom(65536)  # reuse the buffer for the next chunk
        await c.send_chunk(PID, 1, buf)
    assert got[0] == encode(Chunk(PID, 0, first)) + encode(Chunk(PID, 1, bytes(buf)))
    await a.aclose()
    await b.aclose()


async def _collect(stream: trio.abc.Stream, n: int, out: list[bytes]) -> None:
    out.append(await read_exactly(stream, n, piece=3000))


async def test_send_frames_keeps_order_across_many_small_frames() -> None:
    a, b = await tcp_pair()
    c = conn(a)
    # More buffers than one writev takes (IOV_MAX): the rest follow in order.
    frames = [encode(Ping(i)) for i in range(3000)]
    expected = b"".join(frames)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(b, len(expected), got))
        await c.send_frames(frames)
    assert got[0] == expected
    await a.aclose()
    await b.aclose()


async def test_receive_decodes_frames_split_anywhere() -> None:
    a, b = await tcp_pair()
    c = conn(b)
    msgs: list[Message] = [
        Chunk(PID, i, os.urandom(n)) for i, n in enumerate([65536, 1, 0, 40000, 65536])
    ]
    msgs.insert(2, Have(PID, (1, 2, 3)))
    stream = b"".join(encode(m) for m in msgs)
    rnd = random.Random(5)

    async def writer() -> None:
        pos = 0
        while pos < len(stream):
            step = rnd.randint(1, 70000)
            await a.send_all(stream[pos : pos + step])
            pos += step

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        got = [await c.receive() for _ in msgs]
    assert got == msgs
    assert c.bytes_received == len(stream)
    await a.aclose()
    with pytest.raises(TransferError, match="closed by peer"):
        await c.receive()
    await b.aclose()


async def test_receive_still_times_out_when_nothing_comes() -> None:
    a, b = await tcp_pair()
    c = conn(b, idle=0.2, frame=0.2)
    with pytest.raises(TransferError, match="idle timeout"):
        await c.receive()
    await a.send_all(encode(Ping(1))[:3])  # half a frame, then nothing
    with pytest.raises(TransferError, match="frame timeout"):
        await c.receive()
    await a.aclose()
    await b.aclose()


async def test_send_still_times_out_when_the_peer_never_reads() -> None:
    a, b = await tcp_pair()
    shrink_buffers(a)
    shrink_buffers(b)
    c = conn(a, send=0.3)
    with pytest.raises(TransferError, match="timed out"):
        for i in range(1000):  # far more than the kernel buffers hold
            await c.send_chunk(PID, i % 100, bytes(65536))
    await a.aclose()
    await b.aclose()


async def test_send_to_a_closed_peer_is_a_transfer_error() -> None:
    a, b = await tcp_pair()
    c = conn(a)
    await b.aclose()
    with pytest.raises(TransferError):
        for i in range(1000):  # the first writes may still be accepted before the reset
            await c.send_chunk(PID, i % 100, bytes(65536))
    await a.aclose()


async def test_send_chunk_over_tls_gives_the_same_messages() -> None:
    client, server, _, _ = await tls_pair()
    tx, rx = conn(client), conn(server)
    assert tx._sock is None  # TLS: one buffer per frame through the stream
    payloads = [os.urandom(n) for n in (65536, 10, 0, 300)]
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            for i, d in enumerate(payloads):
                await tx.send_chunk(PID, i, memoryview(d))

        nursery.start_soon(send)
        got = [await rx.receive() for _ in payloads]
    assert got == [Chunk(PID, i, d) for i, d in enumerate(payloads)]
    await client.aclose()
    await server.aclose()


async def test_a_plain_connection_wrapped_in_tls_afterwards_sends_and_reads_through_tls() -> None:
    # What the node's handshake does: the Connection is made on the plain TCP stream,
    # then its stream is replaced by the TLS stream. From then on nothing may go to or
    # come from the raw socket (it did: the peer read TLS records as frame lengths).
    a, b = await tcp_pair()
    tx = conn(a)
    client, server, _, _ = await tls_pair(a, b)
    tx.stream = client
    rx = conn(server)  # made on the TLS stream: it reads only TLS records
    payloads = [os.urandom(n) for n in (65536, 7)]
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            for i, d in enumerate(payloads):
                await tx.send_chunk(PID, i, memoryview(d))
            await tx.send(Ping(5))

        nursery.start_soon(send)
        got = [await rx.receive() for _ in range(len(payloads) + 1)]
    assert got == [*(Chunk(PID, i, d) for i, d in enumerate(payloads)), Ping(5)]
    await client.aclose()
    await server.aclose()


async def test_memory_stream_takes_the_stream_path() -> None:
    a, b = trio.testing.memory_stream_pair()
    tx, rx = conn(a), conn(b)
    data = os.urandom(5000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tx.send_chunk, PID, 3, data)
        assert await rx.receive() == Chunk(PID, 3, data)


async def test_connections_reading_at_once_each_get_their_own_bytes() -> None:
    # Reads share one buffer per process: each must be decoded before another task runs.
    pairs = [await tcp_pair() for _ in range(4)]
    conns = [conn(b) for _, b in pairs]
    streams = [
        b"".join(encode(Chunk(PID, k, bytes([k]) * n)) for n in (65536, 7, 30000)) for k in range(4)
    ]
    got: dict[int, list[Message]] = {}

    async def write(k: int) -> None:
        data, pos = streams[k], 0
        while pos < len(data):
            await pairs[k][0].send_all(data[pos : pos + 1500])
            pos += 1500

    async def read(k: int) -> None:
        got[k] = [await conns[k].receive() for _ in range(3)]

    async with trio.open_nursery() as nursery:
        for k in range(4):
            nursery.start_soon(write, k)
            nursery.start_soon(read, k)
    for k in range(4):
        assert got[k] == [Chunk(PID, k, bytes([k]) * n) for n in (65536, 7, 30000)]
    for a, b in pairs:
        await a.aclose()
        await b.aclose()
