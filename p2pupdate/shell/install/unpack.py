"""Unpacking a directory target's release from its tar archive, checked and hashed.

:func:`extract_release` builds a release in its final directory beside the target
(see :mod:`p2pupdate.shell.install.targets` for the link that makes it live). The
member list is checked before anything is written (:mod:`p2pupdate.core.archive`),
tarfile's ``data`` filter and a last look at every link guard the extraction, and,
given the package id, the archive is read once, front to back, through BLAKE3.
Blocking: the applicator runs it in a worker thread with a ``check`` for cancellation.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import blake3

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.apply import BAD_ARCHIVE, HASH_MISMATCH
from p2pupdate.core.archive import ArchiveMember, Refuse, check_archive
from p2pupdate.errors import ApplyError
from p2pupdate.shell.filehash import BLOCK, no_check
from p2pupdate.shell.fsutil import fsync_dir, fsync_path

__all__ = ["MAX_ARCHIVE_MEMBERS", "extract_release"]

MAX_ARCHIVE_MEMBERS = DEFAULT_LIMITS.max_archive_members  # Limits says why


def _member_kind(info: tarfile.TarInfo) -> str:
    if info.issparse():
        return "sparse"
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "other"


def _fsync_tree(root: Path, check: Callable[[], None]) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        check()
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fsync_path(Path(p))
        fsync_dir(Path(dirpath))


def _check_links_inside(root: Path) -> None:
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if os.path.commonpath([real, real_root]) != real_root:
                    raise ApplyError(BAD_ARCHIVE, f"{p} points outside the release")


class _HashingReader:
    """A read-only file object that hashes (BLAKE3) every byte read through it."""

    def __init__(self, raw: BinaryIO, check: Callable[[], None]) -> None:
        self._raw = raw
        self._check = check
        self.hasher = blake3.blake3()

    def read(self, size: int = -1) -> bytes:
        self._check()
        data = self._raw.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        """Read (and hash) what is left of the file: tar padding, trailing blocks."""
        while self.read(BLOCK):
            pass


def _member(info: tarfile.TarInfo) -> ArchiveMember:
    return ArchiveMember(info.name, _member_kind(info), info.size, info.linkname)


def extract_release(
    archive: Path,
    release: Path,
    max_total: int,
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    check: Callable[[], None] = no_check,
    package_id: bytes | None = None,
) -> None:
    """Unpack a tar archive into the new directory ``release``, checked first.

    Raises ApplyError(``bad_archive``) for a hostile or unreadable archive,
    before anything is written when the member list shows it (see
    :func:`p2pupdate.core.archive.check_archive`); tarfile's ``data`` filter and a
    final look at every link guard the extraction itself. The release is
    built in its final directory (venvs cannot move) and marked complete by a
    ``<release>.complete`` file written last.

    With ``package_id`` (the BLAKE3 of the archive), the unpacking pass reads the
    archive once, front to back, hashing every byte it reads; each member must be
    the one the pre-check saw, in the same place, and the hash must be the package
    id at the end, else ApplyError(``hash_mismatch``) and no marker is written (the
    caller removes the release). A cache file changed after it was verified is
    refused, never made live.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            infos: list[tarfile.TarInfo] = []
            for info in tar:
                check()
                infos.append(info)
                if len(infos) > max_members:
                    break
            members = [_member(i) for i in infos]
            verdict = check_archive(members, max_total, max_members)
            if isinstance(verdict, Refuse):
                raise ApplyError(verdict.reason, verdict.detail)
            release.mkdir(parents=False, exist_ok=False)
            if package_id is None:
                for info in infos:
                    check()
                    tar.extract(info, release, filter="data")
        if package_id is not None:
            _extract_hashed(archive, release, members, package_id, check)
    except (tarfile.TarError, EOFError) as exc:
        raise ApplyError(BAD_ARCHIVE, f"{type(exc).__name__}: {exc}") from exc
    _check_links_inside(release)
    _fsync_tree(release, check)
    marker = release.with_name(release.name + ".complete")
    fsync_path(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fsync_dir(release.parent)


def _extract_hashed(
    archive: Path,
    release: Path,
    checked: list[ArchiveMember],
    package_id: bytes,
    check: Callable[[], None],
) -> None:
    """Unpack in one sequential pass over ``archive``, hashing what is read (see above).

    Whatever stops the pass, the rest of the file is read and hashed too: if the bytes
    are not the package's, the file changed (``hash_mismatch``); if they are, the
    archive itself is at fault (``bad_archive``).
    """
    problem: str | None = None
    with open(archive, "rb") as raw:
        reader = _HashingReader(raw, check)
        try:
            # Stream mode: every byte is read once, in order, through the hasher.
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                n = 0
                for info in tar:
                    if n >= len(checked) or _member(info) != checked[n]:
                        problem = f"member {info.name!r} is not the one checked"
                        break
                    n += 1
                    tar.extract(info, release, filter="data")
                if problem is None and n != len(checked):
                    problem = f"{len(checked) - n} checked members missing"
        except (tarfile.TarError, EOFError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        reader.drain()
    if reader.hasher.digest() != package_id:
        detail = "package changed after it was verified"
        raise ApplyError(HASH_MISMATCH, f"{detail}: {problem}" if problem else detail)
    if problem is not None:
        raise ApplyError(BAD_ARCHIVE, problem)
