"""The fleet feedback loop end to end (issue 14): real ``p2pupdate node`` processes on
127.0.0.1, real ``publish --wait``, ``fleet``, ``yank``.

Node reports carry each node's outcome back over the gossip: ``publish --wait``
knows whether the release applied, was refused (and why) or rolled back; ``fleet``
lists every node; a staged release with an abort rule stops when its first stage
fails; a yank rolls the version back everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import blake3

from tests.e2e.conftest import (
    Authority,
    NodeProc,
    StartNode,
    make_authority,
    run_cli,
    wait_until,
)
from tests.e2e.test_node_publish import CHANNEL, make_program, run_program

__all__: list[str] = []

CHUNK = 64 * 1024


def start_fleet(
    run_node: StartNode, tmp_path: Path, authority: Authority, n: int, version: str = "1.0.0"
) -> tuple[list[NodeProc], list[Path]]:
    """n nodes, each --peer the previous two, each with a target running ``version``."""
    nodes: list[NodeProc] = []
    paths: list[Path] = []
    for i in range(1, n + 1):
        (tmp_path / f"t{i}").mkdir()
        path = tmp_path / f"t{i}" / "app"
        make_program(path, version)
        paths.append(path)
        nodes.append(
            run_node(
                f"n{i}",
                trust=[authority.pubkey],
                peers=[p.addr for p in nodes[-2:]],
                targets=[f"{CHANNEL}={path}"],
            )
        )
    return nodes, paths


def publish_wait(
    authority: Authority, pkg: Path, version: str, peer: str, *extra: str, timeout: int = 120
) -> tuple[int, str, str]:
    res = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--version", version,
        "--file", pkg, "--peer", peer, "--wait", "applied", "--timeout", str(timeout), *extra,
        timeout=timeout + 30,
    )  # fmt: skip
    return res.rc, res.stdout, res.stderr


def fleet_json(data_dir: Path) -> dict[str, Any]:
    res = run_cli("fleet", "--data-dir", data_dir, "--json")
    assert res.rc == 0, res.stderr
    view: dict[str, Any] = json.loads(res.stdout)
    return view


def versions_seen(node: NodeProc) -> dict[str, str | None]:
    view = fleet_json(node.data_dir)
    return {row["node_id"]: row["version"] for row in view["nodes"] if row["channel"] == CHANNEL}


def node_id(node: NodeProc) -> str:
    res = run_cli("status", "--data-dir", node.data_dir, "--json")
    nid: str = json.loads(res.stdout)["node_id"]
    return nid.removeprefix("ed25519:")


def test_publish_wait_applied_fleet_lists_every_node_and_a_yank_rolls_back_everywhere(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths = start_fleet(run_node, tmp_path, authority, 9)
    pkg = tmp_path / "v110"
    make_program(pkg, "1.1.0", 3 * CHUNK)

    rc, out, err = publish_wait(authority, pkg, "1.1.0", nodes[0].addr)

    assert rc == 0, (out, err)
    assert "9 of 9 applied" in out, out
    for path in paths:
        assert run_program(path) == "1.1.0"
    # Every node's view fills in from the reports: all nine, on 1.1.0.
    ids = {node_id(n) for n in nodes}
    wait_until(
        "fleet view of n1",
        lambda: set(versions_seen(nodes[0]).items()) == {(i, "1.1.0") for i in ids},
        timeout=30,
    )
    # A node that joins late catches up by anti-entropy (the others send nothing new
    # until their next heartbeat, 10 minutes away).
    (tmp_path / "t10").mkdir()
    late_path = tmp_path / "t10" / "app"
    make_program(late_path, "1.0.0")
    late = run_node(
        "n10", trust=[authority.pubkey], peers=[nodes[2].addr], targets=[f"{CHANNEL}={late_path}"]
    )
    late.wait_event("update_complete", new_version="1.1.0", timeout=60)
    ids.add(node_id(late))
    wait_until(
        "fleet view of the late joiner",
        lambda: set(versions_seen(late).items()) == {(i, "1.1.0") for i in ids},
        timeout=30,
    )
    text = run_cli("fleet", "--data-dir", late.data_dir, "--channel", CHANNEL)
    assert text.rc == 0 and "10 nodes reporting" in text.stdout, text.stdout

    # Yank 1.1.0: every node running it rolls back to 1.0.0 and refuses it from then on.
    res = run_cli(
        "yank", "--key", authority.key, "--channel", CHANNEL, "--version", "1.1.0",
        "--reason", "corrupts the cache", "--peer", nodes[0].addr,
    )  # fmt: skip
    assert res.rc == 0, res.stderr
    for node in [*nodes, late]:
        event = node.wait_event("yanked", version="1.1.0", timeout=60)
        # The program there before had no recorded version (the target config gives
        # none): the rollback restores it, and its version stays unknown.
        assert "restored_version" in event and event["restored_version"] is None
        assert node.events("rolled_back", version="1.1.0", reason="operator_rollback")
    for path in [*paths, late_path]:
        assert run_program(path) == "1.0.0"


def test_untrusted_publish_with_wait_fails_with_the_refusal_reason(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths = start_fleet(run_node, tmp_path, authority, 3)
    rogue = make_authority(tmp_path / "rogue.key")
    pkg = tmp_path / "evil"
    make_program(pkg, "9.9.9", 2 * CHUNK)

    # The timeout is long: failing "within seconds" means not waiting for it.
    rc, out, err = publish_wait(rogue, pkg, "9.9.9", nodes[0].addr, timeout=600)

    assert rc == 1, (out, err)
    assert "timed out" not in err
    assert "3 refused: untrusted" in out, out
    for path in paths:
        assert run_program(path) == "1.0.0"


def _position(nid_hex: str, version: str) -> float:
    """Where a node falls in the rollout order (core.policy.in_rollout), in percent."""
    digest = blake3.blake3(bytes.fromhex(nid_hex) + version.encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100 / 2**64


def test_broken_staged_release_aborts_after_its_first_stage_and_publish_wait_exits_1(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths = start_fleet(run_node, tmp_path, authority, 10)
    # The first stage takes exactly two nodes in (node ids are random per run); the
    # rule fires once both attempted and both failed.
    # Node ids are random, and the rollout order is BLAKE3(node id || version): pick the
    # first version whose order puts the 2nd and 3rd node in different whole percents, so
    # a stage of whole percents can hold exactly two (never a flaky "too close" run).
    ids = [node_id(n) for n in nodes]
    for k in range(100):
        version = f"1.1.{k}"
        pos = sorted(_position(i, version) for i in ids)
        first_pct = math.ceil(pos[1] + 1e-9)
        if pos[2] >= first_pct:
            break
    order = sorted(nodes, key=lambda n: _position(node_id(n), version))
    first, rest = order[:2], order[2:]
    pkg = tmp_path / "broken"
    pkg.write_bytes(b"#!/bin/sh\nexit 3\n" + b"# pad\n" * 5000)
    pkg.chmod(0o755)

    rc, out, err = publish_wait(
        authority, pkg, version, nodes[0].addr,
        "--stages", f"{first_pct}%:40s,100%", "--abort-after", "100:2",
    )  # fmt: skip

    assert rc == 1, (out, err)
    assert "rollout aborted" in out, out
    assert "2 failed: rolled_back" in out, out
    for node in first:
        node.wait_event("rolled_back", version=version)
    # Every other node saw the first stage fail, stopped, and when the next stage
    # opened did not start the release.
    for node in rest:
        aborted = node.wait_event("rollout_aborted", version=version, timeout=60)
        assert aborted["failed"] == 2 and aborted["attempted"] == 2
        node.wait_event("rollout_stage", version=version, rollout=100, timeout=120)
    for node in rest:
        assert not node.events("applying", version=version), node.name
        refused = node.events("update_refused", version=version, reason="rollout_aborted")
        assert refused, node.name
    for path in paths:
        assert run_program(path) == "1.0.0"


def test_metrics_endpoint_serves_prometheus_counters_and_the_fleet_view(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    import urllib.request

    from tests.e2e.conftest import free_port

    port = free_port()
    (tmp_path / "t1").mkdir()
    path = tmp_path / "t1" / "app"
    make_program(path, "1.0.0")
    node = run_node(
        "n1",
        trust=[authority.pubkey],
        targets=[f"{CHANNEL}={path}"],
        extra=["--metrics-listen", f"127.0.0.1:{port}"],
    )
    pkg = tmp_path / "v110"
    make_program(pkg, "1.1.0", 2 * CHUNK)
    rc, out, err = publish_wait(authority, pkg, "1.1.0", node.addr)
    assert rc == 0, (out, err)

    def scrape() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text: str = resp.read().decode()
        wanted = 'p2pupdate_fleet_nodes{channel="app/stable",state="healthy",version="1.1.0"} 1.0'
        return text if wanted in text else None

    text = wait_until("metrics show the node healthy on 1.1.0", scrape, timeout=30)
    assert "p2pupdate_updates_applied_total 1.0" in text
    assert "p2pupdate_bytes_downloaded_total" in text
    assert "p2pupdate_peers_connected" in text


def test_staged_rollout_widens_as_scheduled(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths = start_fleet(run_node, tmp_path, authority, 4)
    order = sorted(nodes, key=lambda n: _position(node_id(n), "1.1.0"))
    first_pct = math.ceil(_position(node_id(order[0]), "1.1.0") + 1e-9)
    assert _position(node_id(order[1]), "1.1.0") >= first_pct, "two nodes too close; rerun"
    pkg = tmp_path / "v110"
    make_program(pkg, "1.1.0", 2 * CHUNK)

    # A tiny schedule: one node for the first 8 s, then everyone.
    rc, out, err = publish_wait(
        authority, pkg, "1.1.0", nodes[0].addr, "--stages", f"{first_pct}%:8s,100%"
    )

    assert rc == 0, (out, err)
    assert "4 of 4 applied" in out, out
    first = order[0].wait_event("update_complete", new_version="1.1.0")
    for node in order[1:]:
        # Held back while its stage was closed: it said so, then applied when it opened.
        node.wait_event("update_refused", version="1.1.0", reason="outside_rollout")
        opened = node.wait_event("rollout_stage", version="1.1.0", rollout=100)
        done = node.wait_event("update_complete", new_version="1.1.0")
        assert first["t"] < opened["t"] < done["t"]
    for path in paths:
        assert run_program(path) == "1.1.0"
