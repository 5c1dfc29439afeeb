"""The virtual run itself: simulated nodes, the publisher, churn, late joiners.

See :mod:`p2pupdate.sim.virtual` for what a virtual run is; this module builds
the nodes (:func:`build_node`, the one place a simulated node is put together)
and runs them (:class:`VirtualRun`); :mod:`.virtualreport` reads the result.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trio.testing

from p2pupdate.core.announcement import AnnouncementBody, sign_announcement
from p2pupdate.core.chunks import CHUNK_SIZE, ChunkHasher
from p2pupdate.core.netmodel import (
    ChurnEvent,
    LinkProfile,
    assign_profiles,
    churn_schedule,
)
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.agent import Agent, AgentOptions
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.transfer.memstore import ContentMemo, MemoryStore
from p2pupdate.shell.transfer.swarm import Swarm, SwarmOptions
from p2pupdate.sim.scenario import Scenario, VirtualSpec
from p2pupdate.sim.topology import is_connected
from p2pupdate.sim.virtualnet import VirtualNetwork

__all__ = [
    "AUTHORITY",
    "PORT",
    "WALL_BASE",
    "VNode",
    "VirtualRun",
    "build_node",
    "host_of",
    "make_package",
    "seed_trio_scheduler",
]

log = logging.getLogger("p2pupdate.sim.virtual")

PORT = 7000
# The nodes' clock for announcement expiry: a fixed date plus virtual time, so a run does
# not depend on when it was started.
WALL_BASE = 1_800_000_000.0
AUTHORITY = "authority"


def host_of(i: int) -> str:
    """Node i's address: 10.x.y.z from its index (the authority is 10.255.255.254)."""
    return f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"


class _Recorder(EventLog):
    """The events of one node, kept in memory with their virtual time (nothing logged)."""

    def __init__(self, run: VirtualRun, vn: VNode) -> None:
        super().__init__(None, vn.name)
        self._run = run
        self._vn = vn

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        self._run.on_event(self._vn, name, fields)
        return {}


@dataclass
class VNode:
    """One simulated node across its incarnations (a churned node comes back)."""

    index: int  # -1: the authority
    name: str
    host: str
    key: nacl.signing.SigningKey
    profile: LinkProfile
    bootstrap: tuple[tuple[str, int], ...]
    store: MemoryStore | None = None
    node: Node | None = None
    swarm: Swarm | None = None
    scope: trio.CancelScope | None = None
    late: bool = False
    started_at: float | None = None
    announced_at: float | None = None
    hops: int | None = None
    completed_at: float | None = None
    left_at: float | None = None
    rejoined_at: float | None = None
    uploaded: int = 0  # chunk bytes served, all incarnations
    incarnations: int = 0
    events: dict[str, int] = field(default_factory=dict)


def build_node(
    vn: VNode,
    net: VirtualNetwork,
    trust: TrustConfig,
    spec: VirtualSpec,
    check_interval: float,
    recorder: EventLog,
    rng: random.Random,
    workdir: Path,
    *,
    gossip_only: bool,
    publisher: bool = False,
) -> tuple[Node, Swarm | None, Agent | None]:
    """A node as ``p2pupdate node`` (or, for the publisher, ``publish``) wires it."""
    options = NodeOptions(
        listen=(vn.host, PORT),
        trust=trust,
        peers=vn.bootstrap,
        data_dir=None,
        check_interval=check_interval,
        max_connections=spec.max_connections,
        target_connections=max(spec.target_connections, len(vn.bootstrap))
        if publisher
        else spec.target_connections,
        fanout=spec.fanout,
        agent="p2pupdate-publish" if publisher else "p2pupdate-virtual",
    )
    node = Node(
        options,
        net.transport(vn.host),
        vn.key,
        emit=recorder.emit,
        rng=random.Random(rng.getrandbits(64)),
        wall_clock=lambda: WALL_BASE + trio.current_time(),
    )
    if gossip_only:
        return node, None, None
    assert vn.store is not None
    swarm = Swarm(
        node,
        vn.store,
        SwarmOptions(super_seed=publisher),
        rng=random.Random(rng.getrandbits(64)),
    )
    if publisher:
        return node, swarm, None
    state = workdir / vn.name
    applicator = Applicator(state, state / "backups", lambda name, fields: None)
    agent = Agent(
        node,
        swarm,
        applicator,
        recorder,
        AgentOptions(cache_size=4 * 1024**3),
        rng=random.Random(rng.getrandbits(64)),
    )
    return node, swarm, agent


