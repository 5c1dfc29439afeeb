"""The harness's state and its plumbing: child environment, commands, signals."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import p2pupdate
from p2pupdate.errors import P2PUpdateError
from p2pupdate.sim.adversary import Adversary
from p2pupdate.sim.intruder import Intruder
from p2pupdate.sim.netns import NetnsNetwork
from p2pupdate.sim.procs import Child, Supervisor
from p2pupdate.sim.records import FaultRecord, PublishRecord, RunRecord
from p2pupdate.sim.scenario import (
    Scenario,
)
from p2pupdate.sim.selfupdate import SelfUpdateRun
from p2pupdate.sim.tracker import EventTail, NodeTrack
from p2pupdate.sim.view import PlainView, View
from p2pupdate.sim.workdir import NodeSpec, SimInterrupted

__all__ = ["HarnessBase"]


class HarnessBase:
    """What one run knows (see :class:`~p2pupdate.sim.harness.Harness`)."""

    def __init__(self, scenario: Scenario, out_dir: Path, view: View | None = None) -> None:
        self.sc = scenario
        self.out = out_dir.absolute()  # children run in their own dirs
        self.started = time.time()
        self.view: View = view or PlainView(self.started)
        self.sup = Supervisor()
        self.rng = random.Random(scenario.seed)
        self.net: NetnsNetwork | None = None
        self.work: Path | None = None
        self.nodes: list[NodeSpec] = []
        self.tracks: list[NodeTrack] = []
        self.tails: list[EventTail] = []
        self.children: dict[int, Child] = {}  # node index -> current process
        self.killed: set[int] = set()  # nodes we killed on purpose (not yet restarted)
        self.addresses: dict[str, str] = {}
        self.packages: dict[str, Path] = {}
        self.digests: dict[str, str] = {}  # blake3 hex of app bytes -> version
        self.pubkey = ""
        self.key_path: Path | None = None
        self.authority_host = "127.0.0.1"
        self.authority_port = 0
        self.publishes: list[PublishRecord] = []
        self.pub_children: list[tuple[PublishRecord, Child]] = []
        self.republish_due: dict[int, float] = {}  # publication index -> when to run again
        self.faults: list[tuple[Any, FaultRecord]] = []
        self.restart_due: dict[int, float] = {}
        self.adversary: Adversary | None = None
        self.intruder: Intruder | None = None
        self.fleet_key: Path | None = None  # the fleet's secret key (scenario fleet = true)
        self.fleet_pub = ""
        self.su: SelfUpdateRun | None = None  # a [self_update] scenario
        self.rec = RunRecord(scenario, self.tracks, self.addresses, started=self.started)
        self._stop_signal: int | None = None
        self._env = self._child_env()

    # -- preparation --------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Children import the same p2pupdate as the harness, installed or not.
        pkg_root = str(Path(p2pupdate.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        return env

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "p2pupdate", *args]

    def _cli(self, *args: str) -> str:
        out = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, env=self._env, check=False
        )
        if out.returncode != 0:
            raise P2PUpdateError(f"p2pupdate {args[0]} failed: {out.stderr.strip()}")
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    def _pids(self) -> dict[int, int | None]:
        """Node index -> pid of its running process (None: not running)."""
        return {i: c.pid if c.alive() else None for i, c in self.children.items()}

    # -- signals --------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            # ValueError: not the main thread, where the caller handles signals.
            with contextlib.suppress(ValueError):
                old[sig] = signal.signal(sig, self._on_signal)
        return old

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise SimInterrupted(signal.Signals(self._stop_signal).name)
