"""Fixtures for self-update tests: real wheelhouses, real venvs, supervised node processes.

* ``releases`` (session): builds wheelhouse archives of this checkout with any
  version (and an optional defect), from a copy of the source tree. The
  dependency wheels are made once per session (``pip wheel``, needs the
  package registry the first time); every release after that builds offline.
* :class:`Supervisor` plays systemd ``Restart=always``: it runs the managed
  install's launcher, and starts it again when the process exits (a re-exec
  keeps the same process, so only real exits count), recording exit codes.
* :class:`PortProbe` connects to a port over and over in a thread and counts
  refused connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.selfupdate.release import build_release, platform_channel

# The e2e fixtures ``authority`` and ``run_node`` (a node run from the test venv: a dev
# install, self-update off) are re-exported for test_off.py.
from tests.e2e.conftest import (  # noqa: F401
    Authority,
    authority,
    free_port,
    make_authority,
    read_events,
    run_cli,
    run_node,
)

__all__ = ["PortProbe", "Releases", "Supervisor", "managed_install", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
CHANNEL = platform_channel("stable")
# Set by a test that wants a node to crash on start, or not even import.
DEFECTS: dict[str, Callable[[Path], None]] = {}


def _crash_on_start(src: Path) -> None:
    p = src / "p2pupdate" / "commands" / "nodecmd.py"
    text = p.read_text()
    marker = "    settings = load_settings(args)\n"
    assert marker in text
    p.write_text(text.replace(marker, "    raise SystemExit(7)  # a bad release\n" + marker, 1))


def _cannot_import(src: Path) -> None:
    p = src / "p2pupdate" / "__init__.py"
    p.write_text(p.read_text() + '\nraise ImportError("a broken release")\n')


DEFECTS["crash"] = _crash_on_start
DEFECTS["noimport"] = _cannot_import


class Releases:
    """Wheelhouse archives of this checkout, built once per (version, defect)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deps = root / "deps"
        self._built: dict[tuple[str, str], Path] = {}
        self._lock = threading.Lock()

    def _deps(self) -> None:
        if self.deps.is_dir():
            return
        tmp = self.root / "deps.tmp"
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
        cmd += ["--no-build-isolation", "-w", str(tmp), str(REPO), "pip"]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        for w in tmp.glob("p2pupdate-*.whl"):
            w.unlink()
        tmp.rename(self.deps)

    def get(self, version: str, defect: str = "") -> Path:
        with self._lock:
            key = (version, defect)
            if key in self._built:
                return self._built[key]
            self._deps()
            src = self.root / f"src-{version}{defect}"
            src.mkdir()
            shutil.copytree(
                REPO / "p2pupdate", src / "p2pupdate", ignore=shutil.ignore_patterns("__pycache__")
            )
            shutil.copy(REPO / "pyproject.toml", src)
            shutil.copy(REPO / "README.md", src)
            init = src / "p2pupdate" / "__init__.py"
            init.write_text(
                init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "{version}"')
            )
            assert f'"{version}"' in init.read_text()
            if defect:
                DEFECTS[defect](src)
            out = self.root / f"p2pupdate-{version}{defect}.tar"
            build_release(out, src, find_links=[self.deps], no_index=True, no_build_isolation=True)
            self._built[key] = out
            return out


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return Releases(tmp_path_factory.mktemp("releases"))


def managed_install(root: Path, archive: Path) -> Path:
    """``p2pupdate self install`` (the test venv's CLI) of ``archive`` into ``root``."""
    res = run_cli("self", "install", "--install-dir", root, "--wheelhouse", archive, timeout=120)
    assert res.rc == 0, res.stderr
    return root / "bin" / "p2pupdate"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Supervisor:
    """Runs ``argv`` again whenever it exits (like systemd Restart=always)."""

    name: str
    argv: list[str]
    log_path: Path
    events_path: Path
    data_dir: Path
    port: int
    env: dict[str, str]
    max_starts: int = 12
    exits: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        env = dict(self.env)
        while not self._stop.is_set() and len(self.pids) < self.max_starts:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                    env=env,
                )
            self.pids.append(self.proc.pid)
            rc = self.proc.wait()
            if self._stop.is_set():
                break
            self.exits.append(rc)
            env.pop("P2PUPDATE_FAULT", None)  # a fault fires once
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with_signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with_signal(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        out = read_events(self.events_path)
        return [
            e
            for e in out
            if (name is None or e.get("event") == name)
            and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, name: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hits = self.events(name, **fields)
            return hits[0] if hits else None

        deadline = time.monotonic() + timeout
        while True:
            hit = found()
            if hit:
                return hit
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name}: no event {name} {fields} in {timeout} s\n{self.log_text()}"
                )
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        res = run_cli("status", "--data-dir", self.data_dir, "--json", timeout=20)
        assert res.rc == 0, res.stderr
        status: dict[str, Any] = json.loads(res.stdout)
        return status

    def running_release(self) -> str | None:
        try:
            res = run_cli("status", "--data-dir", self.data_dir, "--json", timeout=20)
        except subprocess.TimeoutExpired:
            return None
        if res.rc != 0:
            return None
        status = json.loads(res.stdout)
        if not status.get("running"):
            return None
        info = status.get("self_update_info") or {}
        return info.get("running") if isinstance(info, dict) else None


def with_signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


class PortProbe:
    """Connect to 127.0.0.1:port every few ms in a thread; count refusals."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    pass
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                pass  # a reset or timeout is not a refusal
            self._stop.wait(0.01)

    def __enter__(self) -> PortProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Fleet:
    tmp: Path
    authority: Authority
    launcher: Path
    nodes: list[Supervisor] = field(default_factory=list)

    def start(
        self, name: str, *, peers: Sequence[int] = (), env: dict[str, str] | None = None, **kw: Any
    ) -> Supervisor:
        data_dir = self.tmp / name
        config = self.tmp / f"{name}.toml"
        config.write_text(
            'confirm_window = "2s"\nself_update_wait = "40s"\ncheck_interval = "1s"\n'
        )
        port = free_port()
        argv = [str(self.launcher), "node", "--data-dir", str(data_dir)]
        argv += ["--listen", f"127.0.0.1:{port}", "--events", str(self.tmp / f"{name}.events")]
        argv += ["--trust", self.authority.pubkey, "--config", str(config)]
        for p in peers:
            argv += ["--peer", f"127.0.0.1:{p}"]
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("P2PUPDATE_", "NOTIFY_SOCKET", "WATCHDOG"))
        }
        sup = Supervisor(
            name,
            argv,
            self.tmp / f"{name}.log",
            self.tmp / f"{name}.events",
            data_dir,
            port,
            {**base, **(env or {})},
            **kw,
        ).start()
        self.nodes.append(sup)
        return sup

    def publish(self, archive: Path, version: str, peer: Supervisor) -> None:
        res = run_cli(
            "publish",
            "--key",
            self.authority.key,
            "--channel",
            CHANNEL,
            "--version",
            version,
            "--file",
            archive,
            "--peer",
            f"127.0.0.1:{peer.port}",
            "--timeout",
            "60",
            timeout=90,
        )
        assert res.rc == 0, res.stderr

    def history(self) -> list[str]:
        try:
            return (self.launcher.parent.parent / "state" / "history.log").read_text().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[[Path], Fleet]]:
    fleets: list[Fleet] = []
    key = make_authority(tmp_path / "authority.key")

    def make(launcher: Path) -> Fleet:
        f = Fleet(tmp_path, key, launcher)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        for n in f.nodes:
            n.stop()


def listening(node: Supervisor) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=1):
            return True
    except OSError:
        return False
