"""When a failed download or install step is tried again: which failures pass, and when.

Pure: no clock, no file, no sleep. The agent (:mod:`p2pupdate.shell.agent`)
reports a failure with its reason and how many times this step already failed,
and gets back either :class:`Retry` (wait ``delay`` seconds, or less when the
named ``wake_on`` condition is seen to be gone) or :class:`Final` (do not try
again: wait for a newer release, an operator, or a restart).

A failure is retried when it is a fault of the host or of the moment, not of
the release: a full disk, a disk or store error, sources that went away, a
package hash mismatch (every chunk was checked against the signed table, so the
bytes on disk went bad, and the peers that sent bad chunks are banned), a
package that vanished from the cache before it was installed, a disk full while
staging or backing up, a restart command that could not be started at all.
Everything else is final: a refusal by policy, a quarantined or superseded
version, a failed health check (that is rollback and quarantine), a hostile
archive.

The wait doubles from ``first`` up to ``limit`` and is drawn from
``[(1 - jitter) * d, d]`` with the injected ``Random``, so that a fleet whose
disks filled at the same moment does not come back in lock step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from random import Random

__all__ = [
    "DEFAULT_BACKOFF",
    "FREE_SPACE",
    "NEW_SOURCE",
    "RETRYABLE",
    "Backoff",
    "Final",
    "Retry",
    "decide",
    "is_retryable",
    "reason_kind",
    "wake_condition",
]

# Conditions whose end is worth acting on at once (the shell watches for them).
FREE_SPACE = "free_space"  # free space is back above what the package needs
NEW_SOURCE = "new_source"  # a peer that holds chunks of the package connected

# Short reasons (the part of a ``download_failed`` / ``update_failed`` reason
# before any ``: detail``) that name a passing fault, and what ends it early.
RETRYABLE: dict[str, str | None] = {
    # download
    "disk_full": FREE_SPACE,
    "disk_error": None,
    "store_error": None,
    "error": None,  # a store or state file error during a download (historic name)
    "no_sources": NEW_SOURCE,
    "package_hash_mismatch": NEW_SOURCE,
    # install steps
    "install_failed": None,  # an OS error while backing up or staging
    "package_missing": None,  # the cached package vanished before the install
    "state_error": None,  # the install record could not be written
    "restart_not_started": None,  # the restart command could not be started at all
}


def reason_kind(reason: str) -> str:
    """``"disk_full: no room in /x"`` -> ``"disk_full"``; spaces count as underscores."""
    return reason.split(":", 1)[0].strip().replace(" ", "_")


def is_retryable(reason: str) -> bool:
    """Whether a failure for ``reason`` is tried again (see the module docstring)."""
    return reason_kind(reason) in RETRYABLE


def wake_condition(reason: str) -> str | None:
    """The condition whose end retries at once (FREE_SPACE, NEW_SOURCE), or None."""
    return RETRYABLE.get(reason_kind(reason))


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter: ``first`` s, doubling, at most ``limit`` s."""

    first: float = 30.0
    limit: float = 1800.0
    # Up to a quarter shorter than the nominal wait: enough to spread a fleet out.
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not self.first > 0:
            raise ValueError("the first retry delay must be positive")
        if not self.limit >= self.first:
            raise ValueError("the longest retry delay must be at least the first")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")

    def nominal(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based), before jitter."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        # 2**60 * anything positive is far above any sane limit; avoid float overflow.
        return min(self.limit, self.first * 2.0 ** min(attempt - 1, 60))

    def delay(self, attempt: int, rng: Random) -> float:
        """The jittered wait before retry number ``attempt``."""
        d = self.nominal(attempt)
        return d * (1.0 - self.jitter * rng.random())


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` s (retry number ``attempt``), or at once on ``wake_on``."""

    reason: str
    attempt: int
    delay: float
    wake_on: str | None


@dataclass(frozen=True)
class Final:
    """Do not try again."""

    reason: str


def decide(reason: str, failures: int, backoff: Backoff, rng: Random) -> Retry | Final:
    """What to do after the ``failures``-th failure in a row (1-based) of one step."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    kind = reason_kind(reason)
    if kind not in RETRYABLE:
        return Final(kind)
    return Retry(kind, failures, backoff.delay(failures, rng), RETRYABLE[kind])
