"""The figures of a finished run, its expectations, report.json and the summary text.

:func:`build_report` is a pure function of a :class:`RunRecord` (what the
harness saw: the scenario, each node's events, the publisher runs, the faults
it injected, the adversary's counters, each target file's final content) and
returns the report as a JSON-ready dict: every figure of the summary plus
every node's event stream. :func:`check_expectations` (:mod:`.expectations`)
compares the figures with the scenario's ``[expect]`` table; :func:`summary_lines` renders the
figures for people. Nothing here reads files or clocks; the harness writes
report.json and the plot.

Times are seconds from the start of the publication they belong to (the
moment the harness started ``p2pupdate publish``). The Kumar-Ross bound for a
swarm of N nodes, each uploading at u, fed by an authority uploading at u_s,
is max(F/u_s, N*F/(u_s + N*u)); with unequal uploads (a scenario's ``slow_nodes``
at ``slow_upload_limit``) max(F/u_s, N*F/(u_s + sum u_i)). The run's distribution
time (first announcement received to last download complete) is reported over
it, with each node's download-complete time, their spread, and how many chunks
each node got from the authority.
"""

from __future__ import annotations

import math
from typing import Any

from p2pupdate.core.rollout import parse_stages
from p2pupdate.core.units import format_size
from p2pupdate.sim.expectations import check_expectations
from p2pupdate.sim.records import CHUNK, FaultRecord, PublishRecord, RunRecord, num
from p2pupdate.sim.selfupdate import summary as self_update_summary
from p2pupdate.sim.tracker import NodeTrack

__all__ = [
    "FaultRecord",
    "PublishRecord",
    "RunRecord",
    "build_report",
    "check_expectations",
    "kumar_ross_bound",
    "kumar_ross_unequal",
    "summary_lines",
]


def kumar_ross_bound(size: int, nodes: int, node_upload: float, source_upload: float) -> float:
    """Lower bound on the time to get ``size`` bytes to ``nodes`` peers (seconds)."""
    if node_upload <= 0 or source_upload <= 0 or nodes <= 0:
        raise ValueError("rates and node count must be positive")
    return max(size / source_upload, nodes * size / (source_upload + nodes * node_upload))


def kumar_ross_unequal(size: int, source_upload: float, uploads: list[float]) -> float:
    """The bound for unequal uploads: max(F/u_s, N*F/(u_s + sum u_i)) (seconds)."""
    if source_upload <= 0 or not uploads or min(uploads) <= 0:
        raise ValueError("rates and node count must be positive")
    n = len(uploads)
    return max(size / source_upload, n * size / (source_upload + sum(uploads)))


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def _label(addresses: dict[str, str], peer: str) -> str:
    return addresses.get(peer, peer)


def _main_publication(rec: RunRecord) -> PublishRecord | None:
    """The publication the headline figures are about: the last healthy one, else the last."""
    for pub in reversed(rec.publishes):
        if pub.healthy:
            return pub
    return rec.publishes[-1] if rec.publishes else None


def _pub_figures(rec: RunRecord, pub: PublishRecord) -> dict[str, Any]:
    v = pub.version
    announced = [
        ev["t"] for tr in rec.tracks if (ev := tr.first("announcement_received", v)) is not None
    ]
    done = {
        tr.name: tr.outcome_at[v] - pub.started
        for tr in rec.tracks
        if tr.outcomes.get(v) in ("applied", "rolled_back")
    }
    complete_at = {
        tr.name: float(ev["t"])
        for tr in rec.tracks
        if (ev := tr.first("download_complete", v)) is not None
    }
    complete = list(complete_at.values())
    applied = {
        tr.name: tr.outcome_at[v] - pub.started
        for tr in rec.tracks
        if tr.outcomes.get(v) == "applied"
    }
    first_ann = min(announced) if announced else None
    out: dict[str, Any] = {
        "version": v,
        "healthy": pub.healthy,
        "published_at": _r(pub.started - rec.started),
        "publish_exit_code": pub.exit_code,
        "publish_seconds": _r(pub.ended - pub.started) if pub.ended is not None else None,
        "bytes_uploaded_by_authority": pub.bytes_uploaded,
        "first_announced": _r(first_ann - pub.started) if first_ann is not None else None,
        "nodes_announced": len(announced),
        "nodes_applied": len(applied),
        "nodes_settled": len(done),
        "first_applied": _r(min(applied.values())) if applied else None,
        "last_applied": _r(max(applied.values())) if applied else None,
        "last_settled": _r(max(done.values())) if done else None,
        "per_node": {k: _r(x) for k, x in sorted(done.items())},
        "stages": _stages_of(rec, v),
        "distribution_time": (
            _r(max(complete) - first_ann) if complete and first_ann is not None else None
        ),
        # per node: download complete, seconds after the first announcement; the spread
        # is the last minus the first
        "download_complete": {k: _r(x - first_ann) for k, x in sorted(complete_at.items())}
        if first_ann is not None
        else {},
        "completion_spread": _r(max(complete) - min(complete)) if complete else None,
        "outcomes": {tr.name: tr.outcomes.get(v) for tr in rec.tracks},
    }
    return out


