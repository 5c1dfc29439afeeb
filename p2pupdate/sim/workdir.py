"""The simulation's work dir and small helpers: stale dirs, free ports, node specs.

The work dir holds an owner file with the harness's pid; a harness killed by
SIGKILL leaves its dir behind (its children die with it, see
``p2pupdate.sim.procs``) and the next run removes it (:func:`sweep_stale_workdirs`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from p2pupdate.errors import P2PUpdateError
from p2pupdate.shell.fsutil import pid_alive
from p2pupdate.sim.app import APP_NAME

__all__ = [
    "OWNER_FILE",
    "WORK_PREFIX",
    "NodeSpec",
    "SimInterrupted",
    "can_connect",
    "collapse",
    "free_ports",
    "last_line",
    "sweep_stale_workdirs",
]

_UPLOADED_RE = re.compile(r"uploaded (\d+) bytes")
WORK_PREFIX = "p2pupdate-sim-"
OWNER_FILE = "harness.pid"


class SimInterrupted(Exception):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP)."""


def sweep_stale_workdirs(tmp: Path | None = None) -> list[Path]:
    """Remove work dirs left by harnesses that died without cleaning up (SIGKILL).

    Only directories named like ours that hold an owner file naming a process
    that no longer exists are removed.
    """
    removed = []
    for path in (tmp or Path(tempfile.gettempdir())).glob(f"{WORK_PREFIX}*"):
        try:
            pid = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now (all held until all are found)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NodeSpec:
    index: int
    name: str
    host: str
    port: int
    root: Path
    events: Path
    log: Path
    peers: list[str]
    late: bool
    argv: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def target(self) -> Path:
        return self.root / "app" / APP_NAME


async def can_connect(host: str, port: int) -> bool:
    try:
        with trio.move_on_after(1.0):
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
            return True
    except OSError:
        return False
    return False


def last_line(path: Path) -> str:
    """The last meaningful line of a log (skipping traceback box drawing)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        text = line.strip().lstrip("|+- ").strip()
        if any(ch.isalnum() for ch in text):
            return text[:300]
    return ""


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception to re-raise for a task group's failure (interrupts first)."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    for kind in (KeyboardInterrupt, SimInterrupted, P2PUpdateError):
        for e in leaves:
            if isinstance(e, kind):
                return e
    return group
