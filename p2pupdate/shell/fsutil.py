"""Durable file operations: atomic replace, directory fsync, free-space checks.

Every state file p2pupdate keeps goes through :func:`atomic_write_bytes`:
write a temp file beside the target, fsync it, rename it over the target,
fsync the directory. A crash at any point leaves either the old or the new
content, never a torn file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from p2pupdate.errors import DiskFullError, StateFileError

__all__ = [
    "atomic_write_bytes",
    "check_free_space",
    "fsync_dir",
    "fsync_path",
    "pid_alive",
    "read_bytes_limited",
    "read_json_file",
]


def fsync_path(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> None:
    """Make what is written to the file (or directory) ``path`` durable (``flags`` with
    ``O_CREAT``: create it empty first, with ``mode``)."""
    fd = os.open(path, flags, mode)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_bytes_limited(path: Path, limit: int) -> bytes:
    """Read a small state file, refusing one larger than ``limit`` bytes."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def read_json_file(path: Path, limit: int) -> Any:
    """Parsed JSON of a small state file; None if missing; StateFileError if unreadable."""
    try:
        data = read_bytes_limited(path, limit)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: {exc}") from exc
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError(f"{path}: {exc}") from exc


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_free_space(directory: Path, needed: int, margin: int = 64 * 1024 * 1024) -> None:
    """Raise DiskFullError unless ``needed`` bytes plus a margin are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed + margin:
        raise DiskFullError(
            f"not enough free space in {directory}: need {needed + margin} bytes, {free} free"
        )
