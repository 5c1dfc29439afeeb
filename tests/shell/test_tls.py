"""TlsStream over real socket pairs: bulk both ways, whole-buffer reads, tampering, EOF."""

from __future__ import annotations

import os

import pytest
import trio

from p2pupdate.shell.net.tls import TlsIdentity, TlsStream, channel_binding


async def tls_pair(
    client_raw: trio.abc.Stream | None = None, server_raw: trio.abc.Stream | None = None
) -> tuple[TlsStream, TlsStream, bytes, bytes]:
    if client_raw is None or server_raw is None:
        a, b = trio.socket.socketpair()
        client_raw, server_raw = trio.SocketStream(a), trio.SocketStream(b)
    server_id, client_id = TlsIdentity(), TlsIdentity()
    out: dict[str, tuple[TlsStream, bytes]] = {}

    async def side(name: str, ident: TlsIdentity, raw: trio.abc.Stream, server: bool) -> None:
        out[name] = await ident.wrap(raw, server_side=server, seconds=10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "s", server_id, server_raw, True)
        nursery.start_soon(side, "c", client_id, client_raw, False)
    assert out["s"][1] == server_id.binding == channel_binding(server_id.cert_der)
    return out["c"][0], out["s"][0], out["c"][1], out["s"][1]


async def test_both_sides_agree_on_the_binding_and_bulk_flows_both_ways() -> None:
    client, server, cb, sb = await tls_pair()
    assert cb == sb  # the client saw the server's certificate
    up, down = os.urandom(3 << 20), os.urandom(3 << 20)
    got: dict[str, bytearray] = {"s": bytearray(), "c": bytearray()}

    async def pump(stream: TlsStream, data: bytes) -> None:
        for i in range(0, len(data), 65536):
            await stream.send_all(data[i : i + 65536])

    async def drain(stream: TlsStream, name: str, n: int) -> None:
        while len(got[name]) < n:
            got[name] += await stream.receive_some(1 << 18)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, client, up)
        nursery.start_soon(pump, server, down)
        nursery.start_soon(drain, server, "s", len(up))
        nursery.start_soon(drain, client, "c", len(down))
    assert bytes(got["s"]) == up and bytes(got["c"]) == down
    await client.aclose()
    assert await server.receive_some() == b""  # close_notify: a clean EOF
    await server.aclose()


async def test_one_read_returns_every_record_already_received() -> None:
    # trio.SSLStream returned one 16 KiB record per call; a 64 KiB chunk took five.
    client, server, _, _ = await tls_pair()
    await client.send_all(b"y" * 65536)
    await trio.testing.wait_all_tasks_blocked()
    first = await server.receive_some(1 << 18)
    assert len(first) > 16384
    await client.aclose()
    await server.aclose()


async def test_a_flipped_ciphertext_byte_breaks_the_stream() -> None:
    client_raw, relay_in = trio.testing.memory_stream_pair()
    relay_out, server_raw = trio.testing.memory_stream_pair()
    flip = {"armed": False}

    async def relay(src: trio.abc.Stream, dst: trio.abc.Stream, tamper: bool) -> None:
        while data := await src.receive_some(1 << 16):
            if tamper and flip["armed"]:
                data = data[:-1] + bytes([data[-1] ^ 1])
                flip["armed"] = False
            await dst.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, relay_in, relay_out, True)
        nursery.start_soon(relay, relay_out, relay_in, False)
        client, server, _, _ = await tls_pair(client_raw, server_raw)
        await client.send_all(b"fine")
        assert await server.receive_some() == b"fine"
        flip["armed"] = True
        await client.send_all(b"altered in flight")
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        nursery.cancel_scope.cancel()
