"""Preparing a run: work dir contents, keys, packages, node configs, starting nodes.

Everything is made through the commands' public contract (``p2pupdate keygen``,
``admit``, config files and flags), as a person would; on ``netns``, the network
namespaces are set up first.
"""

from __future__ import annotations

import random
import subprocess
import time

import blake3
import nacl.signing
import trio

from p2pupdate.errors import P2PUpdateError
from p2pupdate.shell.keyfile import write_secret_key
from p2pupdate.sim.adversary import Adversary
from p2pupdate.sim.app import APP_NAME, app_bytes, app_changed
from p2pupdate.sim.harnessbase import HarnessBase
from p2pupdate.sim.intruder import Intruder
from p2pupdate.sim.netns import NetnsNetwork
from p2pupdate.sim.records import FaultRecord
from p2pupdate.sim.scenario import (
    AdversaryFault,
    IntruderFault,
)
from p2pupdate.sim.topology import bootstrap_peers
from p2pupdate.sim.tracker import EventTail, NodeTrack
from p2pupdate.sim.workdir import NodeSpec, can_connect, free_ports, last_line

__all__ = ["Preparation"]

_READY_TIMEOUT = 60.0
_NETNS_PORT = 7100


class Preparation(HarnessBase):
    """Prepare the work dir and start the nodes, the adversary and the intruder."""

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
            spec = NodeSpec(
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

    def _node_config(self, spec: NodeSpec) -> str:
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

    # -- processes ----------------------------------------------------------------
    def _start_node(self, spec: NodeSpec) -> None:
        track = self.tracks[spec.index]
        env = self.su.node_env() if self.su is not None else self._env
        child = self.sup.spawn(spec.name, spec.argv, log_path=spec.log, env=env, cwd=spec.root)
        self.children[spec.index] = child
        if self.su is not None:
            self.su.on_start(spec.index, child.pid)
        if track.started_at is None:
            track.started_at = time.time()
        track.process = "running"

    async def _wait_ready(self, specs: list[NodeSpec]) -> None:
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
                        f"{last_line(spec.log)} (log: {spec.log})"
                    )
                if not await can_connect(spec.host, spec.port):
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
