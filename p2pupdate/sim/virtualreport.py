"""The report of a virtual run: figures, expectations, the summary lines, the CDF plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from p2pupdate.core.codec import encode
from p2pupdate.core.messages import MESSAGE_TYPES, Inventory
from p2pupdate.core.netmodel import (
    kumar_ross_heterogeneous,
    percentile,
)
from p2pupdate.sim.virtualrun import VirtualRun

__all__ = ["build_virtual_report", "check_virtual", "plot_cdf", "virtual_summary"]

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
