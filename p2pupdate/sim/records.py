"""What the harness records of a run (:class:`RunRecord`), read by the report.

Plain data: the scenario, each node's track, the publisher runs, the faults as
injected, the adversary's and intruder's counters, each target's final version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.sim.scenario import Scenario
from p2pupdate.sim.tracker import NodeTrack

__all__ = ["CHUNK", "FaultRecord", "PublishRecord", "RunRecord", "num"]

CHUNK = DEFAULT_LIMITS.chunk_size


@dataclass
class PublishRecord:
    """One ``p2pupdate publish`` run."""

    version: str
    healthy: bool
    started: float
    ended: float | None = None
    exit_code: int | None = None
    stdout: str = ""
    bytes_uploaded: int | None = None
    address: str = ""
    log_name: str = ""  # logs/NAME.log and .out (a re-run of one version gets "-2", ...)
    killed: bool = False  # SIGKILLed by a kill_publisher fault


@dataclass
class FaultRecord:
    """A fault as it was injected (or not)."""

    kind: str
    node: int | None = None
    fired: bool = False
    fired_at: float | None = None
    progress_at_kill: float | None = None
    restarted_at: float | None = None
    detail: str = ""


@dataclass
class RunRecord:
    scenario: Scenario
    tracks: list[NodeTrack]
    addresses: dict[str, str]  # "host:port" -> label (n00.., authority, adversary)
    publishes: list[PublishRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    adversary: dict[str, Any] | None = None
    intruder: dict[str, Any] | None = None  # the membership scenario's non-member
    final_versions: dict[str, str] = field(default_factory=dict)  # node -> version of its target
    alive_at_end: dict[str, bool] = field(default_factory=dict)
    started: float = 0.0
    ready: float = 0.0
    ended: float = 0.0
    timed_out: bool = False
    interrupted: bool = False
    error: str = ""
    network: dict[str, Any] = field(default_factory=dict)
    self_update: dict[str, Any] | None = None  # p2pupdate.sim.selfupdate snapshot


def num(x: object) -> float:
    """An event field as a number (0.0 when it is missing or not one)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0
