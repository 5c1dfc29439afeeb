"""Simulation scenarios: finding them, reading their TOML, and validating every key.

A scenario is a TOML file (format in docs/simulation.md). A name without a
slash or ``.toml`` is looked up among the scenarios shipped inside this
package (``p2pupdate/sim/scenarios/NAME.toml``), so they are found from any
working directory after a non-editable install; anything else is a path.

A scenario may start from another with ``base = "NAME"`` (a shipped name or a
path relative to the file): tables are merged key by key, everything else
(arrays included) is replaced. The tests use that to run every shipped
scenario at a small size.

Every mistake (unknown scenario, unknown key, wrong type, out-of-range value)
is a :class:`UsageError` naming the scenario and the key. This module only
reads and checks; running a scenario is ``p2pupdate.sim.harness``.
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import semver

from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.rollout import parse_abort, parse_stages
from p2pupdate.core.units import parse_rate, parse_size
from p2pupdate.errors import UsageError
from p2pupdate.selfupdate.release import platform_channel

__all__ = [
    "FAULT_KINDS",
    "MAX_NODES",
    "NETWORKS",
    "TOPOLOGIES",
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
    "load_scenario",
    "parse_scenario",
    "resolve_scenario",
    "shipped_scenarios",
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
_SHIPPED_PACKAGE = "p2pupdate.sim"
_SHIPPED_DIR = "scenarios"


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


# -- finding scenarios --------------------------------------------------------------


def shipped_scenarios() -> list[str]:
    """Names of the scenarios shipped inside the package, sorted."""
    root = importlib.resources.files(_SHIPPED_PACKAGE).joinpath(_SHIPPED_DIR)
    return sorted(
        p.name.removesuffix(".toml")
        for p in root.iterdir()
        if p.name.endswith(".toml") and p.is_file()
    )


def _looks_like_path(arg: str) -> bool:
    return arg.endswith(".toml") or "/" in arg or arg.startswith(".")


def _read_shipped(name: str) -> tuple[str, str]:
    res = importlib.resources.files(_SHIPPED_PACKAGE).joinpath(_SHIPPED_DIR, f"{name}.toml")
    if not res.is_file():
        raise UsageError(
            f"unknown scenario {name!r} (shipped: {', '.join(shipped_scenarios())}; "
            "or give the path of a .toml file)"
        )
    return res.read_text(encoding="utf-8"), f"{name} (shipped)"


def _read_path(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"scenario file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"scenario file {path} is a directory") from None
    except UnicodeDecodeError:
        raise UsageError(f"scenario file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read scenario file {path}: {exc.strerror}") from None


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"scenario {where}: not valid TOML: {exc}") from None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_raw(
    arg: str, relative_to: Path | None, seen: tuple[str, ...]
) -> tuple[dict[str, Any], str]:
    """The merged raw table of a scenario (its ``base`` chain resolved) and its name."""
    if _looks_like_path(arg):
        path = Path(arg)
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        key = str(path.resolve())
        text, where, name, here = _read_path(path), str(path), path.stem, path.parent
    else:
        key = f"shipped:{arg}"
        text, where = _read_shipped(arg)
        name, here = arg, None
    if key in seen:
        raise UsageError(f"scenario {where}: 'base' chain loops back to itself")
    raw = _parse_toml(text, where)
    base = raw.pop("base", None)
    if base is None:
        return raw, name
    if not isinstance(base, str) or not base:
        raise UsageError(f"scenario {where}: 'base' must be a scenario name or path")
    base_raw, _ = _load_raw(base, here, (*seen, key))
    return _merge(base_raw, raw), name


def resolve_scenario(arg: str) -> tuple[dict[str, Any], str, str]:
    """Raw merged table, scenario name and a description of where it came from."""
    raw, name = _load_raw(arg, None, ())
    where = arg if _looks_like_path(arg) else f"{arg} (shipped)"
    return raw, name, where


def load_scenario(arg: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Find, read and validate a scenario by shipped name or path.

    ``overrides`` is merged over the file's table (like a ``base`` chain) before
    validation: the tests use it to shrink scenarios.
    """
    raw, name, where = resolve_scenario(arg)
    if overrides:
        raw = _merge(raw, overrides)
    return parse_scenario(raw, name=name, source=where)


