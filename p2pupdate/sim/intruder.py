"""A would-be member without an admission, for the ``membership`` scenario.

It holds a real node key and speaks the real protocol over TLS, exactly like a
node: HELLO, HELLO_PROOF (valid for its key, channel binding included) and
straight away GET_TABLE and REQUEST for the first package it could want. It has
no admission certificate, or, with ``foreign``, one from a fleet key of its own.
It dials every node again and again and counts every message it receives; a
fleet node must send it nothing but its own HELLO and HELLO_PROOF.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import trio

from p2pupdate.core.codec import FrameDecoder, encode
from p2pupdate.core.fleet import sign_admission
from p2pupdate.core.handshake import sign_proof
from p2pupdate.core.messages import (
    PROTOCOL_VERSION,
    TABLE_PAGE_LIST,
    GetTable,
    Hello,
    HelloProof,
    Message,
    Request,
)
from p2pupdate.errors import ProtocolError, TransferError
from p2pupdate.shell.net.tls import TlsIdentity

__all__ = ["Intruder", "IntruderStats"]

_REDIAL = 1.0
_SESSION = 10.0  # longest we listen on one connection


@dataclass
class IntruderStats:
    node_id: str = ""
    attempts: int = 0
    tls_ok: int = 0
    # message type name -> count, over all connections
    received: dict[str, int] = field(default_factory=dict)
    # of those, anything beyond the node's own HELLO and HELLO_PROOF
    leaked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "attempts": self.attempts,
            "tls_ok": self.tls_ok,
            "received": dict(self.received),
            "leaked": self.leaked,
        }


class Intruder:
    def __init__(self, targets: Sequence[tuple[str, int]], *, foreign: bool = True) -> None:
        self.targets = list(targets)
        self.key = nacl.signing.SigningKey.generate()
        self.node_id = bytes(self.key.verify_key)
        self.admission = b""
        if foreign:  # a certificate from a fleet that is not this one
            now = int(time.time())
            other = nacl.signing.SigningKey.generate()
            self.admission = sign_admission(other, self.node_id, now, now + 86400).raw
        self.tls = TlsIdentity()
        self.stats = IntruderStats(node_id=self.node_id.hex())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            async with trio.open_nursery() as nursery:
                for addr in self.targets:
                    nursery.start_soon(self._try, addr)
            await trio.sleep(_REDIAL)

    async def _try(self, addr: tuple[str, int]) -> None:
        self.stats.attempts += 1
        try:
            raw = await trio.open_tcp_stream(*addr)
        except OSError:
            return
        try:
            with trio.move_on_after(_SESSION):
                await self._session(raw)
        except (TransferError, ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            raw.socket.close()

    async def _session(self, raw: trio.SocketStream) -> None:
        stream, binding = await self.tls.wrap(raw, server_side=False, seconds=5)
        self.stats.tls_ok += 1
        mine = Hello(PROTOCOL_VERSION, self.node_id, 0, "p2pupdate-sim-intruder", os.urandom(32))
        await stream.send_all(encode(mine))
        decoder = FrameDecoder()
        proved = False
        while data := await stream.receive_some(1 << 16):
            decoder.receive_data(data)
            for msg in decoder.messages():
                self._count(msg)
                if isinstance(msg, Hello) and not proved:
                    proved = True
                    proof = sign_proof(
                        self.key, mine, msg, binding=binding, admission=self.admission
                    )
                    pid = b"\x00" * 32
                    asks: list[Message] = [proof, GetTable(pid, TABLE_PAGE_LIST), Request(pid, 0)]
                    await stream.send_all(b"".join(encode(m) for m in asks))

    def _count(self, msg: Message) -> None:
        name = type(msg).__name__
        self.stats.received[name] = self.stats.received.get(name, 0) + 1
        if not isinstance(msg, (Hello, HelloProof)):
            self.stats.leaked += 1