def _node_figures(rec: RunRecord, tr: NodeTrack) -> dict[str, Any]:
    sources = {_label(rec.addresses, peer): n for peer, n in sorted(tr.sources.items())}
    chunks = sum(tr.sources.values())
    received = min(chunks * CHUNK, rec.scenario.package_size) if chunks else 0
    return {
        "name": tr.name,
        "address": tr.address,
        "final_version": rec.final_versions.get(tr.name),
        "installed_version_from_events": tr.version,
        "outcomes": dict(tr.outcomes),
        "quarantined": sorted(tr.quarantined),
        "chunks_received": chunks,
        "bytes_received": received,
        "bytes_reused": tr.reused_bytes,
        "sources": sources,
        "restarts": tr.restarts,
        "alive_at_end": rec.alive_at_end.get(tr.name),
        "exit_code": tr.exit_code,
        "bans": [
            {
                "peer": _label(rec.addresses, str(b.get("peer"))),
                "address": b.get("peer"),
                "reason": b.get("reason"),
                "t": _r(num(b.get("t")) - rec.started),
            }
            for b in tr.bans
        ],
        "events": tr.events,
    }


def _authority(rec: RunRecord, main: PublishRecord | None) -> dict[str, Any]:
    size = rec.scenario.package_size
    if main is None:
        return {"bytes_uploaded": None, "upload_ratio": None, "measured_by": None}
    # Who the authority's chunks went to (each node's download_complete sources).
    to = {
        tr.name: sum(n for peer, n in tr.sources.items() if rec.addresses.get(peer) == "authority")
        for tr in rec.tracks
    }
    if main.bytes_uploaded is not None:
        return {
            "bytes_uploaded": main.bytes_uploaded,
            "upload_ratio": _r(main.bytes_uploaded / size),
            "measured_by": "publish output",
            "chunks_to": to,
        }
    chunks = sum(
        n
        for tr in rec.tracks
        for peer, n in tr.sources.items()
        if rec.addresses.get(peer) == "authority"
    )
    if not any(tr.sources for tr in rec.tracks):
        return {"bytes_uploaded": None, "upload_ratio": None, "measured_by": None}
    return {
        "bytes_uploaded": chunks * CHUNK,
        "upload_ratio": _r(chunks * CHUNK / size),
        "measured_by": "chunk sources reported by the nodes",
        "chunks_to": to,
    }


def _bans(rec: RunRecord) -> dict[str, Any]:
    adversary = rec.adversary["address"] if rec.adversary else None
    all_bans: list[dict[str, Any]] = []
    for tr in rec.tracks:
        for b in tr.bans:
            peer = str(b.get("peer"))
            all_bans.append(
                {
                    "by": tr.name,
                    "peer": _label(rec.addresses, peer),
                    "address": peer,
                    "reason": b.get("reason"),
                }
            )
    honest = [b for b in all_bans if b["address"] != adversary]
    by_node_of_adv = sorted({b["by"] for b in all_bans if b["address"] == adversary})
    return {"all": all_bans, "of_adversary_by": by_node_of_adv, "of_honest": honest}


