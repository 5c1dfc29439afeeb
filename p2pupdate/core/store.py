"""Cache accounting: which complete packages to keep, which to evict, and why it is full.

What it does
    :class:`CacheIndex` knows the size and last use of every package in the cache and the
    pins that protect some of them (the installed version, the newest of each channel, a
    download in progress). :meth:`CacheIndex.evictions` chooses the least recently used
    unpinned packages to delete until the cache fits its capacity; pinned ones are never
    chosen, even when that leaves the cache over capacity, and
    :meth:`CacheIndex.over_capacity_reason` then says why, for ``status``.

What it does not do
    No files: it never deletes, reads or verifies anything and never reads a clock (``now``
    is passed in). :meth:`CacheIndex.evictions` only answers; the shell deletes each chosen
    package and then calls :meth:`CacheIndex.remove`.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pupdate.core.units import format_size

__all__ = ["PIN_INSTALLED", "PIN_IN_PROGRESS", "PIN_NEWEST", "CacheEntry", "CacheIndex"]

PIN_INSTALLED = "installed"
PIN_NEWEST = "newest"
PIN_IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class CacheEntry:
    """One cached package: its id, size in bytes and last use (a ``now`` value)."""

    package_id: bytes
    size: int
    last_used: float


class CacheIndex:
    """Sizes, last uses and pins of the cached packages; LRU choice of what to evict.

    Pins are (package id, reason) pairs: a package stays pinned while it has any reason.
    A package may be pinned before it is added (a download in progress).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._capacity = capacity
        self._entries: dict[bytes, CacheEntry] = {}
        self._pins: dict[bytes, set[str]] = {}

    # -----------------------------------------------------------------------------------
    # Views
    # -----------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The cache size in bytes (``cache_size``)."""
        return self._capacity

    @property
    def used(self) -> int:
        """Bytes held by every cached package."""
        return sum(e.size for e in self._entries.values())

    @property
    def pinned_bytes(self) -> int:
        """Bytes held by pinned cached packages."""
        return sum(e.size for pid, e in self._entries.items() if pid in self._pins)

    def __contains__(self, package_id: object) -> bool:
        return package_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, package_id: bytes) -> CacheEntry:
        """The entry of ``package_id`` (KeyError if not cached)."""
        return self._entries[package_id]

    def entries(self) -> list[CacheEntry]:
        """Every cached package, least recently used first."""
        return sorted(self._entries.values(), key=_lru_key)

    def pins(self, package_id: bytes) -> frozenset[str]:
        """The reasons ``package_id`` is pinned (empty when it is not)."""
        return frozenset(self._pins.get(package_id, ()))

    def is_pinned(self, package_id: bytes) -> bool:
        """Whether ``package_id`` has any pin."""
        return package_id in self._pins

    # -----------------------------------------------------------------------------------
    # Changes
    # -----------------------------------------------------------------------------------

    def add(self, package_id: bytes, size: int, now: float) -> None:
        """Record a package now in the cache (or refresh one), used at ``now``."""
        if size < 0:
            raise ValueError("size must not be negative")
        self._entries[package_id] = CacheEntry(bytes(package_id), size, now)

    def touch(self, package_id: bytes, now: float) -> None:
        """``package_id`` was used at ``now`` (served, installed). KeyError if not cached."""
        old = self._entries[package_id]
        self._entries[package_id] = CacheEntry(old.package_id, old.size, max(now, old.last_used))

    def remove(self, package_id: bytes) -> None:
        """The package is gone from disk (evicted or found corrupt); its pins stay."""
        self._entries.pop(package_id, None)

    def pin(self, package_id: bytes, why: str) -> None:
        """Protect ``package_id`` from eviction for reason ``why``."""
        self._pins.setdefault(package_id, set()).add(why)

    def unpin(self, package_id: bytes, why: str) -> None:
        """Drop reason ``why``; the package is evictable once no reason is left."""
        reasons = self._pins.get(package_id)
        if reasons is None:
            return
        reasons.discard(why)
        if not reasons:
            del self._pins[package_id]

    def set_capacity(self, capacity: int) -> None:
        """Change the cache size (evictions are then asked for again)."""
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._capacity = capacity

    # -----------------------------------------------------------------------------------
    # Decisions
    # -----------------------------------------------------------------------------------

    def evictions(self) -> list[bytes]:
        """Package ids to delete, least recently used first, until the cache fits.

        Only unpinned packages are chosen; if deleting all of them is not enough, all of
        them are returned and :meth:`over_capacity_reason` explains the rest.
        """
        excess = self.used - self._capacity
        out: list[bytes] = []
        if excess <= 0:
            return out
        for e in self.entries():
            if excess <= 0:
                break
            if e.package_id in self._pins:
                continue
            out.append(e.package_id)
            excess -= e.size
        return out

    def over_capacity_reason(self) -> str | None:
        """Why the cache stays over capacity even after every eviction, or None.

        That happens only when the pinned packages alone exceed the capacity; the message
        names them with their sizes and reasons, largest first.
        """
        pinned = self.pinned_bytes
        if pinned <= self._capacity:
            return None
        items = sorted(
            (e for e in self._entries.values() if e.package_id in self._pins),
            key=lambda e: (-e.size, e.package_id),
        )
        parts = [
            f"{e.package_id.hex()[:16]} {format_size(e.size)} "
            f"({', '.join(sorted(self._pins[e.package_id]))})"
            for e in items
        ]
        return (
            f"pinned packages hold {format_size(pinned)}, over the cache size of "
            f"{format_size(self._capacity)}: " + "; ".join(parts)
        )


def _lru_key(e: CacheEntry) -> tuple[float, bytes]:
    return (e.last_used, e.package_id)
