"""Reading and writing Ed25519 key files, and the node's own identity key.

Every failure a user can cause (missing file, a directory, wrong content,
mode readable by group or others) becomes a UsageError with one clear line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.keys import decode_secret_key, encode_secret_key
from p2pupdate.errors import UsageError
from p2pupdate.shell.fsutil import atomic_write_bytes, read_bytes_limited

__all__ = ["load_or_create_node_key", "load_secret_key", "write_secret_key"]

_MAX_KEYFILE = DEFAULT_LIMITS.max_keyfile  # Limits says why


def write_secret_key(path: Path, key: nacl.signing.SigningKey, *, force: bool = False) -> None:
    """Write ``key`` to ``path`` atomically with mode 0600."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a key file path")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist")
    try:
        atomic_write_bytes(path, encode_secret_key(key), mode=0o600)
    except OSError as exc:
        raise UsageError(f"cannot write key file {path}: {exc.strerror}") from None


def load_secret_key(path: Path) -> nacl.signing.SigningKey:
    """Load a secret key file, refusing one that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise UsageError(
            f"key file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        data = read_bytes_limited(path, _MAX_KEYFILE)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read key file {path}: {exc}") from None
    try:
        return decode_secret_key(data)
    except ValueError as exc:
        raise UsageError(f"key file {path}: {exc}") from None


def load_or_create_node_key(data_dir: Path) -> nacl.signing.SigningKey:
    """The node's identity key, made on first start and kept in the data dir."""
    path = data_dir / "node.key"
    if path.exists():
        return load_secret_key(path)
    key = nacl.signing.SigningKey.generate()
    os.makedirs(data_dir, exist_ok=True)
    write_secret_key(path, key)
    return key
