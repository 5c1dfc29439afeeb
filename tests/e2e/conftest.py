"""Fixtures for end-to-end tests: real ``p2pupdate`` processes talking TCP on 127.0.0.1.

What is here:

* :func:`run_cli` runs one ``p2pupdate`` command to completion (bounded by a
  timeout) and returns its exit code and output.
* :func:`free_port` finds a port nothing listens on.
* The ``run_node`` fixture starts ``p2pupdate node`` processes, each in its own
  process group, with its log, events file and data dir under ``tmp_path``; it
  waits until the node says it listens and learns the port it got. Every node
  it started is killed (its whole process group, SIGKILL) at teardown, whatever
  the test did.
* :class:`NodeProc` reads a node's events file and waits for events, always
  with a timeout, failing early (with the node's log) if the node died.
* The ``authority`` fixture makes an authority key with ``p2pupdate keygen``.

Nothing here asserts on durations except where a test passes an explicit
bound; waits are bounded so a broken node fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

__all__ = [
    "P2P",
    "Authority",
    "CliResult",
    "NodeProc",
    "StartNode",
    "free_port",
    "make_authority",
    "matches",
    "read_events",
    "run_cli",
    "sigint_as_in_a_terminal",
    "wait_until",
]

# The CLI of the interpreter running the tests (the venv with p2pupdate installed).
P2P = (sys.executable, "-m", "p2pupdate")
# How long a node may take to start listening (imports included) on a busy 2-core box.
START_TIMEOUT = 15.0
# The default bound of an event wait.
EVENT_TIMEOUT = 15.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
# Variables that would change what a node does, unless a test sets them itself.
_ISOLATE = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "P2PUPDATE_FAULT",
    "P2PUPDATE_LISTEN_FD",
)


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _ISOLATE}


@dataclass(frozen=True)
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT at its default action.

    A shell that starts a job in the background (``pytest &``, a script run from
    a non-interactive shell) sets SIGINT to *ignored* for it, and that survives
    ``exec`` into every process the suite starts. ``p2pupdate`` rightly keeps an
    inherited ignore (the convention ``nohup`` and ``&`` rely on), so a Ctrl-C
    test must give its child the disposition a terminal would.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str | Path, timeout: float = 30.0, cwd: Path | None = None) -> CliResult:
    """Run ``p2pupdate ARGS...`` to completion and return what it did."""
    proc = subprocess.run(
        [*P2P, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of an events file (a half-written last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the part after the last newline is not complete yet
    return [json.loads(line) for line in lines if line.strip()]


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float = EVENT_TIMEOUT,
    alive: Sequence[NodeProc] = (),
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s.

    Fails at once, with the node's log, if a node in ``alive`` exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        for node in alive:
            if node.proc.poll() is not None:
                pytest.fail(
                    f"waiting for {what}: node {node.name} exited with {node.proc.returncode}\n"
                    f"{node.log_text()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.name}\n{n.log_text()}" for n in alive)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
        time.sleep(0.05)


def matches(event: dict[str, Any], name: str, fields: dict[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())


@dataclass
class NodeProc:
    """One running ``p2pupdate node`` process and where it keeps things."""

    name: str
    proc: subprocess.Popen[bytes]
    argv: list[str]
    data_dir: Path
    events_path: Path
    log_path: Path
    port: int = 0
    host: str = "127.0.0.1"
    _log_file: Any = field(default=None, repr=False)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Events written so far, optionally only those named ``name`` with these fields."""
        out = read_events(self.events_path)
        if name is None:
            return out
        return [e for e in out if matches(e, name, fields)]

    def wait_event(
        self, name: str, timeout: float = EVENT_TIMEOUT, **fields: Any
    ) -> dict[str, Any]:
        """The first event ``name`` with these fields, waiting up to ``timeout`` s for it."""

        def found() -> dict[str, Any] | None:
            hits = self.events(name, **fields)
            return hits[0] if hits else None

        event: dict[str, Any] = wait_until(
            f"{self.name}: event {name} {fields}", found, timeout=timeout, alive=[self]
        )
        return event

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``signum`` and wait for the exit; (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node {self.name} did not stop within {timeout:g} s\n{self.log_text()}")
        return rc, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL the node's whole process group and reap it (idempotent)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class StartNode(Protocol):
    def __call__(
        self,
        name: str,
        *,
        trust: Sequence[str] = (),
        peers: Sequence[str] = (),
        targets: Sequence[str] = (),
        config: Path | None = None,
        port: int = 0,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> NodeProc: ...


@pytest.fixture
def run_node(tmp_path: Path) -> Iterator[StartNode]:
    """Start ``p2pupdate node`` processes; all of them are killed at teardown.

    ``run_node("n1", trust=[pub], peers=[other.addr], targets=["app/stable=PATH"])``
    starts a node with data dir ``tmp_path/n1``, events ``tmp_path/n1.events``
    and its log in ``tmp_path/n1.log``, listening on 127.0.0.1 (``port=0``: a
    free port, learned from the log); ``env`` adds environment variables. With
    ``wait=False`` it returns at once
    (for nodes expected to fail at start). A second start with the same name
    reuses the data dir and files (a restart).
    """
    nodes: list[NodeProc] = []

    def start(
        name: str,
        *,
        trust: Sequence[str] = (),
        peers: Sequence[str] = (),
        targets: Sequence[str] = (),
        config: Path | None = None,
        port: int = 0,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> NodeProc:
        data_dir = tmp_path / name
        events = tmp_path / f"{name}.events"
        log_path = tmp_path / f"{name}.log"
        argv = [
            *P2P,
            "node",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--events",
            str(events),
        ]
        for key in trust:
            argv += ["--trust", key]
        for peer in peers:
            argv += ["--peer", peer]
        for target in targets:
            argv += ["--target", target]
        if config is not None:
            argv += ["--config", str(config)]
        argv += list(extra)
        # Each start gets a fresh log so the port is read from this run's line.
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed by NodeProc.kill
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
            env={**_clean_environ(), **(env or {})},
        )
        node = NodeProc(name, proc, argv, data_dir, events, log_path, _log_file=log_file)
        nodes.append(node)
        if wait:

            def listening() -> re.Match[str] | None:
                return _LISTENING.search(node.log_text())

            m = wait_until(f"{name} to listen", listening, timeout=START_TIMEOUT, alive=[node])
            node.host, node.port = m.group(1), int(m.group(2))
        return node

    yield start
    for node in nodes:
        node.kill()


@dataclass(frozen=True)
class Authority:
    key: Path
    pubkey: str


def make_authority(path: Path) -> Authority:
    res = run_cli("keygen", "--out", path)
    assert res.rc == 0, res.stderr
    return Authority(path, res.stdout.strip())


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    """A fresh authority key pair (``p2pupdate keygen``); the secret key is mode 0600."""
    return make_authority(tmp_path / "authority.key")
