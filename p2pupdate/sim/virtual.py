"""``mode = "virtual"``: many real nodes in one process, in virtual time.

Every simulated node is the code ``p2pupdate node`` runs: a :class:`Node`
(handshake, membership, gossip, anti-entropy), a :class:`Swarm` (tables,
downloader, uploads) and an :class:`Agent` (act decision, download, retry),
over a :class:`~p2pupdate.sim.virtualnet.VirtualNetwork` instead of TCP and a
:class:`~p2pupdate.shell.transfer.memstore.MemoryStore` instead of a data dir. The
publisher is a node like ``p2pupdate publish`` builds (super-seeding). The run
uses ``trio.testing.MockClock(autojump_threshold=0)``: whenever every task
waits, the clock jumps to the next deadline, so virtual time runs as fast as
the CPU allows.

Every chunk is really hashed (BLAKE3) and checked against the signed table by
each node's own downloader; the stores share one memo, so equal verified chunks
are one object in memory and a package assembled from the very chunks already
hashed together is not hashed again (``ContentMemo``).

Nodes have no app target: "updated" means the package was downloaded,
verified and cached (``download_complete``); installing is what the
process-mode scenarios test.

:func:`build_node` is the one place where a simulated node is put together.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import tempfile
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
from p2pupdate.core.codec import encode
from p2pupdate.core.messages import MESSAGE_TYPES, Inventory
from p2pupdate.core.netmodel import (
    ChurnEvent,
    LinkProfile,
    assign_profiles,
    churn_schedule,
    kumar_ross_heterogeneous,
    percentile,
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

__all__ = ["VNode", "VirtualRun", "build_node", "run_virtual"]

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


# -- the report ------------------------------------------------------------------------

_CATEGORIES = {
    "Chunk": "chunks",
    "Have": "have",
    "Bitfield": "have",
    "Announce": "gossip",
    "Inventory": "gossip",
    "GetAnnounce": "gossip",
    "Peers": "gossip",
    "Request": "requests",
    "Cancel": "requests",
    "Reject": "requests",
    "GetTable": "tables",
    "Table": "tables",
    "Complete": "have",
    "Ping": "keepalive",
    "Pong": "keepalive",
    "Hello": "handshake",
}


def _code_name(code: int) -> str:
    t = MESSAGE_TYPES.get(code)
    return t.__name__ if t is not None else "other"


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p90": round(percentile(values, 90), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3),
        "mean": round(sum(values) / len(values), 3),
    }


def build_virtual_report(run: VirtualRun) -> dict[str, Any]:
    sc, spec = run.sc, run.spec
    pub = run.published_at if run.published_at is not None else 0.0
    nodes = run.nodes
    n = len(nodes)
    regular = [vn for vn in nodes if not vn.late]
    done = [vn.completed_at - pub for vn in regular if vn.completed_at is not None]
    announce = [vn.announced_at - pub for vn in nodes if vn.announced_at is not None]
    hops = [vn.hops for vn in nodes if vn.hops is not None]
    virtual_seconds = getattr(run, "end_at", pub) - pub
    size = sc.package_size
    # Traffic by message type, per node.
    by_type: dict[str, dict[str, float]] = {}
    by_cat: dict[str, dict[str, float]] = {}
    peaks: list[int] = []
    sent_bytes: list[int] = []
    for vn in nodes:
        st = run.net.stats(vn.host)
        peaks.append(st.peak_connections)
        sent_bytes.append(st.bytes_sent)
        for code, (msgs, nbytes) in st.sent.items():
            name = _code_name(code)
            kind = _CATEGORIES.get(name, name.lower())  # a newer message type: its own kind
            for table, key in ((by_type, name), (by_cat, kind)):
                e = table.setdefault(key, {"messages": 0, "bytes": 0})
                e["messages"] += msgs
                e["bytes"] += nbytes
    per_node = {
        k: {
            "messages": round(v["messages"] / n, 1),
            "bytes": round(v["bytes"] / n),
            "total_messages": int(v["messages"]),
            "total_bytes": int(v["bytes"]),
        }
        for k, v in sorted(by_cat.items())
    }
    by_type_out = {
        k: {"messages": int(v["messages"]), "bytes": int(v["bytes"])}
        for k, v in sorted(by_type.items())
    }
    # Traffic is counted from the start (mesh forming included), so rates use the whole run.
    run_seconds = getattr(run, "end_at", 0.0)
    heartbeats = run_seconds / sc.check_interval if sc.check_interval > 0 else 0.0
    gossip_bytes = by_cat.get("gossip", {}).get("bytes", 0.0)
    keepalive_bytes = by_cat.get("keepalive", {}).get("bytes", 0.0)
    announce_msgs = by_type.get("Announce", {}).get("messages", 0.0)
    some = next((vn.node for vn in nodes if vn.node is not None), None)
    inv_frame = len(encode(Inventory(some.book.inventory()))) if some is not None else 0
    live = run.peers_at_end
    mean_peers = sum(live) / len(live) if live else 0.0
    inv = by_type.get("Inventory", {"messages": 0.0, "bytes": 0.0})
    gossip = {
        "announce_messages_per_node": round(announce_msgs / n, 2),
        "announce_bytes_per_node": round(by_type.get("Announce", {}).get("bytes", 0.0) / n),
        # Measured only when the run lasted at least one check_interval (otherwise the
        # INVENTORY counted is the one each connection starts with).
        "inventory_bytes_per_node_per_heartbeat": round(inv["bytes"] / n / heartbeats, 1)
        if heartbeats >= 1
        else None,
        # What one anti-entropy round costs a node at the end of the run: one INVENTORY of
        # its announcements to each connected peer.
        "inventory_frame_bytes": inv_frame,
        "inventory_bytes_per_heartbeat_at_end": round(inv_frame * mean_peers),
        "gossip_bytes_per_node": round(gossip_bytes / n),
        "keepalive_bytes_per_node_per_minute": round(keepalive_bytes / n / run_seconds * 60, 1)
        if run_seconds > 0
        else None,
        "heartbeats": round(heartbeats, 1),
        "note": "no report messages exist in the protocol; gossip = ANNOUNCE, INVENTORY, "
        "GET_ANNOUNCE, PEERS",
    }
    au = run.authority
    a_uploaded = au.uploaded
    bound = None
    if not run.gossip_only and sc.upload_limit > 0:
        bound = kumar_ross_heterogeneous(
            size,
            au.profile.upload,
            [vn.profile.upload for vn in regular],
            [vn.profile.download for vn in regular],
        )
    completion = _stats(done)
    kr: dict[str, Any] = {"bound": round(bound, 3) if bound else None}
    if bound and done:
        kr["max_ratio"] = round(max(done) / bound, 3)
        kr["p50_ratio"] = round(percentile(done, 50) / bound, 3)
        kr["p99_ratio"] = round(percentile(done, 99) / bound, 3)
    spread = (
        round(percentile(done, 99) / percentile(done, 50), 3)
        if done and percentile(done, 50) > 0
        else None
    )
    late = [vn for vn in nodes if vn.late]
    late_times = [
        vn.completed_at - vn.started_at
        for vn in late
        if vn.completed_at is not None and vn.started_at is not None
    ]
    churned = [vn for vn in nodes if vn.left_at is not None]
    log2n = math.log2(n) if n > 1 else 0.0
    report: dict[str, Any] = {
        "scenario": sc.name,
        "description": sc.description,
        "mode": "virtual",
        "seed": sc.seed,
        "nodes_total": n,
        "package_size": size,
        "gossip_only": run.gossip_only,
        "network": {
            "upload": sc.upload_limit,
            "download": spec.download,
            "authority_upload": au.profile.upload,
            "latency": spec.latency,
            "latency_spread": spec.latency_spread,
            "slow_nodes": sum(1 for vn in nodes if vn.profile.upload < sc.upload_limit),
            "slow_factor": spec.slow_factor,
            "connection_loss_per_hour": spec.connection_loss,
            "connections_lost": sum(run.net.stats(vn.host).broken for vn in nodes),
            "topology": sc.topology,
            "degree": sc.degree,
            "authority_peers": sc.authority_peers,
        },
        "timed_out": run.timed_out,
        "wall_seconds": round(run.wall_seconds, 2),
        "cpu_seconds": round(run.cpu_seconds, 2),
        "virtual_seconds": round(virtual_seconds, 3),
        "virtual_seconds_total": round(getattr(run, "end_at", 0.0), 3),
        "time_quantum": spec.time_quantum,
        "completed": len([vn for vn in nodes if vn.completed_at is not None]),
        "announced": len(announce),
        "completion": completion,
        "kumar_ross": kr,
        "p99_over_p50": spread,
        "authority": {
            "uploaded": a_uploaded,
            "ratio": round(a_uploaded / size, 3) if size and not run.gossip_only else None,
        },
        "announcement": {
            "time": _stats(announce),
            "hops_max": max(hops) if hops else None,
            "hops_mean": round(sum(hops) / len(hops), 2) if hops else None,
            "hops_histogram": {str(h): hops.count(h) for h in sorted(set(hops))},
            "log2_n_plus_3": round(log2n + 3, 2),
        },
        "traffic_per_node": per_node,
        "traffic_by_type": by_type_out,
        "gossip": gossip,
        "bytes_sent_per_node": _stats([float(b) for b in sent_bytes]),
        "peak_connections": {
            "max": max(peaks) if peaks else 0,
            "mean": round(sum(peaks) / len(peaks), 2) if peaks else 0,
        },
        "churn": {
            "scheduled": len(run.churn),
            "left": len(churned),
            "rejoined": len([vn for vn in churned if vn.rejoined_at is not None]),
            "completion_of_churned": _stats(
                [vn.completed_at - pub for vn in churned if vn.completed_at is not None]
            ),
        },
        "late_joiners": {
            "count": len(late),
            "join_at": spec.late_join_at,
            "catch_up": _stats(late_times),
        },
        "completion_times": sorted(round(t, 4) for t in done),
        "announcement_times": sorted(round(t, 4) for t in announce),
    }
    report["expectations"] = check_virtual(run, report)
    report["ok"] = all(e["ok"] for e in report["expectations"]) and not run.timed_out
    return report


def check_virtual(run: VirtualRun, report: dict[str, Any]) -> list[dict[str, Any]]:
    exp = run.sc.expect
    out: list[dict[str, Any]] = []
    n = report["nodes_total"]

    def add(name: str, expected: object, actual: object, ok: bool) -> None:
        out.append({"name": name, "expected": expected, "actual": actual, "ok": bool(ok)})

    for name, want in exp.items():
        if name == "all_applied":
            got = report["announced"] if run.gossip_only else report["completed"]
            add(name, want, f"{got}/{n}", (got == n) == want)
        elif name == "max_time":
            worst = report["completion"]["max"]
            if run.gossip_only:
                worst = report["announcement"]["time"]["max"]
            add(name, want, worst, worst is not None and worst <= float(str(want)))
        elif name == "max_bound_ratio":
            got = report["kumar_ross"].get("max_ratio")
            add(name, want, got, got is not None and got <= float(str(want)))
        elif name == "max_authority_ratio":
            got = report["authority"]["ratio"]
            add(name, want, got, got is not None and got <= float(str(want)))
        elif name == "max_hops":
            got = report["announcement"]["hops_max"]
            add(name, want, got, got is not None and got <= int(str(want)))
        elif name == "max_spread":
            got = report["p99_over_p50"]
            add(name, want, got, got is not None and got <= float(str(want)))
        else:
            add(name, want, "not measured in a virtual run", False)
    return out


def virtual_summary(report: dict[str, Any], out_dir: str, plot: str | None) -> list[str]:
    net = report["network"]
    lines = [
        f"scenario {report['scenario']} (virtual): {report['nodes_total']} nodes, "
        f"{report['package_size'] / 2**20:.1f} MiB, {net['topology']} degree {net['degree']}, "
        f"upload {net['upload'] / 2**20:.2f} MiB/s, latency {net['latency'] * 1000:.0f} ms"
        + (f", {net['slow_nodes']} slow nodes" if net["slow_nodes"] else ""),
        f"  wall {report['wall_seconds']:.1f} s (CPU {report['cpu_seconds']:.1f} s) for "
        f"{report['virtual_seconds']:.1f} s of virtual time",
    ]
    ann = report["announcement"]
    t = ann["time"]
    if t["n"]:
        lines.append(
            f"  announcement: {report['announced']}/{report['nodes_total']} nodes, "
            f"p50 {t['p50']:.3f}s p99 {t['p99']:.3f}s max {t['max']:.3f}s; hops max "
            f"{ann['hops_max']} (log2 N + 3 = {ann['log2_n_plus_3']}), mean {ann['hops_mean']}"
        )
    if not report["gossip_only"]:
        c = report["completion"]
        if c["n"]:
            lines.append(
                f"  completed {report['completed']}/{report['nodes_total']}: p50 {c['p50']:.2f}s "
                f"p90 {c['p90']:.2f}s p99 {c['p99']:.2f}s max {c['max']:.2f}s "
                f"(p99/p50 {report['p99_over_p50']})"
            )
        kr = report["kumar_ross"]
        if kr.get("bound"):
            lines.append(
                f"  Kumar-Ross bound {kr['bound']:.2f}s; max = {kr.get('max_ratio')}x, "
                f"p50 = {kr.get('p50_ratio')}x the bound"
            )
        lines.append(
            f"  authority uploaded {report['authority']['uploaded'] / 2**20:.1f} MiB = "
            f"{report['authority']['ratio']}x the package"
        )
    g = report["gossip"]
    lines.append(
        f"  per node: {g['announce_messages_per_node']} ANNOUNCE sent per announcement, "
        f"gossip {g['gossip_bytes_per_node']} B, INVENTORY "
        f"{g['inventory_bytes_per_heartbeat_at_end']} B per heartbeat; peak connections "
        f"max {report['peak_connections']['max']} mean {report['peak_connections']['mean']}"
    )
    traffic = ", ".join(
        f"{k} {v['messages']:.0f} msgs/{v['bytes'] / 1024:.0f} KiB"
        for k, v in report["traffic_per_node"].items()
    )
    lines.append(f"  sent per node: {traffic}")
    ch = report["churn"]
    if ch["scheduled"]:
        lines.append(f"  churn: {ch['left']} left, {ch['rejoined']} came back")
    lj = report["late_joiners"]
    if lj["count"]:
        cu = lj["catch_up"]
        lines.append(
            f"  late joiners: {lj['count']} at +{lj['join_at']:g}s, caught up p50 "
            f"{cu['p50']}s max {cu['max']}s"
        )
    for e in report["expectations"]:
        mark = "ok  " if e["ok"] else "FAIL"
        lines.append(f"  [{mark}] {e['name']}: expected {e['expected']}, got {e['actual']}")
    if report["timed_out"]:
        lines.append("  timed out (virtual time)")
    verdict = "PASSED" if report["ok"] else "FAILED"
    lines.append(f"{verdict}; report: {out_dir}/report.json" + (f", plot: {plot}" if plot else ""))
    return lines


def plot_cdf(report: dict[str, Any], path: Path) -> Path | None:
    """Completion and announcement times as CDFs (matplotlib); None if it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    try:
        for ax, key, title in (
            (axes[0], "completion_times", "download complete"),
            (axes[1], "announcement_times", "announcement received"),
        ):
            xs = report[key]
            if xs:
                ys = [(i + 1) / report["nodes_total"] for i in range(len(xs))]
                ax.step(xs, ys, where="post", linewidth=1.5)
            ax.set_title(title)
            ax.set_xlabel("seconds after publication (virtual time)")
            ax.set_ylabel("fraction of nodes")
            ax.set_ylim(0, 1.02)
            ax.grid(True, alpha=0.3)
        bound = report["kumar_ross"].get("bound")
        if bound:
            axes[0].axvline(bound, color="red", linestyle="--", label=f"Kumar-Ross {bound:.2f}s")
            axes[0].axvline(
                1.3 * bound, color="orange", linestyle=":", label=f"1.3x bound {1.3 * bound:.2f}s"
            )
            axes[0].legend(loc="lower right")
        fig.suptitle(f"{report['scenario']}: {report['nodes_total']} nodes (virtual time)")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def run_virtual(
    scenario: Scenario, out: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run a virtual scenario to its end; the report (also written by the caller)."""
    workdir = Path(tempfile.mkdtemp(prefix="p2pupdate-virtual-"))
    quiet: list[tuple[logging.Logger, int]] = []
    for name in ("p2pupdate", "p2pupdate.node", "p2pupdate.swarm", "p2pupdate.agent"):
        lg = logging.getLogger(name)
        quiet.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    try:
        seed_trio_scheduler(scenario.seed)
        run = VirtualRun(scenario, workdir)
        run.progress = progress
        trio.run(run.run, clock=trio.testing.MockClock(autojump_threshold=0))
        return build_virtual_report(run)
    finally:
        for lg, level in quiet:
            lg.setLevel(level)
        shutil.rmtree(workdir, ignore_errors=True)
