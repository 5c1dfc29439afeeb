"""Shared test helpers: keys, announcements, packages."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from p2pupdate.core.announcement import Announcement, AnnouncementBody, sign_announcement
from p2pupdate.core.chunks import ChunkHasher, ContentInfo


def content_of(data: bytes) -> ContentInfo:
    hasher = ChunkHasher()
    hasher.feed_whole(data)
    return hasher.finish()


def make_announcement(
    keys: list[nacl.signing.SigningKey],
    *,
    channel: str = "app/stable",
    version: str = "1.0.0",
    data: bytes = b"hello world",
    created: int | None = None,
    expires_in: int = 3600,
    **extra: object,
) -> Announcement:
    info = content_of(data)
    now = int(time.time()) if created is None else created
    body = AnnouncementBody(
        channel=channel,
        version=version,
        package_id=info.package_id,
        size=info.size,
        table_root=info.root,
        created=now,
        expires=now + expires_in,
        **extra,  # type: ignore[arg-type]
    )
    return sign_announcement(body, keys)


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at the new directory ``mnt``, unmounted at the end.

    Root only: skips the test where a mount is not possible.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Write a file until the filesystem refuses another byte."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
