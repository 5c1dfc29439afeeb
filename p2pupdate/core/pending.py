"""BITFIELDs of packages the node has no announcement for yet, within limits.

Pure. A peer may advertise a package before its announcement reaches us; the
bitfield is worth keeping so the download can start at once when it arrives.
But nothing checks it until then, so it is exactly what a peer could grow
without end: at most ``max_pending_bitfield_packages`` packages are held, at
most ``max_pending_bitfields_per_peer`` per peer, a newer bitfield replaces the
older, and everything of a peer is dropped when it disconnects
(:meth:`PendingBitfields.drop_peer`). Bits are kept as given (the length is
checked against the package when its announcement arrives).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from bitarray import bitarray

from p2pupdate.config import DEFAULT_LIMITS, Limits

__all__ = ["PendingBitfields"]

P = TypeVar("P")  # peer key (a node id in the node)
K = TypeVar("K")  # package id


class PendingBitfields(Generic[K, P]):
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.max_packages = limits.max_pending_bitfield_packages
        self.max_per_peer = limits.max_pending_bitfields_per_peer
        self._by_package: dict[K, dict[P, bitarray]] = {}
        self._per_peer: Counter[P] = Counter()

    def keep(self, peer: P, package: K, bits: bitarray) -> bool:
        """Hold ``bits`` of ``peer`` for ``package``; False if a limit says no."""
        held = self._by_package.get(package)
        if held is not None and peer in held:
            held[peer] = bits
            return True
        if held is None and len(self._by_package) >= self.max_packages:
            return False
        if self._per_peer[peer] >= self.max_per_peer:
            return False
        self._by_package.setdefault(package, {})[peer] = bits
        self._per_peer[peer] += 1
        return True

    def have(self, peer: P, package: K, indices: Iterable[int]) -> None:
        """A HAVE for a pending package: set the bits it names (never grows anything)."""
        bits = self._by_package.get(package, {}).get(peer)
        if bits is not None:
            for i in indices:
                if i < len(bits):
                    bits[i] = 1

    def take(self, package: K) -> Mapping[P, bitarray]:
        """The announcement arrived: hand over (and forget) every peer's bits for it."""
        held = self._by_package.pop(package, {})
        for peer in held:
            self._release(peer)
        return held

    def drop_peer(self, peer: P) -> None:
        """The peer disconnected: forget all it advertised."""
        if not self._per_peer[peer]:
            return
        for package in list(self._by_package):
            held = self._by_package[package]
            if held.pop(peer, None) is not None:
                self._release(peer)
                if not held:
                    del self._by_package[package]

    def _release(self, peer: P) -> None:
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    def count(self) -> int:
        return sum(len(h) for h in self._by_package.values())

    def packages(self) -> int:
        return len(self._by_package)

    def of_peer(self, peer: P) -> int:
        return self._per_peer[peer]
