"""Running health checks and restart commands as whole process groups.

A command is an argument list run without a shell, in its own process group
(``process_group=0``), with the target's directory as cwd and
``P2PUPDATE_CHANNEL`` / ``P2PUPDATE_VERSION`` in its environment. When it runs
out of time (its deadline) or its caller is cancelled (SIGTERM of the node),
the whole group is killed with SIGKILL. A health check's group is also killed
when its leader exits, so nothing it started lingers; a restart command's is
not (``keep_children``), since it may start the service in the background.
Output (stdout and stderr together) is kept up to a small cap for the events:
read from a pipe, or for a restart command from an unlinked temporary file, so
a service it leaves running never blocks us or gets SIGPIPE.

This module decides nothing beyond "exit 0 in time": what a failed check
leads to is :mod:`p2pupdate.core.apply`'s business.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.apply import HEALTH_CHECK_FAILED, HEALTH_TIMEOUT

__all__ = [
    "OUTPUT_LIMIT",
    "CommandResult",
    "Health",
    "default_health_argv",
    "health_check",
    "run_command",
    "run_target_command",
]

OUTPUT_LIMIT = DEFAULT_LIMITS.health_output_limit  # Limits says why


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: ``returncode`` is None when it was killed on timeout
    or could not be started (then ``error`` says why)."""

    argv: tuple[str, ...]
    returncode: int | None
    output: str
    timed_out: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        """Exit code 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out and not self.error

    def describe(self) -> str:
        """One line for an event or a log."""
        if self.error:
            return f"{self.argv[0] if self.argv else '?'}: {self.error}"
        if self.timed_out:
            return "timed out (process group killed)"
        return f"exit code {self.returncode}"


def default_health_argv(path: Path) -> list[str] | None:
    """The default check of docs/applying.md: an executable file is run with ``--version``;
    anything else is checked by its hash alone (None).

    Executable means the x bit *and* a program the kernel can start (a ``#!`` script
    or an ELF binary): a new file target gets mode 0755, and a config file or an
    archive installed that way must not be "run" and rolled back for failing to.
    """
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return None
    if magic.startswith(b"#!") or magic == b"\x7fELF":
        return [str(path), "--version"]
    return None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_capped(stream: trio.abc.ReceiveStream, out: bytearray) -> None:
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        room = OUTPUT_LIMIT - len(out)
        if room > 0:
            out += data[:room]


async def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline: float,
    keep_children: bool = False,
) -> CommandResult:
    """Run ``argv`` in its own process group; kill the group at ``deadline``
    (``trio.current_time()`` clock) and report it as timed out.

    Cancellation of the caller kills the group at once and propagates.
    """
    args = tuple(argv)
    output = bytearray()
    full_env = dict(os.environ)
    full_env.update(env)
    with contextlib.ExitStack() as stack:
        out_file = stack.enter_context(tempfile.TemporaryFile()) if keep_children else None
        try:
            process = await trio.lowlevel.open_process(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if out_file is None else out_file,
                stderr=subprocess.STDOUT,
                cwd=str(cwd),
                env=full_env,
                process_group=0,
            )
        except OSError as exc:
            return CommandResult(args, None, "", error=f"{type(exc).__name__}: {exc}")
        exited = await _supervise(process, output, deadline, kill_after_exit=not keep_children)
        if out_file is not None:
            output += _read_head(out_file)
    text = output.decode("utf-8", "replace")
    if not exited:
        return CommandResult(args, None, text, timed_out=True)
    return CommandResult(args, process.returncode, text)


def _read_head(f: IO[bytes]) -> bytes:
    f.seek(0)
    return f.read(OUTPUT_LIMIT)


async def _supervise(
    process: trio.Process, output: bytearray, deadline: float, *, kill_after_exit: bool
) -> bool:
    """Wait for ``process`` until ``deadline``; True if it exited by itself in time."""
    exited = False
    try:
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                if process.stdout is not None:
                    nursery.start_soon(_read_capped, process.stdout, output)
                await process.wait()
                exited = True
                if kill_after_exit:
                    # The leader is gone; whatever it left running (and holding
                    # our pipe open) goes with its group.
                    _kill_group(process.pid)
    finally:
        if process.returncode is None:
            # Timeout or cancellation: SIGKILL the whole group, then reap the
            # leader (quick after SIGKILL) so no zombie is left.
            _kill_group(process.pid)
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.stdout is not None:
            with trio.CancelScope(shield=True):
                await process.stdout.aclose()
    return exited


@dataclass(frozen=True)
class Health:
    """One health check's outcome, as the events show it."""

    ok: bool
    check: str  # what ran: the argv joined, or "hash" (no check beyond the package hash)
    output: str  # its output, or how it failed and its output
    reason: str  # health_check_failed or health_timeout when not ok, else ""


async def run_target_command(
    argv: Sequence[str],
    *,
    path: Path,
    is_dir: bool,
    env: Mapping[str, str],
    seconds: float,
    keep_children: bool = False,
) -> CommandResult:
    """Run a command for a target: cwd is the target's directory (a directory
    target itself), killed after ``seconds``."""
    return await run_command(
        argv,
        cwd=path if is_dir else path.parent,
        env=env,
        deadline=trio.current_time() + seconds,
        keep_children=keep_children,
    )


async def health_check(
    argv: Sequence[str] | None,
    *,
    path: Path,
    is_dir: bool,
    env: Mapping[str, str],
    seconds: float,
) -> Health:
    """The target's health check, or the default one (docs/applying.md, Applying)."""
    if argv is None and not is_dir:
        argv = default_health_argv(path)
    if argv is None:
        return Health(True, "hash", "", "")
    res = await run_target_command(argv, path=path, is_dir=is_dir, env=env, seconds=seconds)
    shown = " ".join(argv)
    if res.ok:
        return Health(True, shown, res.output, "")
    reason = HEALTH_TIMEOUT if res.timed_out else HEALTH_CHECK_FAILED
    output = f"{res.describe()}: {res.output}" if res.output else res.describe()
    return Health(False, shown, output, reason)
