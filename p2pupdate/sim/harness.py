"""Running a scenario: real ``p2pupdate node`` and ``publish`` processes, faults, the end.

:class:`Harness` drives one run through the commands' public contract only
(command-line flags, config file keys, the ``--events`` JSON-lines files, the
exit codes and the line ``publish`` prints), never through internal APIs:

1. make a temporary work dir, an authority key (``p2pupdate keygen``), the
   target app of each version (``p2pupdate.sim.app``), one data dir, config
   file and installed v1 app per node; on ``netns``, the namespaces;
2. start the nodes on free ports (127.0.0.1, or one namespace each) with the
   bootstrap peers of the scenario's topology, and wait until each listens;
3. publish each version at its time; follow every node's events; inject the
   faults (kill -9 at a progress, restart later; late joiners; the
   adversarial peer); refresh the view;
4. stop when every node has settled on the last publication (applied, or
   rolled back and quarantined), on timeout, or on Ctrl-C/SIGTERM/SIGHUP;
5. always, in ``finally``: stop every process (process groups, SIGTERM then
   SIGKILL), tear the namespaces down, read each target's final bytes, remove
   the work dir (the caller then writes report.json and timeline.png).

The work dir holds an owner file with the harness's pid; a harness killed by
SIGKILL leaves its dir behind (its children die with it, see
``p2pupdate.sim.procs``) and the next run removes it.

What the figures mean is ``p2pupdate.sim.report``; the display is
``p2pupdate.sim.view``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import blake3
import nacl.signing
import trio

import p2pupdate
from p2pupdate.errors import P2PUpdateError
from p2pupdate.shell.fsutil import pid_alive
from p2pupdate.shell.keyfile import write_secret_key
from p2pupdate.sim.adversary import Adversary
from p2pupdate.sim.app import APP_NAME, app_bytes, app_changed
from p2pupdate.sim.intruder import Intruder
from p2pupdate.sim.netns import NetnsNetwork
from p2pupdate.sim.procs import Child, Supervisor
from p2pupdate.sim.report import FaultRecord, PublishRecord, RunRecord
from p2pupdate.sim.scenario import (
    AdversaryFault,
    BadReleaseFault,
    IntruderFault,
    Kill9Fault,
    LateJoinFault,
    PublisherKillFault,
    Scenario,
)
from p2pupdate.sim.selfupdate import SelfUpdateRun
from p2pupdate.sim.topology import authority_targets, bootstrap_peers
from p2pupdate.sim.tracker import EventTail, NodeTrack
from p2pupdate.sim.view import PlainView, View

__all__ = ["Harness", "SimInterrupted", "free_ports", "sweep_stale_workdirs"]

_TICK = 0.1
_REFRESH = 0.25
# How long a settled run waits for publishers still running to exit on their own (they
# exit once enough replicas are confirmed; on a loaded machine that can lag the nodes).
# Only a publisher that is stuck past this is stopped, and the report shows its exit code.
_PUBLISH_GRACE = 60.0
_READY_TIMEOUT = 60.0
_NETNS_PORT = 7100
_UPLOADED_RE = re.compile(r"uploaded (\d+) bytes")
_WORK_PREFIX = "p2pupdate-sim-"
_OWNER_FILE = "harness.pid"


class SimInterrupted(Exception):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP)."""


