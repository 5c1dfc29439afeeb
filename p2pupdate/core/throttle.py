"""Rate limit for repeated per-peer events and log lines: count and summarise.

Pure. Each key (an event or log kind and the peer's IP) may pass ``burst``
times per ``window`` seconds; further ones are counted, not written. At the end
of a window, :meth:`Throttle.summaries` returns what was held back, so the
shell writes one summary line per key instead of thousands. The number of keys
is capped (``max_keys``): past it, new keys share one bucket per kind, so a
flood from many addresses cannot grow the throttle itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pupdate.config import DEFAULT_LIMITS, Limits

__all__ = ["OVERFLOW", "Suppressed", "Throttle"]

OVERFLOW = "*"  # the shared peer key once max_keys is reached


@dataclass(frozen=True)
class Suppressed:
    kind: str
    peer: str
    count: int
    since: float


@dataclass
class _Bucket:
    start: float
    passed: int = 0
    held: int = 0


class Throttle:
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.burst = limits.log_burst
        self.window = limits.log_window
        self.max_keys = limits.max_log_keys
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def allow(self, kind: str, peer: str, now: float) -> bool:
        """True if this occurrence should be written; else it is counted."""
        key = (kind, peer)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                key = (kind, OVERFLOW)
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(now)
        if bucket.passed < self.burst:
            bucket.passed += 1
            return True
        bucket.held += 1
        return False

    def summaries(self, now: float) -> list[Suppressed]:
        """Keys whose window has ended: what they held back (if anything); forgets them."""
        out: list[Suppressed] = []
        for key, bucket in list(self._buckets.items()):
            if now - bucket.start >= self.window:
                del self._buckets[key]
                if bucket.held:
                    out.append(Suppressed(key[0], key[1], bucket.held, bucket.start))
        return out

    def __len__(self) -> int:
        return len(self._buckets)
