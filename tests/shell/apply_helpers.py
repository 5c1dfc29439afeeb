"""Helpers for the applicator tests: generated target programs, packages, event capture.

The "programs" are small POSIX shell scripts that print their version, so a
health check is a real subprocess that starts in milliseconds.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

__all__ = [
    "BIG_PADDING",
    "Events",
    "alive",
    "app_script",
    "dead_soon",
    "make_package",
    "make_tar",
    "read_pid",
    "wait_for_file",
]

# 1.5 MiB of padding makes copies span more than one 1 MiB block, so the
# mid-copy fault points see a half-written file.
BIG_PADDING = 1536 * 1024


def app_script(version: str, behaviour: str = "good", *, pad: int = 0) -> bytes:
    """A target program that prints ``app VERSION`` for ``--version``.

    ``behaviour``: ``good`` exits 0; ``bad`` exits 1; ``hang`` records its pid
    (and a child's) in ``hang.pid`` / ``child.pid`` in its cwd, then sleeps;
    ``crash_after_restart`` fails once a ``restarted`` file exists in its cwd.
    """
    body = {
        "good": f'echo "app {version}"\nexit 0\n',
        "bad": f'echo "app {version}: cannot load libfoo" >&2\nexit 1\n',
        "hang": "echo $$ > hang.pid\nsleep 1000 &\necho $! > child.pid\nwait\n",
        "crash_after_restart": (
            'if [ -e restarted ]; then echo "segfault" >&2; exit 139; fi\n'
            f'echo "app {version}"\nexit 0\n'
        ),
    }[behaviour]
    script = f"#!/bin/sh\n{body}".encode()
    if pad:
        script += b"# " + b"p" * pad + b"\n"
    return script


def make_package(directory: Path, name: str, content: bytes) -> tuple[Path, bytes]:
    """Write a package file; return its path and its id (BLAKE3 of the whole file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    return path, blake3.blake3(content).digest()


def make_tar(
    files: dict[str, bytes],
    *,
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
    devices: list[str] | None = None,
    mode: str = "w",
) -> bytes:
    """A tar archive in memory: regular files (0755), symlinks, hard links, char devices."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, dest in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = dest
            tar.addfile(info)
        for name, dest in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = dest
            tar.addfile(info)
        for name in devices or []:
            info = tarfile.TarInfo(name)
            info.type = tarfile.CHRTYPE
            info.devmajor, info.devminor = 1, 3
            tar.addfile(info)
    return buf.getvalue()


@dataclass
class Events:
    """An ``emit`` callback that records (event, fields) pairs."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.items.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.items]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.items if event == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.of(name)
        assert len(found) == 1, (name, self.items)
        return found[0]

    def clear(self) -> None:
        self.items.clear()


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 of a container may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def dead_soon(pid: int, timeout: float = 2.0) -> bool:
    """True once ``pid`` is gone (SIGKILL is delivered asynchronously), False on timeout."""
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def wait_for_file(path: Path, timeout: float = 5.0) -> None:
    """Block (in a test process, not in trio) until ``path`` exists."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(str(path))
        time.sleep(0.01)
