"""Admission certificates and revocation lists on disk.

Each file holds the exact signed bytes (``core.fleet``). Reading checks the
file as if it had just arrived from the network: size cap first, canonical
form, and the signature; every failure a person can cause is a UsageError with
one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.fleet import (
    Admission,
    Revocations,
    decode_admission,
    decode_revocations,
    revocation_limit,
)
from p2pupdate.errors import RemoteProtocolError, UsageError
from p2pupdate.shell.fsutil import atomic_write_bytes, read_bytes_limited

__all__ = ["load_admission", "load_revocations", "write_fleet_file"]


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        return read_bytes_limited(path, limit)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"{what} {path}: larger than {limit} bytes; not a {what}") from None


def load_admission(path: Path, limits: Limits = DEFAULT_LIMITS) -> Admission:
    """An admission certificate file, well-formed and correctly signed."""
    data = _read(path, limits.max_admission, "admission certificate")
    try:
        adm = decode_admission(data, limits)
    except RemoteProtocolError as exc:
        raise UsageError(f"admission certificate {path}: {exc}") from None
    if not adm.signature_ok():
        raise UsageError(f"admission certificate {path}: bad signature")
    return adm


def load_revocations(path: Path, limits: Limits = DEFAULT_LIMITS) -> Revocations:
    """A revocation list file, well-formed and correctly signed."""
    data = _read(path, revocation_limit(limits), "revocation list")
    try:
        rev = decode_revocations(data, limits)
    except RemoteProtocolError as exc:
        raise UsageError(f"revocation list {path}: {exc}") from None
    if not rev.signature_ok():
        raise UsageError(f"revocation list {path}: bad signature")
    return rev


def write_fleet_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a certificate or list atomically (public data: mode 0644)."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a file path")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist")
    try:
        atomic_write_bytes(path, data, mode=0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
