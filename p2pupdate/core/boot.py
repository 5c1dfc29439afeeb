"""Boot counting of the self-update launcher: the decisions, pure and stdlib only.

The stable launcher (:mod:`p2pupdate.selfupdate.launcher`) runs before a
release's own venv is trusted, under the base interpreter, so it can import
nothing but the standard library. ``p2pupdate self install`` copies this file
beside it (as ``p2pupdate_boot.py``). So this module imports nothing from
p2pupdate and nothing outside the standard library, and compares versions as
plain names (no semver): a release is known by its directory name.
``tests/core/test_boot.py`` checks both.

What a boot does (docs/self-update.md, Rollback):

* :func:`choose_release` -- which release to start: ``current``, or
  ``previous`` when ``current`` is missing or half made.
* :func:`boot_decision` -- for ``p2pupdate node``: count this boot of the
  release for this node (persisted before the release's code runs, so a crash
  counts), start it as it is (confirmed healthy, or given up on), or, past the
  bound, quarantine it and go back to ``previous`` when that is a good release.
* :func:`quarantine_entries` / :func:`add_quarantine` /
  :func:`remove_quarantine` -- the one quarantine store of an install
  (``state/quarantine.json``), read as if it came from the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_BOUND",
    "QUARANTINE_FORMAT",
    "TOO_MANY_ATTEMPTS",
    "BootCount",
    "BootDecision",
    "BootEntry",
    "BootRollBack",
    "BootStart",
    "add_quarantine",
    "boot_bound",
    "boot_decision",
    "boot_entry",
    "choose_release",
    "node_key_of",
    "previous_is_good",
    "quarantine_entries",
    "remove_quarantine",
]

# A release may boot this many times for one node without being confirmed healthy; the
# next boot rolls it back. Three: one crash can be bad luck, three in a row is the release.
DEFAULT_BOUND = 3
QUARANTINE_FORMAT = 1
# The reason a launcher quarantines a release with (docs/self-update.md).
TOO_MANY_ATTEMPTS = "too_many_attempts"


@dataclass(frozen=True)
class BootEntry:
    """One node's boots of one release, as its boot record says."""

    attempts: int = 0
    confirmed: bool = False
    gave_up: bool = False


@dataclass(frozen=True)
class BootStart:
    """Start the release without counting: it was confirmed healthy, or given up on."""


@dataclass(frozen=True)
class BootCount:
    """Persist ``attempt`` as this node's boot counter of the release, then start it."""

    attempt: int


@dataclass(frozen=True)
class BootRollBack:
    """Past the bound: quarantine the release; with ``restore``, switch ``current``
    back to ``previous`` and decide again for that release, else give up on it
    (mark it, start it as it is: there is nothing better to run)."""

    restore: bool


BootDecision = BootStart | BootCount | BootRollBack


def _count(value: object) -> int:
    """A non-negative integer from a state file; anything else counts as 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def boot_entry(record: dict[str, Any], release: str) -> BootEntry:
    """The entry of ``release`` in a boot record (``{"releases": {v: {...}}}``).

    A missing or malformed entry is a release this node never booted.
    """
    releases = record.get("releases")
    entry = releases.get(release) if isinstance(releases, dict) else None
    if not isinstance(entry, dict):
        return BootEntry()
    return BootEntry(
        attempts=_count(entry.get("attempts")),
        confirmed=entry.get("confirmed") is True,
        gave_up=entry.get("gave_up") is True,
    )


def boot_bound(record: dict[str, Any]) -> int:
    """The bound the node last confirmed with (its ``boot_attempts``), else the default."""
    bound = record.get("bound")
    if isinstance(bound, int) and not isinstance(bound, bool) and bound >= 1:
        return bound
    return DEFAULT_BOUND


def boot_decision(entry: BootEntry, bound: int, previous_good: bool) -> BootDecision:
    """What a ``node`` boot of a release does for one node (see the module doc).

    ``bound`` (at least 1) is how many unconfirmed boots the release gets;
    ``previous_good`` is :func:`previous_is_good` for it.
    """
    if bound < 1:
        raise ValueError("bound must be at least 1")
    if entry.confirmed or entry.gave_up:
        return BootStart()
    if entry.attempts >= bound:
        return BootRollBack(restore=previous_good)
    return BootCount(entry.attempts + 1)


def previous_is_good(
    release: str, previous: str | None, previous_complete: bool, quarantined: list[str]
) -> bool:
    """Whether ``previous`` is something to roll ``release`` back to."""
    return (
        previous is not None
        and previous != release
        and previous_complete
        and previous not in quarantined
    )


def choose_release(
    current: str | None, current_complete: bool, previous: str | None, previous_complete: bool
) -> str | None:
    """The release to start: ``current`` when whole, else a whole ``previous``, else None."""
    if current is not None and current_complete:
        return current
    if previous is not None and previous_complete:
        return previous
    return None


def node_key_of(abs_data_dir: str) -> str:
    """The key of a node in an install's state: a hash of its absolute data dir."""
    return hashlib.sha256(abs_data_dir.encode()).hexdigest()[:16]


def quarantine_entries(obj: object) -> list[dict[str, Any]]:
    """The entries of a parsed ``quarantine.json``; a malformed file quarantines nothing."""
    entries = obj.get("versions") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]


def add_quarantine(
    obj: object, version: str, reason: str, node: str, at: float
) -> dict[str, Any] | None:
    """The ``quarantine.json`` with ``version`` added; None when it is already there."""
    entries = quarantine_entries(obj)
    if version in [e["version"] for e in entries]:
        return None
    entries.append({"version": version, "reason": reason, "node": node, "at": at})
    return {"format": QUARANTINE_FORMAT, "versions": entries}


def remove_quarantine(obj: object, version: str) -> dict[str, Any] | None:
    """The ``quarantine.json`` without ``version``; None when it was not there."""
    entries = quarantine_entries(obj)
    keep = [e for e in entries if e["version"] != version]
    if len(keep) == len(entries):
        return None
    return {"format": QUARANTINE_FORMAT, "versions": keep}
