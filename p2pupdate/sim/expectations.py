"""A run's expectations: the scenario's ``[expect]`` table checked against the figures.

:func:`check_expectations` is a pure function of the :class:`RunRecord` and the
report :func:`~p2pupdate.sim.report.build_report` made of it; each expectation
comes back as ``{name, expected, actual, ok, detail}``.
"""

from __future__ import annotations

from typing import Any

from p2pupdate.sim.records import CHUNK, RunRecord, num
from p2pupdate.sim.selfupdate import check_self_update

__all__ = ["check_expectations"]


def _exp(name: str, expected: object, actual: object, ok: bool, detail: str = "") -> dict[str, Any]:
    return {"name": name, "expected": expected, "actual": actual, "ok": ok, "detail": detail}


def _resumed(rec: RunRecord, report: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Each killed node fetched less than the whole package after its restart."""
    size = rec.scenario.package_size
    nchunks = -(-size // CHUNK)
    detail: dict[str, Any] = {}
    ok = True
    for f in rec.faults:
        if f.kind != "kill9" or f.node is None:
            continue
        tr = rec.tracks[f.node]
        if not f.fired or f.restarted_at is None:
            detail[tr.name] = "not killed and restarted"
            ok = False
            continue
        after = [e for e in tr.events if num(e.get("t")) >= f.restarted_at]
        first_progress = next((e for e in after if e.get("event") == "download_progress"), None)
        complete = next((e for e in after if e.get("event") == "download_complete"), None)
        refetched = None
        if complete is not None and isinstance(complete.get("sources"), dict):
            refetched = sum(int(num(v)) for v in complete["sources"].values())
        resumed_from = num(first_progress.get("bytes_done")) if first_progress else None
        node_ok = complete is not None and (
            (refetched is not None and refetched < nchunks)
            or (resumed_from is not None and resumed_from > 0)
        )
        detail[tr.name] = {
            "killed_at_progress": f.progress_at_kill,
            "chunks_fetched_after_restart": refetched,
            "first_bytes_done_after_restart": resumed_from,
            "chunks_total": nchunks,
            "ok": node_ok,
        }
        ok = ok and node_ok
    return ok, detail


def check_expectations(rec: RunRecord, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per checked expectation (plus faults_fired when there are faults)."""
    sc = rec.scenario
    exp = sc.expect
    good = sc.last_good_version
    finals = {tr.name: rec.final_versions.get(tr.name) for tr in rec.tracks}
    out: list[dict[str, Any]] = []
    if rec.faults:
        unfired = [
            f"{f.kind}" + (f" n{f.node:02d}" if f.node is not None else "")
            for f in rec.faults
            if not f.fired
        ]
        out.append(_exp("faults_fired", True, not unfired, not unfired, ", ".join(unfired)))
    if exp.all_applied is not None:
        missing = _not_applied(rec, good)
        ok = not missing
        out.append(
            _exp("all_applied", exp.all_applied, ok, ok == exp.all_applied,
                 f"not on {good}: {', '.join(missing)}" if missing else f"all on {good}")
        )  # fmt: skip
    main = next((p for p in report["publications"] if p["version"] == report["main_version"]), None)
    if exp.max_time is not None:
        last = None
        if main is not None:
            last = main["last_applied"] if main["healthy"] else main["last_settled"]
        ok = (
            last is not None
            and last <= exp.max_time
            and main is not None
            and main["nodes_settled"] == len(rec.tracks)
        )
        out.append(
            _exp("max_time", exp.max_time, last, ok, "seconds from publish to last node done")
        )
    if exp.rolled_back is not None:
        bad_versions = [p.version for p in sc.publications if not p.healthy]
        failed = sorted(
            tr.name
            for tr in rec.tracks
            if not bad_versions
            or any(
                tr.outcomes.get(v) != "rolled_back" or v not in tr.quarantined for v in bad_versions
            )
            or finals.get(tr.name) != good
        )
        ok = not failed
        out.append(
            _exp(
                "rolled_back",
                exp.rolled_back,
                ok,
                ok == exp.rolled_back,
                f"not rolled back+quarantined+on {good}: {', '.join(failed)}" if failed else "",
            )
        )
    if exp.aborted is not None or exp.max_attempted is not None:
        out.extend(_abort_expectations(rec, exp.aborted, exp.max_attempted))
    bans = report["bans"]
    if exp.adversary_banned is not None:
        adv = rec.adversary or {}
        served_to: set[str] = {
            str(rec.addresses.get(peer, peer))
            for peer, n in dict(adv.get("bad_chunks_to", {})).items()
            if n
        }
        banned_by = set(bans["of_adversary_by"])
        not_banning = sorted(served_to - banned_by)
        ok = bool(rec.adversary) and bool(banned_by) and not not_banning
        detail = f"banned by {', '.join(sorted(banned_by)) or 'nobody'}"
        if not_banning:
            detail += f"; served bad chunks but did not ban: {', '.join(not_banning)}"
        out.append(
            _exp("adversary_banned", exp.adversary_banned, ok, ok == exp.adversary_banned, detail)
        )
    if exp.intruder_got_nothing is not None:
        intr = rec.intruder or {}
        ok = bool(intr) and int(intr.get("tls_ok", 0)) > 0 and int(intr.get("leaked", 1)) == 0
        detail = (
            f"{intr.get('tls_ok', 0)} connections, received {intr.get('received', {})}"
            if intr
            else "no intruder ran"
        )
        out.append(
            _exp(
                "intruder_got_nothing",
                exp.intruder_got_nothing,
                ok,
                ok == exp.intruder_got_nothing,
                detail,
            )
        )
    if exp.no_honest_bans is not None:
        ok = not bans["of_honest"]
        detail = ", ".join(
            f"{b['by']} banned {b['peer']} ({b['reason']})" for b in bans["of_honest"]
        )
        out.append(_exp("no_honest_bans", exp.no_honest_bans, ok, ok == exp.no_honest_bans, detail))
    if exp.resumed is not None:
        ok, per_node = _resumed(rec, report)
        out.append(_exp("resumed", exp.resumed, ok, ok == exp.resumed, str(per_node)))
    ratio = report["authority"]["upload_ratio"]
    if exp.max_authority_ratio is not None:
        ok = ratio is not None and ratio <= exp.max_authority_ratio
        out.append(_exp("max_authority_ratio", exp.max_authority_ratio, ratio, ok))
    if exp.min_authority_ratio is not None:
        ok = ratio is not None and ratio >= exp.min_authority_ratio
        out.append(_exp("min_authority_ratio", exp.min_authority_ratio, ratio, ok))
    if exp.max_bound_ratio is not None:
        kr = report["kumar_ross"]
        value = kr["ratio"] if kr else None
        ok = value is not None and value <= exp.max_bound_ratio
        out.append(_exp("max_bound_ratio", exp.max_bound_ratio, value, ok,
                        "" if kr else "the scenario sets no upload_limit"))  # fmt: skip
    if exp.max_fetched_ratio is not None:
        size = sc.package_size
        worst = max((n["bytes_received"] / size for n in report["nodes"]), default=None)
        ok = worst is not None and worst <= exp.max_fetched_ratio
        shown = None if worst is None else round(worst, 4)
        out.append(_exp("max_fetched_ratio", exp.max_fetched_ratio, shown, ok,
                        "bytes fetched from peers / package size, worst node"))  # fmt: skip
    if exp.final_version is not None:
        wrong = sorted(n for n, v in finals.items() if v != exp.final_version)
        out.append(_exp("final_version", exp.final_version, finals, not wrong, ", ".join(wrong)))
    if exp.all_running is not None:
        dead = sorted(n for n, alive in rec.alive_at_end.items() if not alive)
        ok = not dead and len(rec.alive_at_end) == len(rec.tracks)
        out.append(_exp("all_running", exp.all_running, ok, ok == exp.all_running,
                        f"not running at the end: {', '.join(dead)}" if dead else ""))  # fmt: skip
    out += check_self_update(sc, rec.self_update, rec.tracks)
    return out


def _not_applied(rec: RunRecord, good: str) -> list[str]:
    """Nodes whose target is not the last good version, or that never applied it."""
    sc = rec.scenario
    out = []
    for tr in rec.tracks:
        final = rec.final_versions.get(tr.name)
        applied = good == sc.initial_version or tr.outcomes.get(good) == "applied"
        if final != good or not applied:
            out.append(tr.name)
    return sorted(out)


def _abort_expectations(
    rec: RunRecord, aborted: bool | None, max_attempted: int | None
) -> list[dict[str, Any]]:
    """``aborted``: every node that did not attempt the bad release saw it abort and
    never applied it; ``max_attempted``: how many attempted it (an ``applying``)."""
    bad = [p.version for p in rec.scenario.publications if p.abort_after]
    version = bad[-1] if bad else rec.scenario.final_publication.version
    attempted = sorted(
        tr.name
        for tr in rec.tracks
        if any(e.get("event") == "applying" and e.get("version") == version for e in tr.events)
    )
    saw = sorted(
        tr.name
        for tr in rec.tracks
        if any(
            e.get("event") == "rollout_aborted" and e.get("version") == version for e in tr.events
        )
    )
    out: list[dict[str, Any]] = []
    if aborted is not None:
        missing = sorted({tr.name for tr in rec.tracks} - set(attempted) - set(saw))
        ok = bool(saw) and not missing
        detail = f"{len(saw)} saw the abort; {len(attempted)} attempted"
        if missing:
            detail += f"; neither: {', '.join(missing)}"
        out.append(_exp("aborted", aborted, ok, ok == aborted, detail))
    if max_attempted is not None:
        ok = len(attempted) <= max_attempted
        out.append(_exp("max_attempted", max_attempted, len(attempted), ok, ", ".join(attempted)))
    return out
