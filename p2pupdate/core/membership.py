"""Membership: known peer addresses, which to dial, back-off, forgetting, bans.

Pure. The shell reports dial results and connection ends with ``now``; this
module says whom to dial next (keeping about ``target`` connections, chosen at
random), when (exponential back-off with jitter per address), which addresses
to forget after repeated failures, and which peers are banned until when.
Bootstrap addresses are never forgotten, only backed off.

The known-address table is bucketed by *source* (the netgroup of the peer that
told us, or of the address itself for what we learn first hand): one source may
hold at most ``max_addrs_per_source`` entries, and when the table is full a
never-worked entry of the largest source is evicted for a new one. Addresses
that have worked (a connection was made) and bootstrap addresses are never
evicted, so a PEX flood cannot push an honest peer out.

Strikes and bans are keyed on what a peer cannot choose: its observed IP and
its proven node id (never the claimed listen port alone). A whole IP is banned
only after repeated strikes from it, never on a shared host (the caller says
which IPs are shared), and never stops dials to bootstrap (``--peer``)
addresses. Every map here is capped by a named limit.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from p2pupdate.config import DEFAULT_LIMITS, Limits

__all__ = ["Addr", "PeerBook", "StrikeVerdict", "format_addr"]

# The source of addresses we learned first hand (HELLO, a dial that worked).
FIRST_HAND = ""

Addr = tuple[str, int]
_K = TypeVar("_K", str, bytes, Addr)


def format_addr(host: str, port: int | str) -> str:
    """``host:port``, with brackets around an IPv6 host (``[::1]:4000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Entry:
    bootstrap: bool = False
    failures: int = 0
    next_dial: float = 0.0
    connected: bool = False
    source: str = FIRST_HAND
    worked: bool = False  # a connection to it was made once: never evicted for room


@dataclass(frozen=True)
class StrikeVerdict:
    """What a strike leads to: ban the node id, ban the whole IP."""

    ban_node: bool
    ban_ip: bool


@dataclass
class _Strikes:
    count: int
    since: float


class PeerBook:
    def __init__(
        self,
        rng: random.Random,
        bootstrap: list[Addr] | tuple[Addr, ...] = (),
        *,
        target: int = 8,
        max_known: int | None = None,
        forget_after: int = 6,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
        strike_window: float = 600.0,
    ) -> None:
        self._rng = rng
        self.target = target
        self.limits = limits
        self._max_known = limits.max_known_addrs if max_known is None else max_known
        self._strike_window = strike_window
        self._strikes_ip: dict[str, _Strikes] = {}
        self._strikes_node: dict[bytes, _Strikes] = {}
        self._banned_ip: dict[str, float] = {}
        self._per_source: Counter[str] = Counter()  # entries per source, for the quota
        self._forget_after = forget_after
        self._base = base_backoff
        self._max_backoff = max_backoff
        self._known: dict[Addr, _Entry] = {}
        self._self: set[Addr] = set()
        self._banned_addr: dict[Addr, float] = {}
        self._banned_node: dict[bytes, float] = {}
        for addr in bootstrap:
            if addr not in self._known:
                self._known[addr] = _Entry(bootstrap=True)
                self._per_source[FIRST_HAND] += 1

    # -- knowledge -------------------------------------------------------
    def add(self, addr: Addr, source: str = FIRST_HAND) -> bool:
        """Learn an address (from PEX, ``source`` = the sender's netgroup, or first
        hand from an inbound HELLO). True if it was new and kept."""
        if addr in self._known or addr in self._self or addr[1] == 0:
            return False
        if source != FIRST_HAND and self._per_source[source] >= self.limits.max_addrs_per_source:
            return False
        if len(self._known) >= self._max_known and not self._evict_one():
            return False
        self._known[addr] = _Entry(source=source)
        self._per_source[source] += 1
        return True

    def _evict_one(self) -> bool:
        """Make room: drop a never-worked entry of the source holding the most."""
        by_source: dict[str, list[Addr]] = {}
        for a, e in self._known.items():
            if not (e.bootstrap or e.worked or e.connected):
                by_source.setdefault(e.source, []).append(a)
        if not by_source:
            return False
        biggest = max(by_source.values(), key=len)
        self._forget(self._rng.choice(biggest))
        return True

    def _forget(self, addr: Addr) -> None:
        entry = self._known.pop(addr)
        self._per_source[entry.source] -= 1
        if self._per_source[entry.source] <= 0:
            del self._per_source[entry.source]

    def source_count(self, source: str) -> int:
        return self._per_source[source]

    def mark_self(self, addr: Addr) -> None:
        if len(self._self) < self.limits.max_self_addrs:
            self._self.add(addr)
        entry = self._known.get(addr)
        if entry is not None and not entry.bootstrap:
            self._forget(addr)
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
        """Addresses to dial now to get back to ``target`` connections.

        ``active`` counts the connections we have; ``in_flight`` the addresses being
        dialed, where one whose dial became a connection (the shell keeps it there for the
        connection's life) counts once, in ``active``."""
        need = self.target - active - self._pending(in_flight)
        if need <= 0:
            return []
        ready = self._dialable(now, in_flight)
        self._rng.shuffle(ready)
        # Known-good first (configured, or has worked before), like Bitcoin Core's
        # "tried" table: a PEX flood of fresh addresses cannot crowd them out.
        ready.sort(key=lambda a: not (self._known[a].bootstrap or self._known[a].worked))
        return ready[:need]

    def _dialable(self, now: float, in_flight: set[Addr]) -> list[Addr]:
        return [
            a
            for a, e in self._known.items()
            if not e.connected
            and a not in in_flight
            and e.next_dial <= now
            and not self.is_banned(a, now)
            # An IP ban never cuts us off from the peers the operator configured.
            and (e.bootstrap or not self.is_ip_banned(a[0], now))
        ]

    def short_of_addresses(self, now: float, active: int, in_flight: set[Addr]) -> bool:
        """Whether we are below ``target`` connections with no address we could dial now
        (none known, or all backed off or banned): time to ask peers for theirs (PEX
        pull). Draws no randomness."""
        if self.target - active - self._pending(in_flight) <= 0:
            return False
        return not self._dialable(now, in_flight)

    def _pending(self, in_flight: set[Addr]) -> int:
        """Dials still under way: those not connected yet."""
        return sum(1 for a in in_flight if not ((e := self._known.get(a)) and e.connected))

    def next_deadline(self) -> float | None:
        times = [e.next_dial for e in self._known.values() if not e.connected]
        finite = [t for t in times if t != float("inf")]
        return min(finite) if finite else None

    def on_connected(self, addr: Addr) -> None:
        if addr[1] == 0:
            return  # a peer that does not listen (a publisher, a client): not dialable
        entry = self._known.get(addr)
        if entry is None:
            if len(self._known) >= self._max_known and not self._evict_one():
                return
            entry = self._known[addr] = _Entry()
            self._per_source[FIRST_HAND] += 1
        entry.connected = True
        entry.worked = True
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
        # An address that worked once is given longer before it is forgotten.
        limit = self._forget_after * (4 if entry.worked else 1)
        if entry.failures >= limit and not entry.bootstrap:
            self._forget(addr)
            return
        backoff = min(self._max_backoff, self._base * 2 ** (entry.failures - 1))
        entry.next_dial = now + backoff * (0.5 + self._rng.random())

    # -- bans --------------------------------------------------------------
    def strike(self, ip: str, node_id: bytes | None, now: float, *, shared: bool) -> StrikeVerdict:
        """Count one protocol offence against the observed IP and the proven node id.

        ``node_id`` is None when the peer never proved one (it failed the handshake).
        The node id is banned at ``strikes_to_ban``; the IP at ``ip_strikes_to_ban``
        unless ``shared`` (several nodes live behind it: the simulation's loopback).
        Counts older than the strike window start over.
        """
        lim = self.limits
        ban_node = False
        if node_id is not None:
            _bump(self._strikes_node, node_id, now, self._strike_window, lim)
            ban_node = self._strikes_node[node_id].count >= lim.strikes_to_ban
        _bump(self._strikes_ip, ip, now, self._strike_window, lim)
        ban_ip = not shared and self._strikes_ip[ip].count >= lim.ip_strikes_to_ban
        return StrikeVerdict(ban_node, ban_ip)

    def strike_entries(self) -> int:
        return len(self._strikes_ip) + len(self._strikes_node)

    def ban(self, addr: Addr | None, node_id: bytes | None, until: float) -> None:
        """Ban a peer's (IP, listen port) and node id (a whole IP: :meth:`ban_ip`)."""
        if addr is not None:
            _put_ban(self._banned_addr, addr, until, self.limits.max_bans)
        if node_id is not None:
            _put_ban(self._banned_node, node_id, until, self.limits.max_bans)

    def ban_ip(self, ip: str, until: float) -> None:
        """Ban every connection from ``ip``, except our dials to bootstrap addresses."""
        _put_ban(self._banned_ip, ip, until, self.limits.max_bans)

    def is_ip_banned(self, ip: str, now: float) -> bool:
        until = self._banned_ip.get(ip)
        return until is not None and now < until

    def ban_entries(self) -> int:
        return len(self._banned_addr) + len(self._banned_node) + len(self._banned_ip)

    def is_bootstrap(self, addr: Addr) -> bool:
        entry = self._known.get(addr)
        return entry is not None and entry.bootstrap

    def is_banned(self, addr: Addr, now: float | None = None) -> bool:
        until = self._banned_addr.get(addr)
        return until is not None and (now is None or now < until)

    def is_node_banned(self, node_id: bytes, now: float) -> bool:
        until = self._banned_node.get(node_id)
        return until is not None and now < until

    def lift_expired_bans(self, now: float) -> None:
        self._banned_addr = {a: t for a, t in self._banned_addr.items() if t > now}
        self._banned_node = {n: t for n, t in self._banned_node.items() if t > now}
        self._banned_ip = {n: t for n, t in self._banned_ip.items() if t > now}
        window = self._strike_window
        self._strikes_ip = {k: v for k, v in self._strikes_ip.items() if now - v.since < window}
        self._strikes_node = {k: v for k, v in self._strikes_node.items() if now - v.since < window}


def _bump(table: dict[_K, _Strikes], key: _K, now: float, window: float, limits: Limits) -> None:
    entry = table.get(key)
    if entry is None or now - entry.since >= window:
        table.pop(key, None)
        while len(table) >= limits.max_strike_entries:
            del table[next(iter(table))]  # the oldest first (a strike is a heuristic)
        entry = table[key] = _Strikes(0, now)
    entry.count += 1


def _put_ban(table: dict[_K, float], key: _K, until: float, cap: int) -> None:
    if key not in table:
        while len(table) >= cap:
            del table[min(table, key=table.__getitem__)]  # the ban ending soonest
    table[key] = max(until, table.get(key, until))