def sweep_stale_workdirs(tmp: Path | None = None) -> list[Path]:
    """Remove work dirs left by harnesses that died without cleaning up (SIGKILL).

    Only directories named like ours that hold an owner file naming a process
    that no longer exists are removed.
    """
    removed = []
    for path in (tmp or Path(tempfile.gettempdir())).glob(f"{_WORK_PREFIX}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text().strip())
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
class _NodeSpec:
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


class Harness:
    """One run of one scenario; :meth:`run` returns the finished :class:`RunRecord`."""

    def __init__(self, scenario: Scenario, out_dir: Path, view: View | None = None) -> None:
        self.sc = scenario
        self.out = out_dir.absolute()  # children run in their own dirs
        self.started = time.time()
        self.view: View = view or PlainView(self.started)
        self.sup = Supervisor()
        self.rng = random.Random(scenario.seed)
        self.net: NetnsNetwork | None = None
        self.work: Path | None = None
        self.nodes: list[_NodeSpec] = []
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

    # -- the whole run ------------------------------------------------------------
    async def run(self) -> RunRecord:
        """Run the scenario to its end; cleanup happens whatever goes wrong."""
        old = self._install_signal_handlers()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "logs").mkdir(exist_ok=True)
            (self.out / "events").mkdir(exist_ok=True)
            sweep_stale_workdirs()
            self.work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX))
            (self.work / _OWNER_FILE).write_text(f"{os.getpid()}\n")
            # Children's own temporary files (the publisher's store, ...) go inside
            # the work dir, so they go with it even if a child is killed.
            (self.work / "tmp").mkdir()
            self._env["TMPDIR"] = str(self.work / "tmp")
            self.view.start()
            try:
                await self._run_inner()
            except BaseExceptionGroup as group:
                raise _collapse(group) from None
        except (KeyboardInterrupt, SimInterrupted):
            self.rec.interrupted = True
            self.view.note("interrupted: stopping every process")
        except P2PUpdateError as exc:
            self.rec.error = str(exc)
            raise
        finally:
            try:
                self._finish()
            finally:
                self.view.stop()
                self._restore_signal_handlers(old)
        return self.rec

    async def _run_inner(self) -> None:
        if self.sc.self_update is not None:
            assert self.work is not None
            logs = self.out / "logs"
            self.su = SelfUpdateRun(self.sc, self.work, self.sup, self._env, logs, self._check_stop)
            self.packages = await self.su.prepare()
            size = self.packages[self.sc.final_publication.version].stat().st_size
            self.rec.scenario = replace(self.sc, package_size=size)
        self._prepare()
        for spec in self.nodes:
            if not spec.late:
                self._start_node(spec)
        await self._wait_ready([s for s in self.nodes if not s.late])
        if self.su is not None:
            await self.su.wait_registered([s.index for s in self.nodes])
        self.rec.ready = time.time()
        self.view.note(f"{sum(not s.late for s in self.nodes)} nodes up")
        async with trio.open_nursery() as nursery:
            adv = self.sc.faults_of(AdversaryFault)
            if adv:
                await self._start_adversary(nursery, adv[0])
            intruders = self.sc.faults_of(IntruderFault)
            if intruders:
                await self._start_intruder(nursery, intruders[0])
            await self._loop()
            nursery.cancel_scope.cancel()

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

    def _prepare(self) -> None:
        sc = self.sc
        assert self.work is not None
        self._check_stop()
        # Network: addresses for the authority and each node.
        if sc.network == "netns":
            rate = sc.upload_limit
            rates = [rate] + [sc.node_upload_limit(i) for i in range(sc.nodes)]
            self.net = NetnsNetwork(slots=sc.nodes + 1, rates=rates)
            self.net.setup(self.rng)
            self.rec.network = {
                "kind": "netns",
                "prefix": self.net.prefix,
                "subnet": f"{self.net.subnet}.0/24",
                "shaping": f"tc tbf {rate} bytes/s per slot" if rate else "none",
            }
            self.authority_host, self.authority_port = self.net.address(0), _NETNS_PORT
            hosts = [(self.net.address(i + 1), _NETNS_PORT) for i in range(sc.nodes)]
        else:
            ports = free_ports(sc.nodes + 1)
            self.authority_port = ports[0]
            hosts = [("127.0.0.1", p) for p in ports[1:]]
            self.rec.network = {"kind": "loopback", "shaping": "node limiters"}
        self.addresses[f"{self.authority_host}:{self.authority_port}"] = "authority"
        # Authority key, through the CLI like a person would.
        self.key_path = self.work / "authority.key"
        out = subprocess.run(
            self._cmd("keygen", "--out", str(self.key_path)),
            capture_output=True, text=True, env=self._env, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise P2PUpdateError(f"p2pupdate keygen failed: {out.stderr.strip()}")
        self.pubkey = out.stdout.strip().splitlines()[-1]
        # Packages: the installed version and each publication.
        pkg_dir = self.work / "packages"
        pkg_dir.mkdir()
        versions = [(sc.initial_version, True, None)] + [
            (p.version, p.healthy, p.changed) for p in sc.publications
        ]
        data = b""
        for version, healthy, changed in versions if self.su is None else []:
            if changed is None:
                data = app_bytes(version, healthy, sc.package_size)
            else:  # a small change: most chunks as in the version before
                data = app_changed(data, version, healthy, changed)
            path = pkg_dir / f"{APP_NAME}-{version}"
            path.write_bytes(data)
            path.chmod(0o755)
            self.packages[version] = path
            self.digests[blake3.blake3(data).hexdigest()] = version
        # Nodes.
        late = self.sc.late_nodes
        edges = bootstrap_peers(sc.topology, sc.nodes, sc.degree, self.rng, late)
        initial = self.packages[sc.initial_version].read_bytes()
        for i, (host, port) in enumerate(hosts):
            name = f"n{i:02d}"
            root = self.work / name
            spec = _NodeSpec(
                index=i,
                name=name,
                host=host,
                port=port,
                root=root,
                events=self.out / "events" / f"{name}.jsonl",
                log=self.out / "logs" / f"{name}.log",
                peers=[],
                late=i in late,
            )
            self.nodes.append(spec)
            self.addresses[spec.address] = name
        for spec in self.nodes:
            spec.peers = [self.nodes[j].address for j in edges[spec.index]]
            spec.target.parent.mkdir(parents=True)
            spec.data_dir.mkdir(parents=True)
            if any(p.stages for p in sc.publications):
                # Node keys from the scenario's seed: which nodes a stage takes in (a
                # hash of node id and version) is then the same on every run.
                seeded = random.Random(sc.seed * 100_003 + spec.index).randbytes(32)
                write_secret_key(spec.data_dir / "node.key", nacl.signing.SigningKey(seeded))
            spec.target.write_bytes(initial)
            spec.target.chmod(0o755)
            spec.events.unlink(missing_ok=True)
            config = spec.root / "node.toml"
            config.write_text(self._node_config(spec))
            argv = (self.su.node_argv if self.su is not None else self._cmd)(
                "node",
                "--data-dir", str(spec.data_dir),
                "--listen", spec.address,
                "--trust", self.pubkey,
                "--events", str(spec.events),
                "--config", str(config),
            )  # fmt: skip
            for peer in spec.peers:
                argv += ["--peer", peer]
            if sc.node_upload_limit(spec.index) and sc.network == "loopback":
                argv += ["--upload-limit", str(sc.node_upload_limit(spec.index))]
            spec.argv = self.net.wrap(spec.index + 1, argv) if self.net else argv
            if self.su is not None:
                self.su.add_node(spec.index, spec.data_dir)
            track = NodeTrack(spec.index, spec.name, spec.address, version=sc.initial_version)
            self.tracks.append(track)
            self.tails.append(EventTail(spec.events))
        if sc.fleet:
            self._prepare_fleet()
        for fault in sc.faults:
            node = getattr(fault, "node", None)
            self.faults.append((fault, FaultRecord(fault.kind, node=node)))
        self.rec.faults = [r for _, r in self.faults]

    def _node_config(self, spec: _NodeSpec) -> str:
        sc = self.sc
        lines = [
            "# written by p2pupdate sim",
            f"check_interval = {sc.check_interval!r}",
            'log_level = "info"',
        ]
        if sc.topology == "star":
            # Fetch from the authority only: once it is connected, nobody else gets in,
            # and the node dials nobody the authority's peer exchange tells it about.
            lines += ["max_connections = 1", "target_connections = 1"]
        if self.su is not None:  # no app target: the publications are p2pupdate itself
            return "\n".join([*lines, *self.su.config_lines(), ""])
        lines += [
            "",
            f'[targets."{sc.channel}"]',
            f'path = "{spec.target}"',
            f'version = "{sc.initial_version}"',
            "",
        ]
        return "\n".join(lines)

    # -- processes ----------------------------------------------------------------
    def _start_node(self, spec: _NodeSpec) -> None:
        track = self.tracks[spec.index]
        env = self.su.node_env() if self.su is not None else self._env
        child = self.sup.spawn(spec.name, spec.argv, log_path=spec.log, env=env, cwd=spec.root)
        self.children[spec.index] = child
        if self.su is not None:
            self.su.on_start(spec.index, child.pid)
        if track.started_at is None:
            track.started_at = time.time()
        track.process = "running"

    async def _wait_ready(self, specs: list[_NodeSpec]) -> None:
        """Until each node accepts TCP connections (or exits: an error to report)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        pending = list(specs)
        while pending:
            self._check_stop()
            still = []
            for spec in pending:
                child = self.children[spec.index]
                if not child.alive():
                    raise P2PUpdateError(
                        f"node {spec.name} exited with code {child.returncode} at start: "
                        f"{_last_line(spec.log)} (log: {spec.log})"
                    )
                if not await _can_connect(spec.host, spec.port):
                    still.append(spec)
            pending = still
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise P2PUpdateError(f"nodes not listening after {_READY_TIMEOUT:.0f}s: {names}")
            if pending:
                await trio.sleep(0.1)

    async def _start_adversary(self, nursery: trio.Nursery, fault: AdversaryFault) -> None:
        host = self.net.bridge_address if self.net else "127.0.0.1"
        targets = [(s.host, s.port) for s in self.nodes]
        self.adversary = Adversary(fault.mode, host, targets, rng=random.Random(self.sc.seed + 1))
        await nursery.start(self.adversary.run)
        self.addresses[self.adversary.address] = "adversary"
        for f, rec in self.faults:
            if f is fault:
                rec.fired, rec.fired_at = True, time.time()
                rec.detail = f"{fault.mode} at {self.adversary.address}"
        self.view.note(f"adversary ({fault.mode}) listening on {self.adversary.address}")

    async def _start_intruder(self, nursery: trio.Nursery, fault: IntruderFault) -> None:
        self.intruder = Intruder([(s.host, s.port) for s in self.nodes], foreign=fault.foreign)
        await nursery.start(self.intruder.run)
        for f, rec in self.faults:
            if f is fault:
                rec.fired, rec.fired_at = True, time.time()
                rec.detail = "no admission" if not fault.foreign else "another fleet's admission"
        self.view.note("intruder (a node key, no admission to this fleet) dials every node")

    def _prepare_fleet(self) -> None:
        """A fleet key and one admission per node, made through the CLI like a person
        would: the node keys are made first (keygen into each data dir)."""
        assert self.work is not None
        self.fleet_key = self.work / "fleet.key"
        self.fleet_pub = self._cli("keygen", "--out", str(self.fleet_key))
        ids = [self._cli("keygen", "--out", str(s.data_dir / "node.key")) for s in self.nodes]
        (self.work / "node-ids").write_text("\n".join(ids) + "\n")
        certs = self.work / "certs"
        certs.mkdir()
        self._cli(
            "admit", "--fleet-key", str(self.fleet_key),
            "--nodes-file", str(self.work / "node-ids"), "--out", str(certs),
        )  # fmt: skip
        for spec, node_id in zip(self.nodes, ids, strict=True):
            cert = certs / f"{node_id.removeprefix('ed25519:')}.cert"
            spec.argv += ["--fleet", self.fleet_pub, "--admission", str(cert)]

    def _cli(self, *args: str) -> str:
        out = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, env=self._env, check=False
        )
        if out.returncode != 0:
            raise P2PUpdateError(f"p2pupdate {args[0]} failed: {out.stderr.strip()}")
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    def _publish(self, index: int) -> None:
        sc = self.sc
        pub = sc.publications[index]
        runs = sum(r.version == pub.version for r in self.publishes)
        name = f"publish-{pub.version}" + (f"-{runs + 1}" if runs else "")
        assert self.key_path is not None
        targets = authority_targets(sc.topology, sc.nodes, sc.authority_peers, sc.late_nodes)
        star = sc.topology == "star"
        argv = self._cmd(
            "publish",
            "--key", str(self.key_path),
            "--channel", sc.channel,
            "--version", pub.version,
            "--file", str(self.packages[pub.version]),
            "--replicas", str(min(sc.replicas, len(targets) if star else sc.nodes)),
            "--timeout", str(sc.timeout),
            "--listen", f"{self.authority_host}:{self.authority_port}",
        )  # fmt: skip
        for j in targets:
            argv += ["--peer", self.nodes[j].address]
        if pub.stages:
            argv += ["--stages", pub.stages]
        if pub.abort_after:
            argv += ["--abort-after", pub.abort_after]
        if sc.upload_limit and sc.network == "loopback":
            argv += ["--upload-limit", str(sc.upload_limit)]
        if self.fleet_key is not None:
            argv += ["--fleet-key", str(self.fleet_key)]
        if self.net is not None:
            argv = self.net.wrap(0, argv)
        record = PublishRecord(
            pub.version, pub.healthy, time.time(),
            address=f"{self.authority_host}:{self.authority_port}",
        )  # fmt: skip
        child = self.sup.spawn(
            name,
            argv,
            log_path=self.out / "logs" / f"{name}.log",
            stdout_path=self.out / "logs" / f"{name}.out",
            env=self._env,
            cwd=self.work,
        )
        record.log_name = name
        self.publishes.append(record)
        self.pub_children.append((record, child))
        for fault, rec in self.faults:
            if isinstance(fault, BadReleaseFault) and fault.version == pub.version:
                rec.fired, rec.fired_at = True, record.started
                rec.detail = f"{pub.version} fails its health check"
                if self.su is not None:
                    rec.detail = f"{pub.version} is a bad release ({self.su.spec.defect})"
        self.rec.publishes = self.publishes
        peers = ", ".join(self.nodes[j].name for j in targets)
        again = " again (the same command)" if runs else ""
        self.view.note(
            f"publishing {pub.version}{again}{'' if pub.healthy else ' (bad release)'} to {peers}"
        )

    def _publish_done(self, record: PublishRecord, child: Child) -> None:
        record.ended = time.time()
        record.exit_code = child.returncode
        if child.stdout_path is not None and child.stdout_path.exists():
            record.stdout = child.stdout_path.read_text(errors="replace").strip()
            m = _UPLOADED_RE.search(record.stdout)
            if m:
                record.bytes_uploaded = int(m.group(1))
        if record.exit_code == 0:
            self.view.note(f"publish {record.version} done: {record.stdout}")
        elif record.killed:
            self.view.note(f"publish {record.version} was killed (kill -9)")
        else:
            log = self.out / "logs" / f"{record.log_name}.log"
            self.view.note(
                f"publish {record.version} exited with {record.exit_code}: {_last_line(log)}"
            )

    # -- the main loop ------------------------------------------------------------
    async def _loop(self) -> None:
        sc = self.sc
        last_refresh = 0.0
        last_status = 0.0
        published = 0
        settled_at: float | None = None
        while True:
            self._check_stop()
            now = time.time()
            self._poll_events()
            self._reap()
            while (
                published < len(sc.publications)
                and now >= self.rec.ready + sc.publications[published].at
            ):
                self._publish(published)
                published += 1
            self._late_joins(now, published)
            for i, due in list(self.republish_due.items()):
                if now >= due:
                    del self.republish_due[i]
                    self._publish(i)
                    self._publisher_restarted(i)
            for i, due in list(self.restart_due.items()):
                if now >= due:
                    del self.restart_due[i]
                    self._restart(i)
            if now - last_status >= 1.0:
                last_status = now
                self._read_peer_counts()
            if now - last_refresh >= _REFRESH:
                last_refresh = now
                self.view.refresh(self.tracks, self.addresses, self._header(now))
            if published == len(sc.publications) and self._settled():
                if settled_at is None:
                    settled_at = now
                if self._publishers_running() and now - settled_at < _PUBLISH_GRACE:
                    await trio.sleep(_TICK)
                    continue
                # A moment for trailing events (quarantined after rolled_back, ...).
                await trio.sleep(0.3)
                self._poll_events()
                break
            failed = self._failed_publication(now)
            if failed:
                self.rec.error = failed
                self.view.note(failed)
                break
            if now - self.rec.ready > sc.timeout:
                self.rec.timed_out = True
                self.view.note(f"timed out after {sc.timeout:.0f}s")
                break
            await trio.sleep(_TICK)

    def _publishers_running(self) -> bool:
        """Whether a publish process has not exited yet (its exit code is not known)."""
        return any(record.ended is None and child.alive() for record, child in self.pub_children)

    def _failed_publication(self, now: float) -> str:
        """Why the run cannot go on: a publish that failed before anyone heard of it."""
        for record in self.publishes:
            if record.exit_code in (None, 0) or record.ended is None or now < record.ended + 3.0:
                continue
            if record.killed:
                continue
            if not any(t.first("announcement_received", record.version) for t in self.tracks):
                log = self.out / "logs" / f"{record.log_name}.log"
                return (
                    f"publish {record.version} failed (exit {record.exit_code}) and no node "
                    f"received its announcement: {_last_line(log)}"
                )
        return ""

    def _header(self, now: float) -> str:
        sc = self.sc
        done = sum(1 for t in self.tracks if t.settled(sc.final_publication.version))
        return (
            f"p2pupdate sim {sc.name}: {sc.nodes} nodes, {sc.network}, "
            f"{done}/{sc.nodes} settled, {now - self.started:.1f}s"
        )

    def _poll_events(self) -> None:
        for spec, tail, track in zip(self.nodes, self.tails, self.tracks, strict=True):
            for ev in tail.poll():
                track.feed(ev)
                if self.su is not None:
                    self.su.feed(track, ev)
                self.view.event(track, ev)
                if ev.get("event") == "download_progress":
                    self._maybe_kill(spec, track)
                    self._maybe_kill_publisher()

    def _maybe_kill_publisher(self) -> None:
        """kill_publisher: SIGKILL a running publish once the furthest node is far enough."""
        furthest = max((t.progress for t in self.tracks), default=0.0)
        for fault, rec in self.faults:
            if not isinstance(fault, PublisherKillFault) or rec.fired:
                continue
            if not furthest >= fault.at_progress or furthest >= 1.0:
                continue
            running = [
                (r, c) for r, c in self.pub_children if r.version == fault.version and c.alive()
            ]
            if not running:
                continue
            record, child = running[-1]
            self.sup.kill9(child)
            record.killed = True
            self._publish_done(record, child)  # reaped by kill9: noted now, not at the end
            rec.fired, rec.fired_at, rec.progress_at_kill = True, time.time(), furthest
            rec.detail = f"publish {fault.version} killed at {100 * furthest:.0f}% (furthest node)"
            index = next(
                i for i, p in enumerate(self.sc.publications) if p.version == fault.version
            )
            self.republish_due[index] = time.time() + fault.restart_after
            self.view.note(
                f"kill -9 publish {fault.version} with the furthest node at "
                f"{100 * furthest:.0f}%; the same publish again in {fault.restart_after:g}s"
            )

    def _publisher_restarted(self, index: int) -> None:
        version = self.sc.publications[index].version
        for fault, rec in self.faults:
            if isinstance(fault, PublisherKillFault) and fault.version == version:
                rec.restarted_at = time.time()
                rec.detail += "; published again"

    def _maybe_kill(self, spec: _NodeSpec, track: NodeTrack) -> None:
        for fault, rec in self.faults:
            if (
                isinstance(fault, Kill9Fault)
                and fault.node == spec.index
                and not rec.fired
                and track.progress >= fault.at_progress
                and track.progress < 1.0
            ):
                child = self.children.get(spec.index)
                if child is None or not child.alive():
                    return
                self.sup.kill9(child)
                self.killed.add(spec.index)
                rec.fired, rec.fired_at, rec.progress_at_kill = True, time.time(), track.progress
                rec.detail = f"killed at {100 * track.progress:.0f}%"
                track.process = "killed"
                self.restart_due[spec.index] = time.time() + fault.restart_after
                self.view.note(
                    f"kill -9 {spec.name} at {100 * track.progress:.0f}%; "
                    f"restart in {fault.restart_after:g}s"
                )

    def _restart(self, index: int) -> None:
        spec = self.nodes[index]
        track = self.tracks[index]
        self.killed.discard(index)
        self._start_node(spec)
        track.restarts += 1
        for fault, rec in self.faults:
            if isinstance(fault, Kill9Fault) and fault.node == index:
                rec.restarted_at = time.time()
                rec.detail += "; restarted"
        self.view.note(f"restarted {spec.name}")

    def _late_joins(self, now: float, published: int) -> None:
        if not self.publishes:
            return
        first_pub = self.publishes[0].started
        for fault, rec in self.faults:
            if not isinstance(fault, LateJoinFault) or rec.fired:
                continue
            if fault.at is not None:
                due = now >= first_pub + fault.at
            else:
                final = self.sc.final_publication.version
                others = [
                    t
                    for t in self.tracks
                    if t.index not in self.sc.late_nodes or t.started_at is not None
                ]
                due = published == len(self.sc.publications) and all(
                    t.settled(final) for t in others
                )
            if due:
                spec = self.nodes[fault.node]
                self._start_node(spec)
                rec.fired, rec.fired_at = True, now
                rec.detail = f"joined {now - first_pub:.1f}s after the first publication"
                self.view.note(f"late joiner {spec.name} starts")

    def _reap(self) -> None:
        for child in self.sup.reap():
            for record, pchild in self.pub_children:
                if pchild is child:
                    self._publish_done(record, child)
            for index, nchild in self.children.items():
                if nchild is child and index not in self.killed:
                    track = self.tracks[index]
                    track.process = "exited"
                    track.exit_code = child.returncode
                    self.view.note(
                        f"{track.name} exited unexpectedly with code {child.returncode}: "
                        f"{_last_line(self.nodes[index].log)}"
                    )
                    delay = self.su.on_exit(index, child.returncode) if self.su else None
                    if delay is not None:  # a supervisor (Restart=always) starts it again
                        self.restart_due[index] = time.time() + delay
                    elif self.su is not None:
                        self.view.note(f"{track.name}: too many restarts, not started again")

    def _settled(self) -> bool:
        """Every node settled on the last publication, every fault done."""
        if self.su is not None:
            return not self.restart_due and self.su.settled(self.tracks, self._pids())
        if any(not rec.fired for _, rec in self.faults):
            # A kill that cannot fire any more (the node finished first) does not hold us.
            for fault, rec in self.faults:
                if rec.fired:
                    continue
                if isinstance(fault, Kill9Fault):
                    track = self.tracks[fault.node]
                    if track.settled(self.sc.final_publication.version):
                        continue
                if isinstance(fault, PublisherKillFault):
                    final = self.sc.final_publication.version
                    if all(t.settled(final) for t in self.tracks):
                        continue
                return False
        if self.restart_due or self.republish_due:
            return False
        final = self.sc.final_publication.version
        for spec, track in zip(self.nodes, self.tracks, strict=True):
            child = self.children.get(spec.index)
            if child is None:
                return False
            if not child.alive() and spec.index not in self.killed:
                continue  # crashed: it will not settle; the report says so
            if not track.settled(final):
                return False
        return True

    def _pids(self) -> dict[int, int | None]:
        """Node index -> pid of its running process (None: not running)."""
        return {i: c.pid if c.alive() else None for i, c in self.children.items()}

    def _read_peer_counts(self) -> None:
        """Peers column: from peer events when the node emits them, else its status file."""
        for spec, track in zip(self.nodes, self.tracks, strict=True):
            if track.connected or track.process != "running":
                continue
            path = spec.data_dir / "status.json"
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            peers = data.get("peers") if isinstance(data, dict) else None
            if isinstance(peers, list):
                track.peers = len(peers)

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

    # -- the end ----------------------------------------------------------------------
    @trio.lowlevel.enable_ki_protection
    def _finish(self) -> None:
        """Stop everything, record the final state, clean up. Never raises past cleanup."""
        rec = self.rec
        try:
            for spec in self.nodes:
                child = self.children.get(spec.index)
                if child is not None:
                    rec.alive_at_end[spec.name] = child.alive()
            if self.adversary is not None:
                rec.adversary = self.adversary.stats.as_dict()
            if self.intruder is not None:
                rec.intruder = self.intruder.stats.as_dict()
            if self.su is not None:  # before the nodes stop: they deregister
                pids = self._pids()
                rec.self_update = self.su.snapshot([s.name for s in self.nodes], pids)
                for spec in self.nodes:
                    rec.final_versions[spec.name] = self.su.running_release(
                        spec.index, pids.get(spec.index)
                    )
        finally:
            self.sup.close()
            try:
                if self.net is not None:
                    self.net.teardown()
            finally:
                try:
                    for record, child in self.pub_children:
                        if record.ended is None:
                            self._publish_done(record, child)
                    self._poll_events()
                    for spec, track in zip(self.nodes, self.tracks, strict=True):
                        if self.su is None:
                            rec.final_versions[spec.name] = self._final_version(spec)
                        if track.process == "running":
                            track.process = "stopped"
                    self.view.refresh(self.tracks, self.addresses, self._header(time.time()))
                finally:
                    if self.work is not None:
                        shutil.rmtree(self.work, ignore_errors=True)
                    rec.ended = time.time()

    def _final_version(self, spec: _NodeSpec) -> str:
        try:
            data = spec.target.read_bytes()
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "unreadable"
        return self.digests.get(blake3.blake3(data).hexdigest(), "unknown")


async def _can_connect(host: str, port: int) -> bool:
    try:
        with trio.move_on_after(1.0):
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
            return True
    except OSError:
        return False
    return False


def _last_line(path: Path) -> str:
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


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
