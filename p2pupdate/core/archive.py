"""What a directory target's release archive may contain: pure path rules.

The shell (:mod:`p2pupdate.shell.install.targets`) lists a tar archive's
members as :class:`ArchiveMember` values and asks :func:`check_archive`
before it unpacks anything: no member may write outside the release
directory, through a link, or as a special file, and the archive's size and
member count are capped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.reasons import Reason

__all__ = ["MAX_LINK_HOPS", "Accept", "ArchiveMember", "Refuse", "check_archive"]

BAD_ARCHIVE = Reason.BAD_ARCHIVE


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    """Go ahead."""


@dataclass(frozen=True)
class Refuse:
    """Do not go ahead, for ``reason`` (a reason code), with ``detail``."""

    reason: str
    detail: str = ""


# ---------------------------------------------------------------------------
# Directory targets: what a release archive may contain
# ---------------------------------------------------------------------------

_MEMBER_KINDS = frozenset({"file", "dir", "symlink", "hardlink"})


@dataclass(frozen=True)
class ArchiveMember:
    """One tar member as the shell read it: ``kind`` is file, dir, symlink,
    hardlink, or anything else (device, fifo, sparse...) which is refused."""

    name: str
    kind: str
    size: int = 0
    linkname: str = ""


def _normalize(path: str) -> list[str] | None:
    """Lexically normalize a relative POSIX path; None if it climbs above the root."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return parts


MAX_LINK_HOPS = DEFAULT_LIMITS.max_link_hops  # Limits says why


def _resolve_link(base: list[str], target: str, links: dict[str, str]) -> list[str] | None:
    """Where the link target ``target`` written in directory ``base`` leads, following the
    archive's other symlinks (``links``: path -> target) like the kernel would.

    None if it climbs above the root at any step, or needs more than
    :data:`MAX_LINK_HOPS` link expansions (a loop, or a chain built to be expensive).
    """
    budget = [MAX_LINK_HOPS]

    def walk(cur: list[str], path: str) -> list[str] | None:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not cur:
                    return None
                cur.pop()
                continue
            cur.append(part)
            nested = links.get("/".join(cur))
            if nested is not None:
                budget[0] -= 1
                if budget[0] < 0 or nested.startswith("/"):
                    return None
                found = walk(cur[:-1], nested)
                if found is None:
                    return None
                cur = found
        return cur

    return walk(list(base), target)


def check_archive(
    members: Iterable[ArchiveMember], max_total: int, max_members: int
) -> Accept | Refuse:
    """Refuse an archive that could write outside its release directory.

    Rejected: absolute names, ``..`` in names, NUL bytes, links (symbolic or
    hard) that point outside the tree or at an absolute path, members
    written through an earlier symlink, duplicates of non-directories,
    device files and other special kinds, more than ``max_members`` members,
    and more than ``max_total`` bytes unpacked. Symlink targets are resolved
    through the archive's other symlinks (in any order, as the unpacked tree
    will have them all): ``x -> .`` then ``a -> x/..`` is refused, because ``a``
    leads to the release directory's parent.
    """
    total = 0
    count = 0
    seen: dict[str, str] = {}
    links: dict[str, str] = {}
    for m in members:
        count += 1
        if count > max_members:
            return Refuse(BAD_ARCHIVE, f"more than {max_members} members")
        if m.kind not in _MEMBER_KINDS:
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: {m.kind} members are not allowed")
        if not m.name or "\x00" in m.name or "\x00" in m.linkname:
            return Refuse(BAD_ARCHIVE, f"bad member name {m.name!r}")
        if m.name.startswith("/"):
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: absolute path")
        if ".." in m.name.split("/"):
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: '..' in path")
        parts = _normalize(m.name)
        if parts is None:  # pragma: no cover - '..' was refused above
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: outside the tree")
        if not parts:
            if m.kind == "dir":
                continue  # "./": the release directory itself
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: names the release directory")
        key = "/".join(parts)
        for i in range(1, len(parts)):
            if seen.get("/".join(parts[:i])) in ("symlink", "file", "hardlink"):
                return Refuse(BAD_ARCHIVE, f"{m.name!r}: written through a link or file")
        if key in seen and (m.kind != "dir" or seen[key] != "dir"):
            return Refuse(BAD_ARCHIVE, f"{m.name!r}: duplicate member")
        if m.kind == "symlink":
            if not m.linkname or m.linkname.startswith("/"):
                return Refuse(BAD_ARCHIVE, f"{m.name!r}: link to an absolute path")
            if _normalize("/".join([*parts[:-1], m.linkname])) is None:
                return Refuse(BAD_ARCHIVE, f"{m.name!r}: link points outside the tree")
            links[key] = m.linkname
        elif m.kind == "hardlink":
            target = _normalize(m.linkname) if not m.linkname.startswith("/") else None
            if not target or seen.get("/".join(target)) != "file":
                return Refuse(BAD_ARCHIVE, f"{m.name!r}: hard link outside the tree")
        elif m.kind == "file":
            if m.size < 0:
                return Refuse(BAD_ARCHIVE, f"{m.name!r}: negative size")
            total += m.size
            if total > max_total:
                return Refuse(BAD_ARCHIVE, f"unpacks to more than {max_total} bytes")
        seen[key] = m.kind
    for name, linkname in links.items():
        if _resolve_link(name.split("/")[:-1], linkname, links) is None:
            return Refuse(BAD_ARCHIVE, f"{name!r}: link leads outside the tree through other links")
    return Accept()