def _random_k(n: int, k: int, rng: random.Random) -> list[list[int]]:
    """Each node gets k distinct random others; redrawn until the graph is connected."""
    k = min(k, n - 1)
    edges: list[list[int]] = [[] for _ in range(n)]
    if k <= 0:
        return edges
    for _attempt in range(100):
        for i in range(n):
            draw = rng.sample(range(n - 1), k)
            edges[i] = sorted(j if j < i else j + 1 for j in draw)
        if is_connected(n, edges):
            return edges
    for i in range(n):  # pragma: no cover - k >= 1 makes a connected draw very likely
        edges[i] = sorted({*edges[i], (i + 1) % n})
    return edges


def _ring(n: int, k: int) -> list[list[int]]:
    k = min(k, n - 1)
    return [[(i + j) % n for j in range(1, k + 1)] for i in range(n)]


def make_package(size: int, seed: int) -> tuple[list[bytes], bytes, bytes, list[bytes]]:
    """Deterministic package bytes as chunks; (chunks, package id, table root, hashes)."""
    data = random.Random(seed).randbytes(size)
    hasher = ChunkHasher()
    hasher.feed_whole(data)
    info = hasher.finish()
    chunks = [data[i : i + CHUNK_SIZE] for i in range(0, size, CHUNK_SIZE)]
    return chunks, info.package_id, info.root, list(info.chunk_hashes)


