"""``node --metrics-listen HOST:PORT``: Prometheus metrics with prometheus_client.

A custom collector reads the node's state at scrape time: the scrape runs in
prometheus_client's HTTP thread, which asks the trio thread for one snapshot
(``trio.from_thread.run_sync``), so nothing the node mutates is read from
another thread. Counters of outcomes (applied, rolled back, refused by reason)
come from the node's events as they are written. Off by default.

Metric names (all prefixed ``p2pupdate_``) are listed in docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2pupdate.shell.agent import Agent

__all__ = ["MetricsServer", "Outcomes"]

log = logging.getLogger("p2pupdate.metrics")


class Outcomes:
    """Counts of update outcomes, fed by the event log's listeners."""

    def __init__(self) -> None:
        self.applied = 0
        self.rolled_back = 0
        self.aborted = 0
        self.yanked = 0
        self.refused: dict[str, int] = {}

    def on_event(self, name: str, record: dict[str, Any]) -> None:
        if name == "update_complete":
            self.applied += 1
        elif name == "rolled_back":
            self.rolled_back += 1
        elif name == "rollout_aborted":
            self.aborted += 1
        elif name == "yanked":
            self.yanked += 1
        elif name == "update_refused":
            reason = str(record.get("reason") or "unknown")
            self.refused[reason] = self.refused.get(reason, 0) + 1


def snapshot(agent: Agent, outcomes: Outcomes) -> dict[str, Any]:
    """Everything a scrape shows, read in the trio thread."""
    node, swarm = agent.node, agent.swarm
    fleet = agent.fleet(None)
    return {
        "bytes_up": swarm.bytes_uploaded,
        "bytes_down": swarm.bytes_downloaded,
        "chunks_verified": swarm.chunks_verified,
        "chunks_bad": swarm.bad_chunks,
        "peers": len(node.peers),
        "downloads": sum(1 for st in agent.channels.values() if st.download is not None),
        "bans": node.peerbook.ban_entries(),
        "applied": outcomes.applied,
        "rolled_back": outcomes.rolled_back,
        "aborted": outcomes.aborted,
        "yanked": outcomes.yanked,
        "refused": dict(outcomes.refused),
        "reports": len(node.reports.book),
        "fleet": fleet["channels"],
    }


class _Collector(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        try:
            s = self.read()
        except (trio.RunFinishedError, trio.Cancelled, RuntimeError):
            return  # the node is stopping
        p = "p2pupdate_"
        yield CounterMetricFamily(
            p + "bytes_uploaded", "Package bytes sent to peers", s["bytes_up"]
        )
        yield CounterMetricFamily(
            p + "bytes_downloaded", "Verified package bytes received", s["bytes_down"]
        )
        yield CounterMetricFamily(
            p + "chunks_verified", "Chunks received and verified", s["chunks_verified"]
        )
        yield CounterMetricFamily(
            p + "chunks_bad", "Chunks that failed verification", s["chunks_bad"]
        )
        yield GaugeMetricFamily(p + "peers_connected", "Connected peers", s["peers"])
        yield GaugeMetricFamily(p + "downloads_active", "Downloads in progress", s["downloads"])
        yield GaugeMetricFamily(p + "peers_banned", "Peers banned now", s["bans"])
        yield CounterMetricFamily(
            p + "updates_applied", "Updates installed and healthy", s["applied"]
        )
        yield CounterMetricFamily(
            p + "updates_rolled_back", "Updates rolled back", s["rolled_back"]
        )
        yield CounterMetricFamily(
            p + "rollouts_aborted", "Rollouts this node saw abort", s["aborted"]
        )
        yield CounterMetricFamily(p + "yanks", "Yanked versions acted on", s["yanked"])
        refused = CounterMetricFamily(
            p + "updates_refused", "Announcements refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(s["refused"].items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily(p + "fleet_reports", "Node reports held", s["reports"])
        fleet = GaugeMetricFamily(
            p + "fleet_nodes",
            "Nodes per channel, installed version and state (from node reports)",
            labels=["channel", "version", "state"],
        )
        for channel, versions in s["fleet"].items():
            for version, c in versions.items():
                fleet.add_metric([channel, version, "all"], c["nodes"])
                for state in ("downloading", "applying", "healthy", "rolled_back", "quarantined"):
                    fleet.add_metric([channel, version, state], c[state])
                fleet.add_metric([channel, version, "refused"], sum(c["refused"].values()))
        yield fleet


class MetricsServer:
    """The HTTP endpoint, in prometheus_client's own thread."""

    def __init__(self, agent: Agent, events: Any) -> None:
        self.outcomes = Outcomes()
        events.listeners.append(self.outcomes.on_event)
        self.agent = agent
        self.registry = CollectorRegistry()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, host: str, port: int) -> None:
        token = trio.lowlevel.current_trio_token()

        def read() -> dict[str, Any]:
            return trio.from_thread.run_sync(snapshot, self.agent, self.outcomes, trio_token=token)

        self.registry.register(_Collector(read))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
