"""One peer connection: framing over a trio stream, deadlines, one send lock.

A :class:`Connection` turns a byte stream into messages and back. Reads run
under deadlines: an idle timeout between frames and a shorter one inside a
frame, so a peer that sends half a frame and stalls is dropped. Every write
goes through one lock and its own deadline. Any protocol error surfaces as
RemoteProtocolError, any stream failure as TransferError; the caller closes
this connection only and goes on.
"""

from __future__ import annotations

import contextlib
import secrets

import nacl.signing
import trio

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.handshake import check_hello, check_proof, sign_proof
from p2pupdate.core.membership import format_addr
from p2pupdate.core.messages import NONCE_LEN, Hello, HelloProof, Message
from p2pupdate.errors import RemoteProtocolError, TransferError

__all__ = ["Connection", "Timeouts", "new_nonce"]


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
        self.stream = stream
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

    async def send_raw(self, frame: bytes) -> None:
        if self.closed:
            raise TransferError(f"connection to {self.label} is closed")
        async with self._send_lock:
            try:
                with trio.fail_after(self.timeouts.send):
                    await self.stream.send_all(frame)
            except trio.TooSlowError:
                raise TransferError(f"send to {self.label} timed out") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransferError(f"send to {self.label} failed: {exc}") from None
        self.bytes_sent += len(frame)

    async def receive(self, idle_timeout: float | None = None) -> Message:
        """The next message; raises TransferError on EOF/timeout, RemoteProtocolError on junk."""
        idle = self.timeouts.idle if idle_timeout is None else idle_timeout
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                return msg
            timeout = self.timeouts.frame if self._decoder.buffered else idle
            try:
                with trio.fail_after(timeout):
                    data = await self.stream.receive_some(256 * 1024)
            except trio.TooSlowError:
                what = "frame" if self._decoder.buffered else "idle"
                raise TransferError(f"{self.label}: {what} timeout") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransferError(f"{self.label}: receive failed: {exc}") from None
            if not data:
                raise TransferError(f"{self.label}: connection closed by peer")
            self.bytes_received += len(data)
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
