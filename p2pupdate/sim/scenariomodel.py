"""The scenario model: what a validated scenario holds (the parser is ``sim.scenario``).

Every value here has been checked by :func:`p2pupdate.sim.scenario.parse_scenario`;
the limits the checks use (node counts, package sizes, the names of topologies,
networks, faults) are defined here beside the model they bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ADVERSARY_MODES",
    "FAULT_KINDS",
    "MAX_NODES",
    "MAX_PACKAGE",
    "MAX_VIRTUAL_NODES",
    "MIN_PACKAGE",
    "MODES",
    "NETWORKS",
    "SELF_UPDATE_DEFECTS",
    "TOPOLOGIES",
    "VIRTUAL_EXPECT",
    "AdversaryFault",
    "BadReleaseFault",
    "Expect",
    "Fault",
    "IntruderFault",
    "Kill9Fault",
    "LateJoinFault",
    "Publication",
    "PublisherKillFault",
    "Scenario",
    "SelfUpdate",
    "VirtualSpec",
]

MODES = ("processes", "virtual")
# What a virtual run measures and can check.
VIRTUAL_EXPECT = (
    "all_applied",
    "max_time",
    "max_bound_ratio",
    "max_authority_ratio",
    "max_hops",
    "max_spread",
)
TOPOLOGIES = ("ring", "random-k", "star")
NETWORKS = ("loopback", "netns")
FAULT_KINDS = ("kill9", "late_join", "adversary", "bad_release", "kill_publisher", "intruder")
SELF_UPDATE_DEFECTS = ("crash", "noimport")
ADVERSARY_MODES = ("bad-chunks", "bad-tables")
# One /24 per run in netns mode: .1 is the bridge, .2 the authority, then nodes.
MAX_NODES = 200
# A virtual run holds every node in one process: about 2 MB per node with a download.
MAX_VIRTUAL_NODES = 20000
MIN_PACKAGE = 4096  # the app's shell header must fit, with room to spare
MAX_PACKAGE = 4 * 1024**3


@dataclass(frozen=True)
class Publication:
    """The authority publishes ``version`` ``at`` seconds after all nodes are up."""

    version: str
    at: float = 0.0
    healthy: bool = True  # False: the release fails its health check (bad_release fault)
    # A staged rollout and an abort rule, as publish's --stages / --abort-after take them.
    stages: str | None = None
    abort_after: str | None = None
    # Share (0 < x <= 1) of the previous version's 64 KiB chunks this one replaces, the
    # rest kept byte for byte (a small change); None: bytes unrelated to the previous.
    changed: float | None = None


@dataclass(frozen=True)
class Kill9Fault:
    """SIGKILL ``node`` once its download passes ``at_progress``; restart it later."""

    node: int
    at_progress: float
    restart_after: float
    kind: str = "kill9"


@dataclass(frozen=True)
class LateJoinFault:
    """Start ``node`` only ``at`` seconds after the first publication, or (at=None)
    once every other node has applied the last publication."""

    node: int
    at: float | None
    kind: str = "late_join"


@dataclass(frozen=True)
class AdversaryFault:
    """An extra peer inside the harness, speaking the real protocol, serving garbage."""

    mode: str  # "bad-chunks": right tables, corrupt chunks; "bad-tables": both wrong
    kind: str = "adversary"


@dataclass(frozen=True)
class BadReleaseFault:
    """The publication of ``version`` ships an app whose health check fails."""

    version: str
    kind: str = "bad_release"


@dataclass(frozen=True)
class PublisherKillFault:
    """SIGKILL the ``publish`` of ``version`` once the furthest node's download passes
    ``at_progress``; run the very same ``publish`` command again ``restart_after`` s later
    (an operator whose terminal died). None: the first publication."""

    at_progress: float
    restart_after: float
    version: str | None = None
    kind: str = "kill_publisher"


@dataclass(frozen=True)
class IntruderFault:
    """A peer with a real node key but no admission (or, ``foreign``, one from another
    fleet) that dials every node over TLS and asks for data (``membership``)."""

    foreign: bool = True
    kind: str = "intruder"


Fault = (
    Kill9Fault
    | LateJoinFault
    | AdversaryFault
    | BadReleaseFault
    | PublisherKillFault
    | IntruderFault
)


@dataclass(frozen=True)
class SelfUpdate:
    """``[self_update]``: the nodes run from one managed install and the publications are
    releases of p2pupdate itself (run by ``p2pupdate.sim.selfupdate``)."""

    track: str = "stable"
    boot_attempts: int = 3  # the nodes' boot_attempts
    confirm_window: float = 2.0  # the nodes' confirm_window (seconds)
    wait_for_others: float = 20.0  # the nodes' self_update_wait (seconds)
    defect: str = "crash"  # what a bad_release is: "crash" on start, or "noimport"
    max_restarts: int = 20  # per node: the harness (the supervisor) gives up after this


@dataclass(frozen=True)
class VirtualSpec:
    """``mode = "virtual"``: every node in one process, in virtual time (``p2pupdate.sim.virtual``).

    Rates are bytes/s (0 = unlimited); ``upload_limit`` of the scenario is each node's upload.
    """

    download: int = 0  # each node's download rate
    authority_upload: int | None = None  # None: the nodes' upload_limit
    latency: float = 0.01  # one-way access latency of a node (a link has two)
    latency_spread: float = 0.5  # each node's latency drawn in latency * (1 +- spread)
    slow_fraction: float = 0.0  # this share of nodes has its rates divided by slow_factor
    slow_factor: float = 10.0
    connection_loss: float = 0.0  # mean losses per connection-hour (0: none)
    churn: float = 0.0  # share of nodes that leave once during the transfer and come back
    churn_window: tuple[float, float] = (1.0, 10.0)  # seconds after the publication
    churn_downtime: float = 5.0
    late_joiners: int = 0  # nodes started only late_join_at seconds after the publication
    late_join_at: float = 30.0
    gossip_only: bool = False  # announcement propagation only: no swarm, no download
    target_connections: int = 8
    max_connections: int = 64
    fanout: int = 8
    time_quantum: float = 0.001  # the clock jumps to deadlines rounded up to this (0: exact)


@dataclass(frozen=True)
class Expect:
    """The outcome a run must reach; each key that is set is checked (None: not checked)."""

    all_applied: bool | None = None
    max_time: float | None = None
    rolled_back: bool | None = None
    adversary_banned: bool | None = None
    no_honest_bans: bool | None = None
    resumed: bool | None = None
    max_authority_ratio: float | None = None
    min_authority_ratio: float | None = None
    max_bound_ratio: float | None = None
    final_version: str | None = None
    all_running: bool | None = None
    self_updated: bool | None = None
    self_update_rolled_back: bool | None = None
    # The rollout aborted: every node that did not attempt the release saw the abort
    # (rollout_aborted) and never applied it.
    aborted: bool | None = None
    # At most this many nodes attempted the release (applying) before it aborted.
    max_attempted: int | None = None
    intruder_got_nothing: bool | None = None
    max_hops: int | None = None  # virtual: announcement hops to the farthest node
    max_spread: float | None = None  # virtual: p99 / p50 of the completion times
    # Every node fetched from peers at most this share of the main package (the rest it
    # had locally: a small change, docs/performance.md "Fetching only what changed").
    max_fetched_ratio: float | None = None

    def items(self) -> list[tuple[str, object]]:
        """The keys that are set, in declaration order."""
        return [(k, v) for k, v in self.__dict__.items() if v is not None]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    nodes: int = 10
    package_size: int = 32 * 1024 * 1024
    topology: str = "ring"
    degree: int = 2
    seed: int = 1
    upload_limit: int = 0  # bytes/s per node and for the authority; 0 = unlimited
    # The last ``slow_nodes`` nodes upload at ``slow_upload_limit`` instead (a branch
    # office, a busy host): a heterogeneous fleet.
    slow_nodes: int = 0
    slow_upload_limit: int = 0
    network: str = "loopback"
    authority_peers: int = 2
    replicas: int = 1
    channel: str = "app/stable"
    initial_version: str = "1.0.0"
    check_interval: float = 1.0
    timeout: float = 300.0
    publications: tuple[Publication, ...] = (Publication("2.0.0"),)
    faults: tuple[Fault, ...] = ()
    expect: Expect = field(default_factory=lambda: Expect(all_applied=True))
    source: str = ""
    self_update: SelfUpdate | None = None
    # Fleet membership: the harness makes a fleet key, admits every node and the
    # publisher, and runs the nodes with --fleet (and so TLS).
    fleet: bool = False
    mode: str = "processes"
    virtual: VirtualSpec | None = None

    def node_upload_limit(self, index: int) -> int:
        """Upload limit of node ``index`` (bytes/s, 0 = unlimited)."""
        if index >= self.nodes - self.slow_nodes:
            return self.slow_upload_limit
        return self.upload_limit

    def faults_of(self, kind: type[Any]) -> list[Any]:
        return [f for f in self.faults if isinstance(f, kind)]

    @property
    def late_nodes(self) -> set[int]:
        return {f.node for f in self.faults if isinstance(f, LateJoinFault)}

    @property
    def final_publication(self) -> Publication:
        return self.publications[-1]

    @property
    def last_good_version(self) -> str:
        """The version every node should run at the end."""
        for pub in reversed(self.publications):
            if pub.healthy:
                return pub.version
        return self.initial_version
