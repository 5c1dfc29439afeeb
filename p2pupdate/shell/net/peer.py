"""One peer connection: framing over a trio stream, deadlines, one send lock.

A :class:`Connection` turns a byte stream into messages and back. Reads run
under deadlines: an idle timeout between frames and a shorter one inside a
frame, so a peer that sends half a frame and stalls is dropped. Every write
goes through one lock and its own deadline. Any protocol error surfaces as
RemoteProtocolError, any stream failure as TransferError; the caller closes
this connection only and goes on.

On plain TCP the hot path skips trio's stream layer: frames go out with
``writev`` on the socket's descriptor (a CHUNK's header and its payload as two
buffers, so the payload is never copied into a frame), bytes come in with
``readv`` into one reused buffer, and a deadline scope is opened only when the
socket would block. TLS and in-memory streams take the plain stream calls.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence

import nacl.signing
import trio

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.codec import FrameDecoder, encode, encode_chunk_header
from p2pupdate.core.handshake import check_hello, check_proof, sign_proof
from p2pupdate.core.membership import format_addr
from p2pupdate.core.messages import NONCE_LEN, Hello, HelloProof, Message
from p2pupdate.errors import RemoteProtocolError, TransferError

__all__ = ["Buffer", "Connection", "Timeouts", "new_nonce"]


# Bytes asked of the socket per read: several CHUNK frames at once when they are queued.
RECV_SIZE = 256 * 1024
# One read buffer for every connection of the process: trio runs one task at a time and
# a read is handed to the decoder (which copies it) before the task can yield.
_RECV_BUF = bytearray(RECV_SIZE)
# At most this many buffers per writev (the kernel's IOV_MAX is 1024 on Linux).
_IOV_MAX = 1024
_FAST_IO = hasattr(os, "writev") and hasattr(os, "readv")

Buffer = bytes | bytearray | memoryview


def new_nonce() -> bytes:
    """A fresh handshake challenge."""
    return secrets.token_bytes(NONCE_LEN)


class Timeouts:
    """Connection timing (seconds); tests shrink these."""

    def __init__(
        self,
        handshake: float = 10.0,
        idle: float = 60.0,
        frame: float = 20.0,
        send: float = 30.0,
        keepalive: float = 15.0,
    ) -> None:
        self.handshake = handshake
        self.idle = idle
        self.frame = frame
        self.send = send
        self.keepalive = keepalive


class Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        remote_host: str,
        *,
        outbound: bool,
        timeouts: Timeouts,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._sock: trio.socket.SocketType | None = None
        self.stream = stream  # (sets _sock)
        self.remote_host = remote_host
        self.outbound = outbound
        self.timeouts = timeouts
        self.hello: Hello | None = None
        # Their HELLO_PROOF's admission certificate (raw bytes; empty if none).
        self.admission = b""
        self._decoder = FrameDecoder(limits)
        self._limits = limits
        self._send_lock = trio.Lock()
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @stream.setter
    def stream(self, stream: trio.abc.Stream) -> None:
        # Plain TCP: the trio socket under the stream, for writev/readv (None otherwise).
        # Decided again whenever the stream is replaced: the handshake wraps a plain
        # connection in TLS, and from then on every byte must go through the TLS stream.
        self._stream = stream
        self._sock = stream.socket if _FAST_IO and isinstance(stream, trio.SocketStream) else None

    @property
    def node_id(self) -> bytes:
        assert self.hello is not None, "handshake not done"
        return self.hello.node_id

    @property
    def listen_addr(self) -> tuple[str, int]:
        """The peer's (IP, claimed listen port): what PEX shares and bans cover."""
        assert self.hello is not None, "handshake not done"
        return (self.remote_host, self.hello.listen_port)

    @property
    def label(self) -> str:
        if self.hello is None:
            return format_addr(self.remote_host, "?")
        return format_addr(self.remote_host, self.hello.listen_port)

    async def send(self, msg: Message) -> None:
        await self.send_raw(encode(msg, self._limits))

    async def send_chunk(self, package_id: bytes, index: int, data: Buffer) -> None:
        """Send a CHUNK frame carrying ``data`` (which may be reused once this returns).

        The same bytes as ``send(Chunk(package_id, index, data))``; on plain TCP the
        payload goes to the kernel straight from ``data``. TLS gets one buffer, so one
        record carries the frame."""
        header = encode_chunk_header(package_id, index, len(data), self._limits)
        if self._sock is None:
            await self.send_raw(header + data)
        else:
            await self.send_frames([header, data])

    async def send_raw(self, frame: bytes) -> None:
        await self.send_frames([frame])

    async def send_frames(self, parts: Sequence[Buffer]) -> None:
        """Send ``parts`` back to back (frames, or pieces of frames) in order."""
        if self.closed:
            raise TransferError(f"connection to {self.label} is closed")
        size = sum(len(p) for p in parts)
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # free (nearly always): no scheduler round for the lock
        try:
            if self._sock is not None:
                await self._writev_all(self._sock, parts)
            else:
                with trio.fail_after(self.timeouts.send):
                    await self.stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))
        except trio.TooSlowError:
            raise TransferError(f"send to {self.label} timed out") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransferError(f"send to {self.label} failed: {exc}") from None
        finally:
            lock.release()
        self.bytes_sent += size

    async def _writev_all(self, sock: trio.socket.SocketType, parts: Sequence[Buffer]) -> None:
        # Everything the kernel takes at once goes without a scheduler round or a deadline
        # (the callers yield elsewhere: the writer at its outbox, uploads at their queue).
        views = [memoryview(p) for p in parts if len(p)]
        _writev_some(sock.fileno(), views)
        if not views:
            return
        with trio.fail_after(self.timeouts.send):
            while views:
                await trio.lowlevel.wait_writable(sock)
                _writev_some(sock.fileno(), views)

    async def _read_some(self, sock: trio.socket.SocketType, patience: float) -> int:
        """Read what the socket has and hand it to the decoder; the byte count (0 at EOF)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        n = self._read_now(sock)
        if n is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return n
        with trio.fail_after(patience):
            while n is None:
                await trio.lowlevel.wait_readable(sock)
                n = self._read_now(sock)
        return n

    def _read_now(self, sock: trio.socket.SocketType) -> int | None:
        # The shared buffer is copied into the decoder before anything can yield.
        try:
            n = os.readv(sock.fileno(), [_RECV_BUF])
        except BlockingIOError:
            return None
        if n:
            with memoryview(_RECV_BUF) as view, view[:n] as got:
                self._decoder.receive_data(got)
        return n

    async def receive(self, idle_timeout: float | None = None) -> Message:
        """The next message; raises TransferError on EOF/timeout, RemoteProtocolError on junk."""
        idle = self.timeouts.idle if idle_timeout is None else idle_timeout
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            timeout = self.timeouts.frame if self._decoder.buffered else idle
            try:
                if self._sock is not None:
                    n = await self._read_some(self._sock, timeout)
                else:
                    with trio.fail_after(timeout):
                        data = await self.stream.receive_some(RECV_SIZE)
                    n = len(data)
            except trio.TooSlowError:
                what = "frame" if self._decoder.buffered else "idle"
                raise TransferError(f"{self.label}: {what} timeout") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransferError(f"{self.label}: receive failed: {exc}") from None
            if not n:
                raise TransferError(f"{self.label}: connection closed by peer")
            self.bytes_received += n
            if self._sock is None:
                self._decoder.receive_data(data)

    async def handshake(
        self,
        mine: Hello,
        protocol: int,
        key: nacl.signing.SigningKey,
        *,
        binding: bytes = b"",
        admission: bytes = b"",
    ) -> Hello:
        """HELLO each way, then HELLO_PROOF each way, under the handshake timeout.

        ``mine`` must carry a fresh nonce (:func:`new_nonce`). Returns their HELLO
        once their proof checks out: its node id is proven. Both sides send before
        they wait, so the exchange takes two round trips at most and never deadlocks.
        ``binding`` (encrypted connections) is the TLS channel binding both proofs
        sign; ``admission`` is our fleet certificate, sent in our proof. Theirs is
        left in :attr:`admission` for the node to judge.
        """
        try:
            with trio.fail_after(self.timeouts.handshake):
                await self.send(mine)
                msg = await self.receive(self.timeouts.handshake)
                if not isinstance(msg, Hello):
                    raise RemoteProtocolError(f"expected HELLO first, got {type(msg).__name__}")
                check_hello(msg, protocol)
                await self.send(sign_proof(key, mine, msg, binding=binding, admission=admission))
                proof = await self.receive(self.timeouts.handshake)
        except trio.TooSlowError:
            raise TransferError(f"{self.label}: handshake timeout") from None
        if not isinstance(proof, HelloProof):
            raise RemoteProtocolError(f"expected HELLO_PROOF, got {type(proof).__name__}")
        check_proof(proof, mine, msg, binding=binding)
        self.admission = proof.admission
        self.hello = msg
        return msg

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.aclose()


def _writev_some(fd: int, views: list[memoryview]) -> None:
    """One non-blocking writev; drop what the kernel took from the front of ``views``."""
    try:
        n = os.writev(fd, views[:_IOV_MAX])
    except BlockingIOError:
        return
    while n:
        head = views[0]
        if n >= len(head):
            n -= len(head)
            del views[0]
        else:
            views[0] = head[n:]
            n = 0
