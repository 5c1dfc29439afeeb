"""Membership: known peer addresses, which to dial, back-off, forgetting, bans.

Pure. The shell reports dial results and connection ends with ``now``; this
module says whom to dial next (keeping about ``target`` connections, chosen at
random), when (exponential back-off with jitter per address), which addresses
to forget after repeated failures, and which peers are banned until when.
Bootstrap addresses are never forgotten, only backed off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Addr", "PeerBook", "format_addr"]

Addr = tuple[str, int]


def format_addr(host: str, port: int | str) -> str:
    """``host:port``, with brackets around an IPv6 host (``[::1]:4000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Entry:
    bootstrap: bool = False
    failures: int = 0
    next_dial: float = 0.0
    connected: bool = False


class PeerBook:
    def __init__(
        self,
        rng: random.Random,
        bootstrap: list[Addr] | tuple[Addr, ...] = (),
        *,
        target: int = 8,
        max_known: int = 1024,
        forget_after: int = 6,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._rng = rng
        self.target = target
        self._max_known = max_known
        self._forget_after = forget_after
        self._base = base_backoff
        self._max_backoff = max_backoff
        self._known: dict[Addr, _Entry] = {}
        self._self: set[Addr] = set()
        self._banned_addr: dict[Addr, float] = {}
        self._banned_node: dict[bytes, float] = {}
        for addr in bootstrap:
            self._known[addr] = _Entry(bootstrap=True)

    # -- knowledge -------------------------------------------------------
    def add(self, addr: Addr) -> bool:
        """Learn an address (from PEX or an inbound HELLO). True if it was new."""
        if addr in self._known or addr in self._self or addr[1] == 0:
            return False
        if len(self._known) >= self._max_known:
            return False
        self._known[addr] = _Entry()
        return True

    def mark_self(self, addr: Addr) -> None:
        self._self.add(addr)
        entry = self._known.get(addr)
        if entry is not None and not entry.bootstrap:
            del self._known[addr]
        elif entry is not None:
            entry.next_dial = float("inf")

    def known(self) -> list[Addr]:
        return list(self._known)

    def sample(self, n: int) -> list[Addr]:
        """Up to ``n`` addresses to share in PEERS (ones that have worked or are untried)."""
        good = [
            a
            for a, e in self._known.items()
            if e.failures == 0 and a[1] != 0 and not self.is_banned(a)
        ]
        return self._rng.sample(good, min(n, len(good)))

    # -- dialing -----------------------------------------------------------
    def to_dial(self, now: float, active: int, in_flight: set[Addr]) -> list[Addr]:
        """Addresses to dial now to get back to ``target`` connections."""
        need = self.target - active - len(in_flight)
        if need <= 0:
            return []
        ready = [
            a
            for a, e in self._known.items()
            if not e.connected
            and a not in in_flight
            and e.next_dial <= now
            and not self.is_banned(a, now)
        ]
        self._rng.shuffle(ready)
        return ready[:need]

    def next_deadline(self) -> float | None:
        times = [e.next_dial for e in self._known.values() if not e.connected]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    def on_connected(self, addr: Addr) -> None:
        if addr[1] == 0:
            return  # a peer that does not listen (a publisher, a client): not dialable
        entry = self._known.setdefault(addr, _Entry())
        entry.connected = True
        entry.failures = 0

    def on_disconnected(self, addr: Addr, now: float) -> None:
        entry = self._known.get(addr)
        if entry is None:
            return
        entry.connected = False
        entry.next_dial = now + self._base * (1 + self._rng.random())

    def on_dial_failed(self, addr: Addr, now: float) -> None:
        entry = self._known.get(addr)
        if entry is None:
            return
        entry.connected = False
        entry.failures += 1
        if entry.failures >= self._forget_after and not entry.bootstrap:
            del self._known[addr]
            return
        backoff = min(self._max_backoff, self._base * 2 ** (entry.failures - 1))
        entry.next_dial = now + backoff * (0.5 + self._rng.random())

    # -- bans --------------------------------------------------------------
    def ban(self, addr: Addr | None, node_id: bytes | None, until: float) -> None:
        """Ban a peer's (IP, listen port) and node id; never a whole IP."""
        if addr is not None:
            self._banned_addr[addr] = until
        if node_id is not None:
            self._banned_node[node_id] = until

    def is_banned(self, addr: Addr, now: float | None = None) -> bool:
        until = self._banned_addr.get(addr)
        return until is not None and (now is None or now < until)

    def is_node_banned(self, node_id: bytes, now: float) -> bool:
        until = self._banned_node.get(node_id)
        return until is not None and now < until

    def lift_expired_bans(self, now: float) -> None:
        self._banned_addr = {a: t for a, t in self._banned_addr.items() if t > now}
        self._banned_node = {n: t for n, t in self._banned_node.items() if t > now}
