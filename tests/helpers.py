"""Shared test helpers: keys, announcements, packages."""

from __future__ import annotations

import time

import nacl.signing

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