def _reuse(
    nodes: list[dict[str, Any]], size: int, kr: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What the nodes fetched and what they had locally (None when nobody reused anything)."""
    if not any(n["bytes_reused"] for n in nodes) or size <= 0:
        return None
    fetched = [n["bytes_received"] / size for n in nodes]
    return {
        "bytes_reused": {n["name"]: n["bytes_reused"] for n in nodes},
        "fetched_ratio": {n["name"]: _r(f, 4) for n, f in zip(nodes, fetched, strict=True)},
        "max_fetched_ratio": _r(max(fetched), 4),
        "mean_fetched_ratio": _r(sum(fetched) / len(fetched), 4),
        # The distribution time over the Kumar-Ross bound of a full transfer of the package.
        "time_vs_full_bound": kr["ratio"] if kr else None,
    }


def build_report(rec: RunRecord) -> dict[str, Any]:
    """Every figure of the run and every node's event stream, JSON-ready."""
    sc = rec.scenario
    main = _main_publication(rec)
    pubs = [_pub_figures(rec, p) for p in rec.publishes]
    main_fig = next((f for f in pubs if main is not None and f["version"] == main.version), None)
    kr: dict[str, Any] | None = None
    if sc.upload_limit > 0 and main_fig is not None:
        uploads = [float(sc.node_upload_limit(tr.index)) for tr in rec.tracks]
        bound = kumar_ross_unequal(sc.package_size, sc.upload_limit, uploads)
        dist = main_fig["distribution_time"]
        last = main_fig["last_applied"]
        kr = {
            "bound": _r(bound),
            "formula": "max(F/u_s, N*F/(u_s + sum u_i))",
            "upload_limit": sc.upload_limit,
            "slow_nodes": [
                tr.name for tr in rec.tracks if sc.node_upload_limit(tr.index) != sc.upload_limit
            ],
            "slow_upload_limit": sc.slow_upload_limit or None,
            "distribution_time": dist,
            "ratio": _r(dist / bound) if dist is not None else None,
            "last_applied_ratio": _r(last / bound) if last is not None else None,
        }
    bad = {
        "served_by_adversary": rec.adversary.get("bad_chunks_served", 0) if rec.adversary else 0,
        "bad_table_pages_served": (
            rec.adversary.get("bad_table_pages_served", 0) if rec.adversary else 0
        ),
    }
    report: dict[str, Any] = {
        "scenario": {
            "name": sc.name,
            "source": sc.source,
            "description": sc.description,
            "nodes": sc.nodes,
            "package_size": sc.package_size,
            "topology": sc.topology,
            "degree": sc.degree,
            "upload_limit": sc.upload_limit,
            "slow_nodes": sc.slow_nodes,
            "slow_upload_limit": sc.slow_upload_limit,
            "network": sc.network,
            "channel": sc.channel,
            "initial_version": sc.initial_version,
            "publications": [p.__dict__ for p in sc.publications],
            "faults": [f.__dict__ for f in sc.faults],
            "expect": dict(sc.expect.items()),
        },
        "network": rec.network,
        "duration": _r(rec.ended - rec.started),
        "setup_time": _r(rec.ready - rec.started) if rec.ready else None,
        "timed_out": rec.timed_out,
        "interrupted": rec.interrupted,
        "error": rec.error or None,
        "main_version": main.version if main else None,
        "time_to_first_applied": main_fig["first_applied"] if main_fig else None,
        "time_to_last_applied": main_fig["last_applied"] if main_fig else None,
        "publications": pubs,
        "authority": _authority(rec, main),
        "kumar_ross": kr,
        "bad_chunks": bad,
        "bans": _bans(rec),
        "adversary": rec.adversary,
        "intruder": rec.intruder,
        "faults": [f.__dict__ for f in rec.faults],
        "publish_runs": [p.__dict__ for p in rec.publishes],
        "addresses": rec.addresses,
        "nodes": [_node_figures(rec, tr) for tr in rec.tracks],
        "self_update": rec.self_update,
    }
    report["reuse"] = _reuse(report["nodes"], sc.package_size, kr)
    report["expectations"] = check_expectations(rec, report)
    report["ok"] = (
        all(e["ok"] for e in report["expectations"])
        and not rec.interrupted
        and not rec.timed_out
        and not rec.error
    )
    return report


# -- text ----------------------------------------------------------------------------


def _fmt_t(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def summary_lines(report: dict[str, Any], out_dir: str, plot: str | None) -> list[str]:
    """The end-of-run summary, one string per line."""
    sc = report["scenario"]
    limit = format_size(sc["upload_limit"]) + "/s" if sc["upload_limit"] else "unlimited"
    if sc.get("slow_nodes"):
        limit += f" ({sc['slow_nodes']} at {format_size(sc['slow_upload_limit'])}/s)"
    lines = [
        f"scenario {sc['name']}: {sc['nodes']} nodes, {format_size(sc['package_size'])}, "
        f"{sc['topology']} topology, {sc['network']} network, upload {limit}",
    ]
    for p in report["publications"]:
        tag = "" if p["healthy"] else " (bad release)"
        lines.append(
            f"  {p['version']}{tag}: announced +{_fmt_t(p['first_announced'])}, "
            f"applied by {p['nodes_applied']}/{len(report['nodes'])}, "
            f"first {_fmt_t(p['first_applied'])}, last {_fmt_t(p['last_applied'])}"
            + ("" if p["healthy"] else f", all settled {_fmt_t(p['last_settled'])}")
        )
    main = next((p for p in report["publications"] if p["version"] == report["main_version"]), None)
    if main and main["per_node"]:
        per = "  ".join(f"{k} {v:.2f}s" for k, v in main["per_node"].items())
        lines.append(f"  per node ({main['version']}): {per}")
    auth = report["authority"]
    if auth["upload_ratio"] is not None:
        lines.append(
            f"  authority uploaded {format_size(auth['bytes_uploaded'])} = "
            f"{auth['upload_ratio']:.2f}x the package ({auth['measured_by']})"
        )
    if any(auth.get("chunks_to", {}).values()):
        lines.append(
            "  chunks from the authority: "
            + ", ".join(f"{k} {v}" for k, v in auth["chunks_to"].items())
        )
    if main and main.get("completion_spread") is not None:
        lines.append(
            "  download complete (s after the announcement): "
            + "  ".join(f"{k} {v:.2f}" for k, v in main["download_complete"].items())
            + f"; spread {main['completion_spread']:.2f}s"
        )
    got = [
        f"{n['name']} {format_size(n['bytes_received'])}"
        for n in report["nodes"]
        if n["chunks_received"]
    ]
    if got:
        lines.append("  bytes received: " + ", ".join(got))
    reuse = report.get("reuse")
    if reuse:
        lines.append(
            "  bytes reused from local files: "
            + ", ".join(f"{k} {format_size(v)}" for k, v in reuse["bytes_reused"].items())
        )
        vs = reuse["time_vs_full_bound"]
        lines.append(
            f"  fetched {100 * reuse['mean_fetched_ratio']:.1f}% of the package per node "
            f"(worst {100 * reuse['max_fetched_ratio']:.1f}%)"
            + ("" if vs is None else f"; time = {vs:.2f}x a full transfer's Kumar-Ross bound")
        )
    bad = report["bad_chunks"]
    bans = report["bans"]
    if report["adversary"] or bans["all"]:
        lines.append(
            f"  bad chunks served: {bad['served_by_adversary']}, bad table pages: "
            f"{bad['bad_table_pages_served']}; bans: {len(bans['all'])} "
            f"(adversary banned by {', '.join(bans['of_adversary_by']) or 'nobody'}; "
            f"honest peers banned: {len(bans['of_honest'])})"
        )
    kr = report["kumar_ross"]
    if kr:
        ratio = "-" if kr["ratio"] is None else f"{kr['ratio']:.2f}x"
        lines.append(
            f"  Kumar-Ross bound {kr['bound']:.2f}s ({kr.get('formula', '')}); distribution took "
            f"{_fmt_t(kr['distribution_time'])} = {ratio} the bound"
        )
    for f in report["faults"]:
        what = f"n{f['node']:02d} " if f["node"] is not None else ""
        state = "fired" if f["fired"] else "NOT fired"
        lines.append(
            f"  fault {f['kind']} {what}{state}{': ' + f['detail'] if f['detail'] else ''}"
        )
    if report.get("self_update"):
        lines += self_update_summary(report["self_update"])
    if report["timed_out"]:
        lines.append(f"  TIMED OUT after {report['duration']:.1f}s")
    if report["error"]:
        lines.append(f"  error: {report['error']}")
    for e in report["expectations"]:
        mark = "ok  " if e["ok"] else "FAIL"
        detail = f" ({e['detail']})" if e["detail"] and not e["ok"] else ""
        lines.append(f"  [{mark}] {e['name']}: expected {e['expected']}, got {e['actual']}{detail}")
    lines.append(("PASSED" if report["ok"] else "FAILED") + f"; report: {out_dir}/report.json"
                 + (f", timeline: {plot}" if plot else ""))  # fmt: skip
    return lines


def _stages_of(rec: RunRecord, version: str) -> list[list[int]]:
    """[[percent, seconds after publishing], ...] of a staged publication, else []."""
    for p in rec.scenario.publications:
        if p.version == version and p.stages:
            return [list(st) for st in parse_stages(p.stages)]
    return []
