"""Transports: how a node listens and dials. TCP, and an in-memory network.

The node receives a :class:`Transport` and never opens TCP itself, so the
same node runs over real sockets, over in-memory streams in tests, and later
over a simulated network in virtual time.
"""

from __future__ import annotations

import errno
import itertools
from typing import Protocol

import trio

__all__ = ["Listener", "MemoryNetwork", "MemoryTransport", "TcpTransport", "Transport"]


class Listener(Protocol):
    """A bound listener: ``port`` is the real port (useful after binding port 0)."""

    port: int

    async def accept(self) -> tuple[trio.abc.Stream, str]:
        """The next inbound stream and the remote host it came from."""
        ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    async def listen(self, host: str, port: int) -> Listener: ...

    async def connect(self, host: str, port: int) -> trio.abc.Stream: ...


class _TcpListener:
    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        sockname = listener.socket.getsockname()
        self.port: int = sockname[1]

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._listener.socket

    async def accept(self) -> tuple[trio.abc.Stream, str]:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                # Out of descriptors or a connection reset before accept: keep serving.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            try:
                host = str(stream.socket.getpeername()[0])
            except OSError:
                await stream.aclose()
                continue
            stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            return stream, host

    async def aclose(self) -> None:
        await self._listener.aclose()


class TcpTransport:
    """Real TCP. ``inherited_fd`` adopts an already-listening socket (re-exec)."""

    def __init__(self, inherited_fd: int | None = None) -> None:
        self._inherited_fd = inherited_fd

    async def listen(self, host: str, port: int) -> _TcpListener:
        if self._inherited_fd is not None:
            sock = trio.socket.fromfd(
                self._inherited_fd, trio.socket.AF_INET, trio.socket.SOCK_STREAM
            )
            self._inherited_fd = None
            return _TcpListener(trio.SocketListener(sock))
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return _TcpListener(trio.SocketListener(sock))

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
        return stream


class _MemoryListener:
    def __init__(self, network: MemoryNetwork, addr: tuple[str, int]) -> None:
        self._network = network
        self._addr = addr
        self.port = addr[1]
        self._send, self._recv = trio.open_memory_channel[tuple[trio.abc.Stream, str]](64)

    async def accept(self) -> tuple[trio.abc.Stream, str]:
        return await self._recv.receive()

    async def aclose(self) -> None:
        self._network._listeners.pop(self._addr, None)
        await self._send.aclose()
        await self._recv.aclose()


class MemoryNetwork:
    """A whole in-memory network; each node gets ``network.transport(host)``."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], _MemoryListener] = {}
        self._ports = itertools.count(20000)

    def transport(self, host: str) -> MemoryTransport:
        return MemoryTransport(self, host)


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self._network = network
        self.host = host

    async def listen(self, host: str, port: int) -> _MemoryListener:
        await trio.lowlevel.checkpoint()
        if port == 0:
            port = next(self._network._ports)
        addr = (host, port)
        if addr in self._network._listeners:
            raise OSError(errno.EADDRINUSE, f"address {host}:{port} in use")
        listener = _MemoryListener(self._network, addr)
        self._network._listeners[addr] = listener
        return listener

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self._network._listeners.get((host, port))
        if listener is None:
            raise OSError(errno.ECONNREFUSED, f"connection to {host}:{port} refused")
        # Imported here: trio.testing pulls in pytest, ~70 ms of start-up for every node.
        from trio.testing import memory_stream_pair

        ours, theirs = memory_stream_pair()
        try:
            listener._send.send_nowait((theirs, self.host))
        except (trio.WouldBlock, trio.ClosedResourceError):
            raise OSError(errno.ECONNREFUSED, f"{host}:{port} is not accepting") from None
        return ours
