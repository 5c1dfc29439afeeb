"""Child processes of a simulation, and the guarantee that none outlives it.

Every child (node, publisher) starts in its own session, so its process
group id is its pid and a signal to the group reaches whatever it spawned
(health checks included) while a Ctrl-C typed at the terminal reaches only the
harness, which then stops the children itself. Three layers make sure nothing
is left behind:

1. the harness stops everything in a ``finally`` (:meth:`Supervisor.stop_all`:
   SIGTERM to each group, a grace period, then SIGKILL);
2. an ``atexit`` hook does the same for any supervisor still holding children
   when the interpreter exits;
3. on Linux each child is started with ``PR_SET_PDEATHSIG = SIGKILL``, so the
   kernel kills it even if the harness itself dies by SIGKILL.

Only processes this module started are ever signalled, by their own id.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

__all__ = ["Child", "Supervisor"]

_PR_SET_PDEATHSIG = 1


def _pdeathsig_hook() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the harness died before prctl took effect
            os._exit(1)

    return hook


@dataclass
class Child:
    """One started process: what it is, its Popen, and where its output goes."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    started: float = field(default_factory=time.time)
    stdout_path: Path | None = None
    # Set once the group was SIGKILLed after the child exited: never signal it again
    # (a free process group id may be reused by someone else's process later).
    group_done: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


def _stop_everything() -> None:
    for sup in list(_live):
        sup.stop_all(grace=1.0)


atexit.register(_stop_everything)


class Supervisor:
    """Starts children in their own process groups and stops every one of them."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        _live.add(self)

    @trio.lowlevel.enable_ki_protection
    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        stdout_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv``; stderr (and stdout, unless ``stdout_path``) go to ``log_path``.

        Protected from KeyboardInterrupt (under trio), so a Ctrl-C cannot land
        between the fork and the bookkeeping that lets the child be stopped.
        """
        files: list[IO[bytes]] = []
        try:
            err: IO[bytes] | int = subprocess.DEVNULL
            if log_path is not None:
                err = open(log_path, "ab")  # noqa: SIM115 - closed below, the child keeps its copy
                files.append(err)
            out: IO[bytes] | int = err
            if stdout_path is not None:
                out = open(stdout_path, "wb")  # noqa: SIM115
                files.append(out)
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_pdeathsig_hook(),
            )
        finally:
            for f in files:
                f.close()
        child = Child(name, list(argv), proc, log_path, stdout_path=stdout_path)
        self.children.append(child)
        return child

    def signal(self, child: Child, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (nothing if it is gone)."""
        if not child.group_done:
            self._signal_group(child.pid, sig)

    def reap(self) -> list[Child]:
        """Children that exited since the last call; their groups are killed at once.

        The group may still hold orphans the child spawned (a health check whose
        node died); Linux keeps a group id from being reused while it has members,
        so killing it right after the exit is observed cannot hit a stranger.
        """
        gone = []
        for c in self.children:
            if not c.group_done and c.proc.poll() is not None:
                self._signal_group(c.pid, signal.SIGKILL)
                c.group_done = True
                gone.append(c)
        return gone

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def kill9(self, child: Child) -> None:
        """SIGKILL the child's group and reap it."""
        self.signal(child, signal.SIGKILL)
        child.proc.wait()
        child.group_done = True

    def stop(self, child: Child, grace: float = 3.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        self.stop_many([child], grace)
        return child.proc.returncode

    def stop_many(self, children: Sequence[Child], grace: float = 3.0) -> None:
        running = [c for c in children if c.proc.poll() is None]
        for c in running:
            self.signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for c in children:
            # Kill the group even of children that exited: orphans (a health check
            # whose node died) stay in the group and must go too.
            self.signal(c, signal.SIGKILL)
        for c in children:
            if c.proc.poll() is None:
                c.proc.wait()
            c.group_done = True

    def stop_all(self, grace: float = 3.0) -> None:
        """Stop every child ever started here; safe to call repeatedly."""
        self.stop_many(self.children, grace)

    def running(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def close(self) -> None:
        self.stop_all()
        _live.discard(self)