# -- validation ----------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        self.table = table
        self.where = where
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> UsageError:
        return UsageError(f"scenario {self.where}: {key}: {message}")

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.table.get(key)

    def has(self, key: str) -> bool:
        return key in self.table

    def int_(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(key, f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"must be in {lo}..{hi}, got {v}")
        return v

    def float_(
        self, key: str, default: float | None, lo: float, hi: float = math.inf
    ) -> float | None:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.fail(key, f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"must be in {lo}..{hi}, got {v}")
        return float(v)

    def bool_(self, key: str, default: bool | None) -> bool | None:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v

    def str_(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        v = self.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def size(self, key: str, default: int, *, rate: bool = False) -> int:
        v = self.get(key)
        if v is None:
            return default
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 0:
                raise self.fail(key, "must not be negative")
            return v
        if not isinstance(v, str):
            raise self.fail(key, f"expected a number or a string like '32MiB', got {v!r}")
        try:
            return parse_rate(v) if rate else parse_size(v)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise UsageError(f"scenario {self.where}: unknown key(s): {', '.join(unknown)}")


def _version(r: _Reader, key: str, default: str) -> str:
    v = r.str_(key, default)
    try:
        return validate_version(v)
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None


def _share(r: _Reader, key: str) -> float | None:
    """A share given as "5%" or as a number of percent (5, 0.5); None when absent."""
    v = r.get(key)
    if v is None:
        return None
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            v = float(v.strip()[:-1])
        except ValueError:
            raise r.fail(key, f"expected a percentage like '5%', got {v!r}") from None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise r.fail(key, f"expected a percentage like '5%', got {v!r}")
    if not 0 < v <= 100:
        raise r.fail(key, f"must be more than 0% and at most 100%, got {v}%")
    return float(v) / 100


def _node_index(r: _Reader, nodes: int) -> int:
    if not r.has("node"):
        raise r.fail("node", "missing (which node, counting from 0)")
    return r.int_("node", 0, 0, nodes - 1)


def _parse_fault(table: object, where: str, nodes: int) -> Fault:
    if not isinstance(table, Mapping):
        raise UsageError(f"scenario {where}: expected a table [[faults]]")
    r = _Reader(table, where)
    kind = r.str_("kind", "", FAULT_KINDS)
    if not kind:
        raise r.fail("kind", f"missing (one of {', '.join(FAULT_KINDS)})")
    fault: Fault
    if kind == "kill9":
        node = _node_index(r, nodes)
        at_progress = r.float_("at_progress", 0.5, 0.0, 1.0)
        if at_progress is None or not 0.0 < at_progress < 1.0:
            raise r.fail("at_progress", "must be strictly between 0 and 1")
        restart_after = r.float_("restart_after", 1.0, 0.0, 3600.0)
        fault = Kill9Fault(node, at_progress, restart_after or 0.0)
    elif kind == "late_join":
        node = _node_index(r, nodes)
        at = r.get("at")
        if at is None or at == "applied":
            fault = LateJoinFault(node, None)
        else:
            fault = LateJoinFault(node, r.float_("at", 0.0, 0.0, 86400.0))
    elif kind == "adversary":
        fault = AdversaryFault(r.str_("mode", "bad-chunks", ADVERSARY_MODES))
    elif kind == "intruder":
        fault = IntruderFault(bool(r.bool_("foreign", True)))
    elif kind == "kill_publisher":
        at_progress = r.float_("at_progress", 0.4, 0.0, 1.0)
        if at_progress is None or not 0.0 < at_progress < 1.0:
            raise r.fail("at_progress", "must be strictly between 0 and 1")
        restart_after = r.float_("restart_after", 1.0, 0.0, 3600.0) or 0.0
        version = _version(r, "version", "") if r.has("version") else None
        fault = PublisherKillFault(at_progress, restart_after, version)
    else:
        fault = BadReleaseFault(_version(r, "version", ""))
    r.done()
    return fault


def _parse_expect(table: object, where: str) -> Expect:
    if not isinstance(table, Mapping):
        raise UsageError(f"scenario {where}: 'expect' must be a table")
    r = _Reader(table, where)
    final_version = r.get("final_version")
    if final_version is not None:
        final_version = _version(r, "final_version", "")
    exp = Expect(
        all_applied=r.bool_("all_applied", None),
        max_time=r.float_("max_time", None, 0.0),
        rolled_back=r.bool_("rolled_back", None),
        adversary_banned=r.bool_("adversary_banned", None),
        no_honest_bans=r.bool_("no_honest_bans", None),
        resumed=r.bool_("resumed", None),
        max_authority_ratio=r.float_("max_authority_ratio", None, 0.0),
        min_authority_ratio=r.float_("min_authority_ratio", None, 0.0),
        max_bound_ratio=r.float_("max_bound_ratio", None, 0.0),
        final_version=final_version,
        all_running=r.bool_("all_running", None),
        self_updated=r.bool_("self_updated", None),
        self_update_rolled_back=r.bool_("self_update_rolled_back", None),
        aborted=r.bool_("aborted", None),
        max_attempted=(r.int_("max_attempted", 0, 0, 100_000) if r.has("max_attempted") else None),
        intruder_got_nothing=r.bool_("intruder_got_nothing", None),
        max_hops=r.int_("max_hops", -1, 0, 1000) if r.has("max_hops") else None,
        max_spread=r.float_("max_spread", None, 1.0),
        max_fetched_ratio=r.float_("max_fetched_ratio", None, 0.0, 1.0),
    )
    r.done()
    return exp


def parse_scenario(raw: Mapping[str, Any], *, name: str, source: str = "") -> Scenario:
    """Validate a raw TOML table into a :class:`Scenario` (UsageError naming the key)."""
    where = source or name
    r = _Reader(raw, where)
    mode = r.str_("mode", "processes", MODES)
    cap = MAX_VIRTUAL_NODES if mode == "virtual" else MAX_NODES
    nodes = r.int_("nodes", 10, 1, cap)
    package_size = r.size("package_size", 32 * 1024 * 1024)
    if not MIN_PACKAGE <= package_size <= MAX_PACKAGE:
        raise r.fail("package_size", f"must be between {MIN_PACKAGE} bytes and 4GiB")
    topology = r.str_("topology", "ring", TOPOLOGIES)
    # degree and authority_peers above what the node count allows are clamped, so a
    # scenario can be shrunk by changing ``nodes`` alone.
    degree = r.int_("degree", 2, 1, cap)
    seed = r.int_("seed", 1, 0, 2**63 - 1)
    upload_limit = r.size("upload_limit", 0, rate=True)
    slow_nodes = r.int_("slow_nodes", 0, 0, nodes)
    slow_upload_limit = r.size("slow_upload_limit", 0, rate=True)
    if slow_nodes and not (slow_upload_limit and upload_limit):
        raise r.fail("slow_nodes", "needs upload_limit and slow_upload_limit")
    if slow_upload_limit and not slow_nodes:
        raise r.fail("slow_upload_limit", "needs slow_nodes")
    network = r.str_("network", "loopback", NETWORKS)
    authority_peers = r.int_("authority_peers", 2, 1, cap)
    default_replicas = nodes if topology == "star" else 1
    replicas = min(nodes, r.int_("replicas", default_replicas, 1, cap))
    channel = r.str_("channel", "app/stable")
    try:
        validate_channel(channel)
    except ValueError as exc:
        raise r.fail("channel", str(exc)) from None
    initial_version = _version(r, "initial_version", "1.0.0")
    check_interval = r.float_("check_interval", 1.0, 0.05, 3600.0) or 1.0
    timeout = r.float_("timeout", 300.0, 1.0, 86400.0) or 300.0
    description = r.str_("description", "")
    fleet = bool(r.bool_("fleet", False))

    pubs_raw = r.get("publications")
    if pubs_raw is None:
        pubs_raw = [{"version": "2.0.0", "at": 0.0}]
    if not isinstance(pubs_raw, list) or not pubs_raw:
        raise r.fail("publications", "expected a non-empty array of tables [[publications]]")
    faults_raw = r.get("faults")
    if faults_raw is None:
        faults_raw = []
    if not isinstance(faults_raw, list):
        raise r.fail("faults", "expected an array of tables [[faults]]")
    faults = tuple(
        _parse_fault(t, f"{where}: faults[{i}]", nodes) for i, t in enumerate(faults_raw)
    )
    bad_versions = {f.version for f in faults if isinstance(f, BadReleaseFault)}

    pubs: list[Publication] = []
    previous = semver.Version.parse(initial_version)
    last_at = 0.0
    for i, table in enumerate(pubs_raw):
        pwhere = f"{where}: publications[{i}]"
        if not isinstance(table, Mapping):
            raise UsageError(f"scenario {pwhere}: expected a table")
        pr = _Reader(table, pwhere)
        if not pr.has("version"):
            raise pr.fail("version", "missing")
        version = _version(pr, "version", "")
        at = pr.float_("at", 0.0, 0.0, 86400.0) or 0.0
        stages = pr.str_("stages", "") or None
        abort_after = pr.str_("abort_after", "") or None
        changed = _share(pr, "changed")
        try:
            if stages is not None:
                parse_stages(stages)
            if abort_after is not None:
                parse_abort(abort_after)
        except ValueError as exc:
            raise pr.fail("stages" if stages else "abort_after", str(exc)) from None
        pr.done()
        if semver.Version.parse(version) <= previous:
            raise pr.fail("version", f"{version} must be newer than {previous} before it")
        if at < last_at:
            raise pr.fail("at", "publications must be in time order")
        previous, last_at = semver.Version.parse(version), at
        pubs.append(
            Publication(
                version,
                at,
                healthy=version not in bad_versions,
                stages=stages,
                abort_after=abort_after,
                changed=changed,
            )
        )
    for f in faults:
        if isinstance(f, PublisherKillFault) and f.version is None:
            faults = tuple(replace(x, version=pubs[0].version) if x is f else x for x in faults)
    killed_pubs = [f.version for f in faults if isinstance(f, PublisherKillFault)]
    if len(set(killed_pubs)) != len(killed_pubs):
        raise r.fail("faults", "one kill_publisher per publication at most")
    if set(killed_pubs) - {p.version for p in pubs}:
        raise r.fail("faults", "kill_publisher names no publication")
    unknown_bad = bad_versions - {p.version for p in pubs}
    if unknown_bad:
        raise r.fail(
            "faults", f"bad_release names no publication: {', '.join(sorted(unknown_bad))}"
        )

    late = [f.node for f in faults if isinstance(f, LateJoinFault)]
    killed = [f.node for f in faults if isinstance(f, Kill9Fault)]
    if len(set(late)) != len(late) or len(set(killed)) != len(killed):
        raise r.fail("faults", "one kill9 and one late_join per node at most")
    if len(late) >= nodes:
        raise r.fail("faults", "at least one node must start at the beginning")
    if sum(isinstance(f, AdversaryFault) for f in faults) > 1:
        raise r.fail("faults", "one adversary per scenario at most")
    if sum(isinstance(f, IntruderFault) for f in faults) > 1:
        raise r.fail("faults", "one intruder per scenario at most")

    expect_raw = r.get("expect")
    expect = (
        Expect(all_applied=True)
        if expect_raw is None
        else _parse_expect(expect_raw, f"{where}: expect")
    )
    virtual = None
    if mode == "virtual":
        virtual = _parse_virtual(r.get("virtual"), where, nodes, faults, network, topology)
        wrong = [k for k, _ in expect.items() if k not in VIRTUAL_EXPECT]
        if wrong:
            raise UsageError(
                f"scenario {where}: expect: {', '.join(wrong)} not measured in a virtual run "
                f"(it checks {', '.join(VIRTUAL_EXPECT)})"
            )
    else:
        if r.has("virtual"):
            raise r.fail("virtual", 'only goes with mode = "virtual"')
        wrong = [k for k in ("max_hops", "max_spread") if getattr(expect, k) is not None]
        if wrong:
            raise UsageError(
                f'scenario {where}: expect: {", ".join(wrong)} only with mode = "virtual"'
            )
    if any(p.changed is not None for p in pubs) and (mode == "virtual" or r.has("self_update")):
        raise r.fail("publications", "'changed' needs mode = \"processes\" and no self_update")
    self_update = None
    if r.has("self_update"):
        if mode == "virtual":
            raise r.fail("self_update", 'does not go with mode = "virtual"')
        self_update, channel, expect = _parse_self_update(
            r.get("self_update"), where, faults, pubs, expect, expect_raw is None
        )
    r.done()
    return Scenario(
        name=name,
        description=description,
        nodes=nodes,
        package_size=package_size,
        topology=topology,
        degree=degree,
        seed=seed,
        upload_limit=upload_limit,
        slow_nodes=slow_nodes,
        slow_upload_limit=slow_upload_limit,
        network=network,
        authority_peers=authority_peers,
        replicas=replicas,
        channel=channel,
        initial_version=initial_version,
        check_interval=check_interval,
        timeout=timeout,
        publications=tuple(pubs),
        faults=faults,
        expect=expect,
        source=source,
        self_update=self_update,
        fleet=fleet,
        mode=mode,
        virtual=virtual,
    )


def _parse_virtual(
    table: object, where: str, nodes: int, faults: tuple[Fault, ...], network: str, topology: str
) -> VirtualSpec:
    """The ``[virtual]`` table (optional) of a ``mode = "virtual"`` scenario."""
    vwhere = f"{where}: virtual"
    if faults:
        raise UsageError(
            f"scenario {where}: faults: a virtual run has no [[faults]]; "
            "use churn, late_joiners and connection_loss in [virtual]"
        )
    if network != "loopback":
        raise UsageError(f"scenario {where}: network: a virtual run has its own network model")
    if topology == "star":
        raise UsageError(f"scenario {where}: topology: star is not simulated; ring or random-k")
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise UsageError(f"scenario {vwhere}: expected a table [virtual]")
    r = _Reader(table, vwhere)
    authority_upload = (
        r.size("authority_upload", -1, rate=True) if r.has("authority_upload") else None
    )
    window = r.get("churn_window")
    if window is None:
        churn_window = (1.0, 10.0)
    elif (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in window)
        and 0 <= window[0] <= window[1] <= 86400
    ):
        churn_window = (float(window[0]), float(window[1]))
    else:
        raise r.fail("churn_window", "expected [start, end] seconds, 0 <= start <= end")
    spec = VirtualSpec(
        download=r.size("download", 0, rate=True),
        authority_upload=authority_upload,
        latency=r.float_("latency", 0.01, 0.0, 10.0) or 0.0,
        latency_spread=r.float_("latency_spread", 0.5, 0.0, 1.0) or 0.0,
        slow_fraction=r.float_("slow_fraction", 0.0, 0.0, 1.0) or 0.0,
        slow_factor=r.float_("slow_factor", 10.0, 1.0, 1e6) or 10.0,
        connection_loss=r.float_("connection_loss", 0.0, 0.0, 1e6) or 0.0,
        churn=r.float_("churn", 0.0, 0.0, 0.5) or 0.0,
        churn_window=churn_window,
        churn_downtime=r.float_("churn_downtime", 5.0, 0.0, 86400.0) or 0.0,
        late_joiners=r.int_("late_joiners", 0, 0, max(0, nodes - 1)),
        late_join_at=r.float_("late_join_at", 30.0, 0.0, 86400.0) or 0.0,
        gossip_only=bool(r.bool_("gossip_only", False)),
        target_connections=r.int_("target_connections", 8, 1, 1000),
        max_connections=r.int_("max_connections", 64, 1, 10000),
        fanout=r.int_("fanout", 8, 1, 1000),
        time_quantum=r.float_("time_quantum", 0.001, 0.0, 1.0) or 0.0,
    )
    r.done()
    return spec


_NOT_FOR_SELF_UPDATE = ("all_applied", "rolled_back", "final_version", "resumed")


def _parse_self_update(
    table: object,
    where: str,
    faults: tuple[Fault, ...],
    pubs: list[Publication],
    expect: Expect,
    default_expect: bool,
) -> tuple[SelfUpdate, str, Expect]:
    """The ``[self_update]`` table, the platform channel it publishes on, the expectations."""
    swhere = f"{where}: self_update"
    if not isinstance(table, Mapping):
        raise UsageError(f"scenario {swhere}: expected a table [self_update]")
    r = _Reader(table, swhere)
    spec = SelfUpdate(
        track=r.str_("track", "stable"),
        boot_attempts=r.int_("boot_attempts", 3, 1, 100),
        confirm_window=r.float_("confirm_window", 2.0, 0.1, 3600.0) or 2.0,
        wait_for_others=r.float_("wait_for_others", 20.0, 0.1, 3600.0) or 20.0,
        defect=r.str_("defect", "crash", SELF_UPDATE_DEFECTS),
        max_restarts=r.int_("max_restarts", 20, 1, 1000),
    )
    r.done()
    try:
        channel = platform_channel(spec.track)
    except UsageError as exc:
        raise r.fail("track", str(exc)) from None
    other = sorted({f.kind for f in faults if not isinstance(f, BadReleaseFault)})
    if other:
        raise UsageError(
            f"scenario {where}: faults: only bad_release goes with [self_update], "
            f"not {', '.join(other)}"
        )
    if default_expect:
        healthy = pubs[-1].healthy
        expect = Expect(self_updated=True if healthy else None,
                        self_update_rolled_back=None if healthy else True,
                        all_running=True)  # fmt: skip
    wrong = [k for k in _NOT_FOR_SELF_UPDATE if getattr(expect, k) is not None]
    if wrong:
        raise UsageError(
            f"scenario {where}: expect: {', '.join(wrong)} check an app target, which "
            "[self_update] runs have none of; use self_updated or self_update_rolled_back"
        )
    return spec, channel, expect