class VirtualRun:
    """One virtual run of a scenario; :meth:`run` under a MockClock, then :meth:`report`."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        assert scenario.virtual is not None
        self.sc = scenario
        self.spec: VirtualSpec = scenario.virtual
        self.workdir = workdir
        self.rng = random.Random(scenario.seed)
        self.net = VirtualNetwork(
            random.Random(self.rng.getrandbits(64)),
            losses_per_hour=self.spec.connection_loss,
            quantum=self.spec.time_quantum,
        )
        self.memo = ContentMemo(share_chunks=True)
        self.gossip_only = self.spec.gossip_only
        self.authority_key = nacl.signing.SigningKey(_seed_bytes(scenario.seed, "authority"))
        self.trust = TrustConfig(frozenset({bytes(self.authority_key.verify_key)}))
        self.nodes: list[VNode] = []
        self.by_host: dict[str, VNode] = {}
        self.published_at: float | None = None
        self.finished_at: float | None = None
        self.timed_out = False
        self.churn: list[ChurnEvent] = []
        self.done = trio.Event()
        self.progress: Callable[[str], None] | None = None
        self.peers_at_end: list[int] = []
        self._completed = 0
        self._announced = 0
        self.wall_started = 0.0
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0  # CPU time of this process: the fair figure on a busy machine
        self.authority_uploaded = 0
        self.package_id = b""
        self.size = 0 if self.gossip_only else scenario.package_size
        self._setup()

    # -- set-up ---------------------------------------------------------------------
    def _setup(self) -> None:
        sc, spec = self.sc, self.spec
        n = sc.nodes
        up = float(sc.upload_limit)
        base = LinkProfile(up, float(spec.download), spec.latency)
        profiles = assign_profiles(
            n,
            random.Random(self.rng.getrandbits(64)),
            base,
            slow_fraction=spec.slow_fraction,
            slow_factor=spec.slow_factor,
            latency_spread=spec.latency_spread,
        )
        topo_rng = random.Random(self.rng.getrandbits(64))
        late = set(topo_rng.sample(range(n), spec.late_joiners))
        early = [i for i in range(n) if i not in late]
        if sc.topology == "ring":
            sub = _ring(len(early), sc.degree)
        else:
            sub = _random_k(len(early), sc.degree, topo_rng)
        edges: dict[int, list[int]] = {early[p]: [early[q] for q in qs] for p, qs in enumerate(sub)}
        for i in sorted(late):
            edges[i] = sorted(topo_rng.sample(early, min(max(sc.degree, 1), len(early))))
        for i in range(n):
            vn = VNode(
                index=i,
                name=f"n{i:05d}" if n > 9999 else f"n{i:04d}",
                host=host_of(i),
                key=nacl.signing.SigningKey(_seed_bytes(sc.seed, f"node{i}")),
                profile=profiles[i],
                bootstrap=tuple((host_of(j), PORT) for j in edges[i]),
                late=i in late,
            )
            self.nodes.append(vn)
            self.by_host[vn.host] = vn
            self.net.add_host(vn.host, vn.profile)
        a_up = float(spec.authority_upload if spec.authority_upload is not None else up)
        targets = sorted(topo_rng.sample(early, min(sc.authority_peers, len(early))))
        self.authority = VNode(
            index=-1,
            name=AUTHORITY,
            host="10.255.255.254",
            key=nacl.signing.SigningKey(_seed_bytes(sc.seed, "publisher-node")),
            profile=LinkProfile(a_up, 0.0, spec.latency),
            bootstrap=tuple((host_of(j), PORT) for j in targets),
        )
        self.by_host[self.authority.host] = self.authority
        self.net.add_host(self.authority.host, self.authority.profile)
        if spec.churn > 0:
            lo, hi = spec.churn_window
            self.churn = churn_schedule(
                random.Random(self.rng.getrandbits(64)),
                early,
                spec.churn,
                lo,
                hi,
                spec.churn_downtime,
            )
        self._node_rng = random.Random(self.rng.getrandbits(64))

    # -- events ---------------------------------------------------------------------
    def on_event(self, vn: VNode, name: str, fields: dict[str, Any]) -> None:
        vn.events[name] = vn.events.get(name, 0) + 1
        now = trio.current_time()
        if name == "announcement_received" and vn.announced_at is None:
            vn.announced_at = now
            via = fields.get("via")
            sender = self.by_host.get(str(via).rsplit(":", 1)[0]) if via else None
            vn.hops = (sender.hops or 0) + 1 if sender is not None else 0
            if vn.index >= 0:
                self._announced += 1
                if self.gossip_only:
                    self._tell_progress(self._announced, "announced")
                if self.gossip_only and self._announced == len(self.nodes):
                    self.finished_at = now
                    self.done.set()
        elif name == "download_complete" and vn.completed_at is None and vn.index >= 0:
            vn.completed_at = now
            self._completed += 1
            self._tell_progress(self._completed, "complete")
            if self._completed == len(self.nodes):
                self.finished_at = now
                self.done.set()

    # -- running --------------------------------------------------------------------
    async def _incarnation(
        self, vn: VNode, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        publisher = vn is self.authority
        recorder = _Recorder(self, vn)
        if vn.store is None and not self.gossip_only:
            vn.store = MemoryStore(memo=self.memo)
        node, swarm, agent = build_node(
            vn,
            self.net,
            self.trust,
            self.spec,
            self.sc.check_interval,
            recorder,
            self._node_rng,
            self.workdir,
            gossip_only=self.gossip_only,
            publisher=publisher,
        )
        vn.node, vn.swarm = node, swarm
        vn.incarnations += 1
        vn.started_at = vn.started_at if vn.started_at is not None else trio.current_time()
        try:
            with trio.CancelScope() as scope:
                vn.scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    if agent is not None:
                        await nursery.start(agent.run)
                    task_status.started()
        finally:
            self._count_uploads(vn, swarm)
            vn.scope = None

    @staticmethod
    def _count_uploads(vn: VNode, swarm: Swarm | None) -> None:
        """Add what an incarnation served to the node's total (once)."""
        if swarm is not None and vn.swarm is swarm:
            vn.uploaded += swarm.bytes_uploaded
            vn.swarm = None

    async def _publish(self, nursery: trio.Nursery) -> None:
        a = self.authority
        hashes: list[bytes] = []
        if self.gossip_only:
            # Nobody downloads: the announcement names a package that is never fetched.
            pid = hashlib.blake2b(_seed_bytes(self.sc.seed, "pkg"), digest_size=32).digest()
            root = bytes(32)
            size = self.sc.package_size
        else:
            chunks, pid, root, hashes = make_package(self.sc.package_size, self.sc.seed)
            size = self.sc.package_size
            a.store = MemoryStore(memo=self.memo)
            a.store.add_complete_chunks(pid, chunks)
        self.package_id = pid
        now = int(WALL_BASE + trio.current_time())
        body = AnnouncementBody(
            channel=self.sc.channel,
            version=self.sc.final_publication.version,
            package_id=pid,
            size=size,
            table_root=root,
            created=now,
            expires=now + 30 * 86400,
        )
        ann = sign_announcement(body, [self.authority_key])
        await nursery.start(self._incarnation, a)
        assert a.node is not None
        if a.swarm is not None:
            a.swarm.set_table(ann, hashes)
            await a.swarm.add_complete(ann)
        await trio.sleep(self.sc.final_publication.at)
        self.published_at = trio.current_time()
        await a.node.inject(ann)

    async def _churn(self, ev: ChurnEvent, nursery: trio.Nursery) -> None:
        assert self.published_at is not None
        vn = self.nodes[ev.node]
        await trio.sleep_until(self.published_at + ev.leave)
        if vn.scope is not None:
            vn.left_at = trio.current_time()
            vn.scope.cancel()
        await trio.sleep(ev.rejoin - ev.leave)
        vn.rejoined_at = trio.current_time()
        await nursery.start(self._incarnation, vn)

    async def _late(self, vn: VNode, nursery: trio.Nursery) -> None:
        assert self.published_at is not None
        await trio.sleep_until(self.published_at + self.spec.late_join_at)
        await nursery.start(self._incarnation, vn)

    def _tell_progress(self, done: int, what: str) -> None:
        """A line at each tenth of the nodes (from the events: no task, no timer of its own,
        so the scheduling, and with it the result, is the same with or without it)."""
        step = max(1, len(self.nodes) // 10)
        if self.progress is None or done % step:
            return
        assert self.published_at is not None
        t = trio.current_time() - self.published_at
        wall = time.perf_counter() - self.wall_started
        self.progress(f"  +{t:.2f}s virtual: {done}/{len(self.nodes)} {what} (wall {wall:.0f}s)")

    async def run(self) -> None:
        self.wall_started = time.perf_counter()
        cpu_started = time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.net.run)
            for vn in self.nodes:
                if not vn.late:
                    await nursery.start(self._incarnation, vn)
            await self._publish(nursery)
            for ev in self.churn:
                nursery.start_soon(self._churn, ev, nursery)
            for vn in self.nodes:
                if vn.late:
                    nursery.start_soon(self._late, vn, nursery)
            assert self.published_at is not None
            with trio.move_on_at(self.published_at + self.sc.timeout):
                await self.done.wait()
            if not self.done.is_set():
                self.timed_out = True
            self.end_at = trio.current_time()
            self.peers_at_end = [len(vn.node.peers) for vn in self.nodes if vn.node is not None]
            for vn in [*self.nodes, self.authority]:
                self._count_uploads(vn, vn.swarm)
            nursery.cancel_scope.cancel()
        self.wall_seconds = time.perf_counter() - self.wall_started
        self.cpu_seconds = time.process_time() - cpu_started


def _seed_bytes(seed: int, what: str) -> bytes:
    return hashlib.sha256(f"p2pupdate-virtual:{seed}:{what}".encode()).digest()


def seed_trio_scheduler(seed: int) -> bool:
    """Seed the random choice trio's scheduler makes (batch order); False if not found.

    Trio reverses each batch of runnable tasks at random with a module-level
    ``random.Random``; seeding it makes the order a function of the seed.
    """
    core = getattr(trio, "_core", None)
    run_mod = getattr(core, "_run", None)
    r = getattr(run_mod, "_r", None)
    if isinstance(r, random.Random):
        r.seed(seed)
        return True
    return False
