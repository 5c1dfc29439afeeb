"""Connection admission: per-source caps, reserved outbound slots, inbound eviction.

Pure. The shell asks :class:`ConnectionSlots` before it starts a handshake on
an accepted socket and again before it admits a proven inbound peer; it
reports every start and end. The answers follow Bitcoin Core's connection
manager:

- at most ``max_handshakes_per_ip`` / ``_per_netgroup`` handshakes in progress
  from one IP / netgroup (IPv4 /24, IPv6 /64), and ``max_conns_per_ip`` /
  ``_per_netgroup`` connections: one host or one cheap subnet cannot take every
  slot;
- when every handshake slot is busy, the oldest pending inbound handshake is
  dropped for the new one (a silent socket cannot hold a slot against honest
  peers, which finish in a round trip);
- ``reserved_outbound`` of ``max_connections`` are for dials the node chose; when
  the inbound slots are full, :func:`choose_eviction` picks the least useful
  inbound peer to drop instead of refusing the newcomer.

The netgroup caps apply to public sources only. A fleet's hosts usually share a
subnet (a rack, a VPC, an office /24): on a private address (RFC 1918, fc00::/7,
link-local) a /24 full of peers is the fleet, not an attacker who rented a cheap
subnet, so only the per-IP caps hold there. (Measured: with the /24 caps on, a
50-node fleet on 10.0.0.0/24 left one node 8 s behind the rest, its handshakes
refused until its dial back-off let it in.)

Loopback sources can be treated as one shared host (``shared_loopback``): the
simulation runs every node on 127.0.0.1, so the per-IP and per-netgroup caps do
not apply to them (the global caps and eviction still do). Tests turn this off
to play an attacker on one IP.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.reasons import Reason

__all__ = [
    "ConnectionSlots",
    "EvictionCandidate",
    "choose_eviction",
    "is_loopback",
    "is_private",
    "netgroup",
]


def _parse(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def netgroup(host: str) -> str:
    """The group a host's address is counted in: IPv4 /24, IPv6 /64, else the name."""
    ip = _parse(host)
    if ip is None:
        return f"name:{host}"  # in-memory transports name hosts; each is its own group
    if isinstance(ip, ipaddress.IPv4Address):
        return "v4:" + str(ipaddress.IPv4Network(f"{ip}/24", strict=False).network_address)
    return "v6:" + str(ipaddress.IPv6Network(f"{ip}/64", strict=False).network_address)


def is_private(host: str) -> bool:
    """A non-public address other than loopback: RFC 1918, fc00::/7, link-local."""
    ip = _parse(host)
    return ip is not None and ip.is_private and not ip.is_loopback


def is_loopback(host: str) -> bool:
    ip = _parse(host)
    return ip is not None and ip.is_loopback


@dataclass(frozen=True)
class EvictionCandidate:
    """What eviction looks at, per connected peer."""

    key: bytes  # the proven node id
    host: str
    outbound: bool
    configured: bool  # dialled because the operator listed it (--peer)
    connected_at: float
    last_useful: float  # when it last gave us something new (0: never)


def choose_eviction(
    peers: list[EvictionCandidate], limits: Limits = DEFAULT_LIMITS
) -> EvictionCandidate | None:
    """The inbound peer to drop for a newcomer, or None if every one is protected.

    Outbound and configured peers are never evicted. Of the inbound ones, the
    ``evict_protect_useful`` that most recently gave us a new announcement or
    verified chunks are protected, then the ``evict_protect_oldest`` connected
    longest, then one peer of each of the ``evict_protect_useful`` smallest netgroups
    (an attacker who owns one subnet cannot evict the peers of every other one).
    Of the rest, the youngest of the netgroup with the most members goes.
    """
    left = [p for p in peers if not p.outbound and not p.configured]
    useful = sorted((p for p in left if p.last_useful > 0), key=lambda p: -p.last_useful)
    protected = {p.key for p in useful[: limits.evict_protect_useful]}
    left = [p for p in left if p.key not in protected]
    oldest = sorted(left, key=lambda p: p.connected_at)[: limits.evict_protect_oldest]
    protected = {p.key for p in oldest}
    left = [p for p in left if p.key not in protected]
    groups: dict[str, list[EvictionCandidate]] = {}
    for p in left:
        groups.setdefault(netgroup(p.host), []).append(p)
    small = sorted(groups.values(), key=len)[: limits.evict_protect_useful]
    diverse = {min(g, key=lambda p: p.connected_at).key for g in small if len(small) > 1}
    left = [p for p in left if p.key not in diverse]
    if not left:
        return None
    groups = {}
    for p in left:
        groups.setdefault(netgroup(p.host), []).append(p)
    biggest = max(groups.values(), key=lambda g: (len(g), max(p.connected_at for p in g)))
    return max(biggest, key=lambda p: p.connected_at)


