"""Token-bucket arithmetic for the upload and download limits (pure).

What it does
    :class:`TokenBucket` holds up to ``burst`` tokens (bytes) refilled at ``rate`` bytes per
    second. :meth:`TokenBucket.consume` takes ``n`` tokens at once, going into debt when
    there are not enough, and returns how long the caller must wait before moving those
    bytes. Because every caller reserves before it waits, callers sharing one bucket (all
    connections of a node) are paced one chunk after another at exactly ``rate``, with no
    bursts and no gaps: the per-chunk pacing docs/performance.md asks for. ``rate == 0`` means
    unlimited.

What it does not do
    It never sleeps and never reads a clock: ``now`` is passed in, and the shell sleeps
    for the returned delay. It does not decide which chunks bypass the limit (critical
    packages): the shell simply does not consume for those.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """Tokens (bytes) refilled at ``rate`` per second up to ``burst``; ``rate == 0``: no limit.

    The bucket starts full. Time going backwards is treated as no time passing.
    """

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self._check(rate, burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = float(now)

    @staticmethod
    def _check(rate: float, burst: float) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError("rate must be a finite number >= 0 (0 = unlimited)")
        if not (math.isfinite(burst) and burst >= 0):
            raise ValueError("burst must be a finite number >= 0")
        if rate > 0 and burst <= 0:
            raise ValueError("a limited bucket needs a positive burst")

    @property
    def rate(self) -> float:
        """Refill rate in bytes per second (0 = unlimited)."""
        return self._rate

    @property
    def burst(self) -> float:
        """Bucket capacity in bytes."""
        return self._burst

    @property
    def unlimited(self) -> bool:
        """True when the bucket never makes anyone wait."""
        return self._rate == 0

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``; negative while in debt, ``inf`` if unlimited."""
        if self.unlimited:
            return math.inf
        self._refill(now)
        return self._tokens

    def consume(self, n: float, now: float) -> float:
        """Reserve ``n`` tokens and return the seconds to wait before using them.

        0 when there were ``n`` tokens; otherwise the time until the debt this leaves is
        paid back, so that reservations made one after another are spaced ``n / rate``
        apart. Negative ``n`` raises ValueError.
        """
        if n < 0 or not math.isfinite(n):
            raise ValueError("cannot consume a negative or infinite amount")
        if self.unlimited:
            return 0.0
        self._refill(now)
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate

    def refund(self, n: float, now: float) -> None:
        """Give back ``n`` tokens reserved but not used (a cancelled chunk)."""
        if n < 0 or not math.isfinite(n):
            raise ValueError("cannot refund a negative or infinite amount")
        if self.unlimited:
            return
        self._refill(now)
        self._tokens = min(self._burst, self._tokens + n)

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """Change the limit at ``now`` (tokens earned so far at the old rate are kept)."""
        self._check(rate, burst)
        if not self.unlimited:
            self._refill(now)
        else:
            self._tokens = float(burst)
        self._last = max(self._last, now)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = min(self._tokens, self._burst)
