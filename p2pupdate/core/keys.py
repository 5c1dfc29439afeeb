"""Ed25519 keys: the text forms users see and the secret-key file format.

A public key is shown as ``ed25519:<64 hex digits>`` (what ``--trust``
takes); a secret key file holds a header line and the 32-byte seed in hex.
Parsing is pure; reading and writing files is in ``p2pupdate.shell.keyfile``.
"""

from __future__ import annotations

import re

import nacl.bindings
import nacl.signing

__all__ = [
    "PUBKEY_PREFIX",
    "SECRET_HEADER",
    "decode_secret_key",
    "encode_secret_key",
    "format_pubkey",
    "parse_pubkey",
    "short_id",
]

PUBKEY_PREFIX = "ed25519:"
SECRET_HEADER = "p2pupdate-ed25519-secret-key-v1"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def format_pubkey(key: bytes) -> str:
    """The one-line text form of a 32-byte public key."""
    if len(key) != 32:
        raise ValueError("a public key is 32 bytes")
    return PUBKEY_PREFIX + key.hex()


def parse_pubkey(text: str) -> bytes:
    """Parse ``ed25519:<hex>`` (or bare hex) into 32 key bytes; ValueError if malformed."""
    raw = text.strip()
    if raw.startswith(PUBKEY_PREFIX):
        raw = raw[len(PUBKEY_PREFIX) :]
    if not _HEX64.match(raw):
        raise ValueError(f"bad public key {text!r} (expected {PUBKEY_PREFIX}<64 hex digits>)")
    key = bytes.fromhex(raw)
    # VerifyKey() only checks the length; this rejects non-points and small-order points,
    # which no signature could ever verify against.
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(key):
        raise ValueError(f"bad public key {text!r}: not a valid Ed25519 public key")
    return key


def short_id(key: bytes) -> str:
    """A short label for logs and events (first 8 bytes, hex)."""
    return key[:8].hex()


def encode_secret_key(key: nacl.signing.SigningKey) -> bytes:
    """The bytes of a secret key file."""
    return f"{SECRET_HEADER}\n{bytes(key).hex()}\n".encode()


def decode_secret_key(data: bytes) -> nacl.signing.SigningKey:
    """Parse a secret key file; ValueError with a user-facing reason if it is not one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not a p2pupdate secret key file (binary content)") from None
    lines = text.split()
    if len(lines) != 2 or lines[0] != SECRET_HEADER:
        raise ValueError("not a p2pupdate secret key file (bad header)")
    if not _HEX64.match(lines[1]):
        raise ValueError("secret key has the wrong length (expected 32 bytes as 64 hex digits)")
    return nacl.signing.SigningKey(bytes.fromhex(lines[1]))