class ConnectionSlots:
    """Counts of handshakes and connections per IP and netgroup, and the verdicts.

    Every ``begin_*`` that returned True must be matched by its ``end_*`` (the
    shell does this in ``finally``); counts that reach zero are deleted, so the
    maps hold only sources with something open.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_handshakes: int,
        shared_loopback: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.shared_loopback = shared_loopback
        self.limits = limits
        self.handshakes = 0
        self.inbound = 0
        self.outbound = 0
        self._hs_ip: Counter[str] = Counter()
        self._hs_group: Counter[str] = Counter()
        self._conn_ip: Counter[str] = Counter()
        self._conn_group: Counter[str] = Counter()

    @property
    def max_inbound(self) -> int:
        """Slots inbound peers may hold: all but the reserve, which is at most half of
        ``max_connections`` (a node configured for one connection still accepts it)."""
        reserve = min(self.limits.reserved_outbound, self.max_connections // 2)
        return self.max_connections - reserve

    def exempt(self, host: str) -> bool:
        """True if per-source caps do not apply to ``host`` (a shared loopback host)."""
        return self.shared_loopback and is_loopback(host)

    # -- handshakes ---------------------------------------------------------------
    def handshake_verdict(self, host: str) -> str:
        """For an accepted socket: "ok", "evict_oldest" (slots full) or a refusal reason."""
        lim = self.limits
        if not self.exempt(host):
            if self._hs_ip[host] >= lim.max_handshakes_per_ip:
                return Reason.HANDSHAKES_PER_IP
            if (
                not is_private(host)
                and self._hs_group[netgroup(host)] >= lim.max_handshakes_per_netgroup
            ):
                return Reason.HANDSHAKES_PER_NETGROUP
        if self.handshakes >= self.max_handshakes:
            return "evict_oldest"
        return "ok"

    def begin_handshake(self, host: str) -> None:
        self.handshakes += 1
        self._hs_ip[host] += 1
        self._hs_group[netgroup(host)] += 1

    def end_handshake(self, host: str) -> None:
        self.handshakes -= 1
        _dec(self._hs_ip, host)
        _dec(self._hs_group, netgroup(host))

    # -- connections -----------------------------------------------------------------
    def inbound_verdict(self, host: str) -> str:
        """For a proven inbound peer: "ok", "evict" (full: evict one first) or a refusal."""
        lim = self.limits
        if not self.exempt(host):
            if self._conn_ip[host] >= lim.max_conns_per_ip:
                return Reason.CONNECTIONS_PER_IP
            if (
                not is_private(host)
                and self._conn_group[netgroup(host)] >= lim.max_conns_per_netgroup
            ):
                return Reason.CONNECTIONS_PER_NETGROUP
        if self.inbound >= self.max_inbound:
            return "evict"
        return "ok"

    def may_dial(self) -> bool:
        """Outbound dials use the reserved slots and whatever inbound left free."""
        return self.inbound + self.outbound < self.max_connections

    def begin_connection(self, host: str, outbound: bool) -> None:
        if outbound:
            self.outbound += 1
        else:
            self.inbound += 1
        self._conn_ip[host] += 1
        self._conn_group[netgroup(host)] += 1

    def end_connection(self, host: str, outbound: bool) -> None:
        if outbound:
            self.outbound -= 1
        else:
            self.inbound -= 1
        _dec(self._conn_ip, host)
        _dec(self._conn_group, netgroup(host))

    def tracked_sources(self) -> int:
        """Entries held in the per-source maps (tests check they are freed)."""
        return len(self._hs_ip) + len(self._hs_group) + len(self._conn_ip) + len(self._conn_group)


def _dec(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
