"""Helpers for building signed announcements in tests: fixed keys, a valid body, re-signing."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import nacl.signing

from p2pupdate.core.announcement import (
    SIGN_DOMAIN,
    Announcement,
    AnnouncementBody,
    decode_announcement,
    sign_announcement,
)

__all__ = [
    "KEYS",
    "NOW",
    "body",
    "envelope",
    "pub",
    "resign",
    "signed",
]

NOW = 1_700_000_000
# Deterministic keys: KEYS[0] is "the authority" in most tests.
KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(8)]


def pub(key: nacl.signing.SigningKey) -> bytes:
    return bytes(key.verify_key)


def body(**changes: Any) -> AnnouncementBody:
    """A valid body for channel app/stable 1.4.0, with ``changes`` applied."""
    fields: dict[str, Any] = dict(
        channel="app/stable",
        version="1.4.0",
        package_id=b"\x11" * 32,
        size=3 * 65536 + 5,
        table_root=b"\x22" * 32,
        created=NOW,
        expires=NOW + 30 * 86400,
    )
    fields.update(changes)
    return AnnouncementBody(**fields)


def signed(*keys: nacl.signing.SigningKey, **changes: Any) -> Announcement:
    """A body with ``changes``, signed by ``keys`` (default: KEYS[0])."""
    return sign_announcement(body(**changes), list(keys) or [KEYS[0]])


def resign(ann: Announcement, *keys: nacl.signing.SigningKey, **changes: Any) -> Announcement:
    """``ann``'s body with ``changes``, validly signed again (the attack-test building block)."""
    new_body = dataclasses.replace(ann.body, **changes)
    return sign_announcement(new_body, list(keys) or [KEYS[0]])


def envelope(body_bytes: bytes, signatures: list[tuple[bytes, bytes]]) -> bytes:
    """Wire bytes of an announcement with an arbitrary envelope (canonical form)."""
    data: bytes = msgpack.packb([body_bytes, [[k, s] for k, s in signatures]], use_bin_type=True)
    return data


def sign_bytes(key: nacl.signing.SigningKey, body_bytes: bytes) -> tuple[bytes, bytes]:
    """One (key id, signature) pair over arbitrary body bytes."""
    return pub(key), key.sign(SIGN_DOMAIN + body_bytes).signature


def from_parts(body_bytes: bytes, signatures: list[tuple[bytes, bytes]]) -> Announcement:
    """Decode an announcement assembled from parts (must be well-formed)."""
    return decode_announcement(envelope(body_bytes, signatures))
