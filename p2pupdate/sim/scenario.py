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

This module is the parser; the model it builds is :mod:`.scenariomodel` (its
names are re-exported here), finding and reading files is :mod:`.scenariofiles`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import semver

from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.rollout import parse_abort, parse_stages
from p2pupdate.errors import UsageError
from p2pupdate.selfupdate.release import platform_channel
from p2pupdate.sim.scenariofiles import (
    TableReader,
    merge_tables,
    resolve_scenario,
    shipped_scenarios,
)
from p2pupdate.sim.scenariomodel import (
    ADVERSARY_MODES,
    FAULT_KINDS,
    MAX_NODES,
    MAX_PACKAGE,
    MAX_VIRTUAL_NODES,
    MIN_PACKAGE,
    MODES,
    NETWORKS,
    SELF_UPDATE_DEFECTS,
    TOPOLOGIES,
    VIRTUAL_EXPECT,
    AdversaryFault,
    BadReleaseFault,
    Expect,
    Fault,
    IntruderFault,
    Kill9Fault,
    LateJoinFault,
    Publication,
    PublisherKillFault,
    Scenario,
    SelfUpdate,
    VirtualSpec,
)

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


def load_scenario(arg: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Find, read and validate a scenario by shipped name or path.

    ``overrides`` is merged over the file's table (like a ``base`` chain) before
    validation: the tests use it to shrink scenarios.
    """
    raw, name, where = resolve_scenario(arg)
    if overrides:
        raw = merge_tables(raw, overrides)
    return parse_scenario(raw, name=name, source=where)


def _version(r: TableReader, key: str, default: str) -> str:
    v = r.str_(key, default)
    try:
        return validate_version(v)
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None


def _share(r: TableReader, key: str) -> float | None:
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


def _node_index(r: TableReader, nodes: int) -> int:
    if not r.has("node"):
        raise r.fail("node", "missing (which node, counting from 0)")
    return r.int_("node", 0, 0, nodes - 1)


def _parse_fault(table: object, where: str, nodes: int) -> Fault:
    if not isinstance(table, Mapping):
        raise UsageError(f"scenario {where}: expected a table [[faults]]")
    r = TableReader(table, where)
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
    r = TableReader(table, where)
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
    r = TableReader(raw, where)
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
        pr = TableReader(table, pwhere)
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
    r = TableReader(table, vwhere)
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
    r = TableReader(table, swhere)
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
