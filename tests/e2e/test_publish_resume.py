"""A publisher killed mid-seed, and the same ``publish`` run again: the rollout finishes.

Real ``p2pupdate node`` processes and real ``p2pupdate publish`` processes on 127.0.0.1,
every upload limited so that the first publish is still seeding when it is SIGKILLed.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import blake3

from tests.e2e.conftest import P2P, Authority, NodeProc, StartNode, wait_until
from tests.e2e.test_node_publish import CHANNEL, CHUNK, make_program

__all__: list[str] = []

LIMIT = "2MiB/s"


def _publish_argv(
    authority: Authority, pkg: Path, nodes: list[NodeProc], timeout: int
) -> list[str]:
    argv = [*P2P, "publish", "--key", str(authority.key), "--channel", CHANNEL]
    argv += ["--version", "2.0.0", "--file", str(pkg), "--replicas", str(len(nodes))]
    argv += ["--timeout", str(timeout), "--upload-limit", LIMIT]
    for node in nodes:
        argv += ["--peer", node.addr]
    return argv


def _latest_done(node: NodeProc) -> int:
    """Bytes the node holds verified, by its latest progress (0 before any)."""
    if node.events("download_complete", version="2.0.0"):
        return -1
    progress = node.events("download_progress", version="2.0.0")
    return int(progress[-1]["bytes_done"]) if progress else 0


def test_publisher_killed_mid_seed_then_the_same_publish_again_finishes_the_rollout(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nchunks = 128
    pkg = tmp_path / "app-2.0.0"
    data = make_program(pkg, "2.0.0", nchunks * CHUNK)  # 8 MiB: 4 s of the publisher's limit
    size = len(data)
    nodes: list[NodeProc] = []
    for i in range(5):
        peers = [nodes[0].addr] if nodes else []
        nodes.append(
            run_node(
                f"n{i}", trust=[authority.pubkey], peers=peers, extra=["--upload-limit", LIMIT]
            )
        )
    err_path = tmp_path / "publish1.err"
    with open(err_path, "wb") as err:
        first = subprocess.Popen(
            _publish_argv(authority, pkg, nodes, 60),
            stdout=subprocess.DEVNULL,
            stderr=err,
            process_group=0,
        )
        try:

            def a_third_out() -> bool:
                # Every node has started, and between them they hold about a third.
                done = [_latest_done(n) for n in nodes]
                return min(done) != 0 and max(done) >= size // 3

            wait_until("the swarm to hold a third", a_third_out, timeout=60)
            first.send_signal(signal.SIGKILL)  # the operator's terminal died
            first.wait(timeout=10)
        finally:
            first.kill()
            first.wait()
    assert not any(n.events("download_complete") for n in nodes), "the publisher was too fast"

    # With their source gone the nodes trade what they have and then stall, all alike.
    def stalled() -> int | None:
        done = {_latest_done(n) for n in nodes}
        return done.pop() if len(done) == 1 else None

    held = wait_until("the nodes to stall at the same point", stalled, timeout=30)
    assert 0 < held < size

    res = subprocess.run(
        _publish_argv(authority, pkg, nodes, 90), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    package_id = blake3.blake3(data).hexdigest()
    for node in nodes:
        node.wait_event("download_complete", timeout=30, version="2.0.0", package_id=package_id)
    uploaded = re.search(r"uploaded (\d+) bytes", res.stdout)
    assert uploaded is not None, res.stdout
    sent = int(uploaded.group(1))
    missing = size - held  # at most this was missing from the swarm (it held at least `held`)
    # Every missing chunk had to come from the publisher, and little else did.
    resumed = re.search(r"swarm held (\d+) of (\d+) chunks", res.stdout)
    assert resumed is not None, res.stdout
    swarm_had, total = int(resumed.group(1)), int(resumed.group(2))
    assert total == nchunks
    assert swarm_had * CHUNK >= held  # it saw at least what the nodes reported
    assert sent >= (nchunks - swarm_had) * CHUNK - CHUNK
    assert 0 < sent <= missing + size // 4, (sent, missing)
    assert sent < size * 0.85
