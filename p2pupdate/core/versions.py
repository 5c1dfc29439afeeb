"""Versions: the one place that parses and orders them.

Semver precedence with build metadata ignored (``1.2.0+b7`` equals ``1.2.0``), at
most 64 bytes (the announcement's limit, docs/protocol.md). Every decision that
orders versions (relay freshness, the act decision, the applicator, self-update)
uses these functions, so a version that is not semver is treated the same way
everywhere: an installed version that is not semver (a hand-written ``version =``)
counts as unknown, so any release is newer than it.
"""

from __future__ import annotations

from collections.abc import Collection

import semver

__all__ = [
    "MAX_VERSION_LEN",
    "compare_versions",
    "is_newer",
    "normalize_version",
    "parse_version",
    "version_in",
    "version_key",
]

# docs/protocol.md: a version string is at most 64 bytes.
MAX_VERSION_LEN = 64


def parse_version(text: str) -> semver.Version:
    """Parse a semver string, dropping build metadata (it never orders versions).

    Raises ValueError for anything that is not semver or is longer than 64 bytes.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VERSION_LEN:
        raise ValueError(f"version longer than {MAX_VERSION_LEN} bytes")
    try:
        version = semver.Version.parse(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a semantic version: {text!r}") from exc
    return version.replace(build=None)


# The sort key of a version: its parsed form (precedence, build metadata ignored).
version_key = parse_version


def normalize_version(text: str) -> str:
    """The version without build metadata, as a string (``1.2.0+b7`` -> ``1.2.0``)."""
    return str(parse_version(text))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` orders before, with or after ``b`` (semver precedence)."""
    return parse_version(a).compare(parse_version(b))


def is_newer(new_version: str, installed_version: str | None) -> bool:
    """True when ``new_version`` is strictly newer; an unknown installed version is older.

    ``installed_version`` None or not semver means unknown: anything is newer.
    ``new_version`` must be semver (ValueError otherwise): it comes from a signed,
    validated announcement.
    """
    if installed_version is None:
        return True
    try:
        installed = parse_version(installed_version)
    except ValueError:
        return True
    return parse_version(new_version).compare(installed) > 0


def version_in(version: str, versions: Collection[str]) -> bool:
    """Whether ``version`` equals one of ``versions``, ignoring build metadata."""
    if version in versions:
        return True
    try:
        target = parse_version(version)
    except ValueError:
        return False
    for other in versions:
        try:
            if parse_version(other).compare(target) == 0:
                return True
        except ValueError:
            continue
    return False
