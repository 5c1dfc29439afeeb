"""The node's options (:class:`NodeOptions`): what ``p2pupdate node`` and the tests set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p2pupdate import __version__
from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.membership import Addr
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.net.peer import Timeouts

__all__ = ["NodeOptions"]


@dataclass
class NodeOptions:
    listen: Addr
    trust: TrustConfig
    peers: tuple[Addr, ...] = ()
    data_dir: Path | None = None
    auto_check: bool = True
    check_interval: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 64
    max_handshakes: int = 16
    target_connections: int = 8
    fanout: int = 8
    ban_period: float = 600.0
    pex_interval: float = 10.0
    agent: str = f"p2pupdate/{__version__}"
    # Node reports (docs/protocol.md): issue our own (False: a publisher only listens).
    report_self: bool = True
    report_interval: float = DEFAULT_LIMITS.report_interval
    limits: Limits = DEFAULT_LIMITS
    # Dial until at least this many connections are ones we chose, however many
    # inbound peers we have (an inbound flood must not stop us dialling).
    min_outbound: int = 2
    # Treat loopback peers as one shared host (the simulation runs every node on
    # 127.0.0.1): no per-IP/netgroup caps and never an IP ban for them. Tests turn
    # it off to play a single-IP attacker.
    shared_loopback: bool = True
    # Fleet membership (core.fleet; docs/security.md): the fleet public keys whose
    # admissions this node accepts (empty: an open swarm), this node's own admission
    # certificate (raw bytes) and revocation lists to start with.
    fleet: tuple[bytes, ...] = ()
    admission: bytes = b""
    revocations: tuple[bytes, ...] = ()
    # TLS 1.3 on every connection (shell.net.tls). None: on exactly when ``fleet`` is
    # set. Every node of one swarm must agree (a TLS node and a plain one cannot talk).
    encrypt: bool | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.fleet) if self.encrypt is None else self.encrypt
