"""A raw peer over real TCP that speaks the handshake correctly, then whatever a test wants."""

from __future__ import annotations

import os

import nacl.signing
import trio

from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.handshake import sign_proof
from p2pupdate.core.messages import PROTOCOL_VERSION, Hello, Message


class RawPeer:
    def __init__(self, stream: trio.SocketStream, key: nacl.signing.SigningKey) -> None:
        self.stream = stream
        self.key = key
        self.node_id = bytes(key.verify_key)
        self.decoder = FrameDecoder()
        self.theirs: Hello | None = None

    async def send(self, *msgs: Message) -> None:
        await self.stream.send_all(b"".join(encode(m) for m in msgs))

    async def recv(self) -> Message | None:
        """The next message, or None at EOF."""
        while True:
            msg = self.decoder.next_message()
            if msg is not None:
                return msg
            try:
                data = await self.stream.receive_some(1 << 18)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self.decoder.receive_data(data)

    async def handshake(self, listen_port: int = 0, *, claim: bytes | None = None) -> Hello:
        """HELLO and HELLO_PROOF; ``claim`` pretends to another node id (the proof fails)."""
        mine = Hello(PROTOCOL_VERSION, claim or self.node_id, listen_port, "raw", os.urandom(32))
        await self.send(mine)
        theirs = await self.recv()
        assert isinstance(theirs, Hello), theirs
        self.theirs = theirs
        await self.send(sign_proof(self.key, mine, theirs))
        return theirs

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_raw(
    addr: tuple[str, int], *, key: nacl.signing.SigningKey | None = None, local: str | None = None
) -> RawPeer:
    stream = await trio.open_tcp_stream(*addr, local_address=local)
    return RawPeer(stream, key or nacl.signing.SigningKey(os.urandom(32)))


async def drain_until_eof(peer: RawPeer) -> None:
    while await peer.recv() is not None:
        pass
