"""``p2pupdate node`` and ``p2pupdate publish`` end to end: real processes, real TCP.

Each test starts ``p2pupdate node`` subprocesses on 127.0.0.1 (free ports, data
dirs under ``tmp_path``), publishes with the real ``p2pupdate publish``, and
checks what an operator would check: the target files, the events files, the
exit codes and output of the commands, ``p2pupdate status``.

Targets are small executable shell scripts that print their version (the
default health check runs them with ``--version``); padding comment lines make
them as large as a test needs (several chunks, or 8 MiB for a slow download).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import blake3
import pytest

from tests.e2e.conftest import (
    P2P,
    Authority,
    NodeProc,
    StartNode,
    free_port,
    make_authority,
    run_cli,
    sigint_as_in_a_terminal,
    wait_until,
)

__all__: list[str] = []

CHUNK = 64 * 1024
CHANNEL = "app/stable"
# What every node that applies an update writes, in this order (download_progress may
# come between; nothing else about the release may be missing).
FLOW = [
    "announcement_received",
    "download_started",
    "download_complete",
    "verifying",
    "applying",
    "update_complete",
]


def make_program(path: Path, version: str, size: int = 0) -> bytes:
    """An executable sh script printing ``version``, padded with comments to ``size`` bytes."""
    head = f"#!/bin/sh\necho {version}\nexit 0\n".encode()
    body = bytearray(head)
    while len(body) < size:
        body += b"# " + os.urandom(40).hex().encode() + b"\n"
    data = bytes(body[: max(size, len(head))])
    path.write_bytes(data)
    path.chmod(0o755)
    return data


def run_program(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def publish(
    authority: Authority, package: Path, version: str, *peers: str, replicas: int, timeout: int = 20
) -> tuple[int, str, str]:
    argv: list[str | Path] = [
        "publish",
        "--key",
        authority.key,
        "--channel",
        CHANNEL,
        "--version",
        version,
        "--file",
        package,
        "--replicas",
        str(replicas),
        "--timeout",
        str(timeout),
    ]
    for peer in peers:
        argv += ["--peer", peer]
    res = run_cli(*argv, timeout=timeout + 15)
    return res.rc, res.stdout, res.stderr


def flow_of(node: NodeProc, version: str) -> list[str]:
    """The FLOW events of ``version`` in the order the node wrote them."""
    return [
        e["event"]
        for e in node.events()
        if e["event"] in FLOW and e.get("version") == version and e.get("channel") == CHANNEL
    ]


def start_line(
    run_node: StartNode, tmp_path: Path, authority: Authority, version: str = "1.0.0"
) -> tuple[list[NodeProc], list[Path], bytes]:
    """Three nodes in a line (each --peer the previous), each with a target running ``version``."""
    nodes: list[NodeProc] = []
    paths: list[Path] = []
    old = b""
    for i in (1, 2, 3):
        (tmp_path / f"t{i}").mkdir()
        path = tmp_path / f"t{i}" / "app"
        old = make_program(path, version)
        paths.append(path)
        peers = [nodes[-1].addr] if nodes else []
        nodes.append(
            run_node(f"n{i}", trust=[authority.pubkey], peers=peers, targets=[f"{CHANNEL}={path}"])
        )
    return nodes, paths, old


def status_json(data_dir: Path) -> dict[str, Any]:
    res = run_cli("status", "--data-dir", data_dir, "--json")
    status: dict[str, Any] = json.loads(res.stdout)
    # 0 from a running node; 3 (not running) when it is the saved snapshot.
    assert res.rc == (0 if status["running"] else 3), res.stderr
    return status


# ---------------------------------------------------------------- the whole flow


def test_publish_reaches_three_nodes_in_a_line_and_every_target_updates(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths, _ = start_line(run_node, tmp_path, authority)
    size = 5 * CHUNK - 1000  # five chunks, the last one short
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", size)

    rc, out, err = publish(authority, pkg, "2.0.0", nodes[0].addr, replicas=3)

    assert rc == 0, err
    assert "Traceback" not in err
    package_id = blake3.blake3(new).hexdigest()
    assert package_id in out
    uploaded = re.search(r"uploaded (\d+) bytes", out)
    assert uploaded is not None, out
    assert int(uploaded.group(1)) >= size  # every chunk left the publisher at least once
    for node, path in zip(nodes, paths, strict=True):
        done = node.wait_event("update_complete", channel=CHANNEL, new_version="2.0.0")
        assert done["old_version"] is None  # a target given on the command line: unknown
        assert done["version"] == "2.0.0"
        assert done["package_id"] == package_id
        assert flow_of(node, "2.0.0") == FLOW
        received = node.events("announcement_received", version="2.0.0")[0]
        assert received["size"] == size
        assert received["package_id"] == package_id
        complete = node.events("download_complete", version="2.0.0")[0]
        assert sum(complete["sources"].values()) == 5
        assert all(re.fullmatch(r"127\.0\.0\.1:\d+", src) for src in complete["sources"])
        assert path.read_bytes() == new
        assert run_program(path) == "2.0.0"
        assert not node.events("update_failed")

    # A newer release, published at the other end of the line, flows back the other way.
    pkg2 = tmp_path / "app-2.1.0"
    newer = make_program(pkg2, "2.1.0", 2 * CHUNK)
    rc, out, err = publish(authority, pkg2, "2.1.0", nodes[2].addr, replicas=3)
    assert rc == 0, err
    for node, path in zip(nodes, paths, strict=True):
        done = node.wait_event("update_complete", channel=CHANNEL, new_version="2.1.0")
        assert done["old_version"] == "2.0.0"
        assert flow_of(node, "2.1.0") == FLOW
        assert path.read_bytes() == newer
        assert run_program(path) == "2.1.0"


def test_publish_with_an_untrusted_key_changes_nothing(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes, paths, old = start_line(run_node, tmp_path, authority)
    rogue = make_authority(tmp_path / "rogue.key")
    pkg = tmp_path / "evil"
    make_program(pkg, "9.9.9", 3 * CHUNK)

    rc, out, err = publish(rogue, pkg, "9.9.9", nodes[0].addr, replicas=1, timeout=2)

    assert rc == 1
    assert "Traceback" not in err
    # Progress lines ("publish: ...") aside, the failure is one line.
    errors = [line for line in err.splitlines() if line and not line.startswith("publish: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith("p2pupdate: timed out"), errors[0]
    assert "0 of 1" in errors[0]
    assert not out.strip()
    refused = nodes[0].wait_event("update_refused", version="9.9.9")
    assert refused["reason"] == "untrusted"
    for node, path in zip(nodes, paths, strict=True):
        assert node.proc.poll() is None
        assert path.read_bytes() == old
        for name in ("announcement_received", "download_started", "applying"):
            assert not node.events(name), (node.name, name)
        assert all(e["reason"] == "untrusted" for e in node.events("update_refused"))
        assert node.data_dir.joinpath("announcements").exists() is False


def test_sigterm_mid_download_stops_cleanly_and_restart_fetches_only_missing_chunks(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nchunks = 128
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", nchunks * CHUNK)  # 8 MiB
    (tmp_path / "tb").mkdir()
    target = tmp_path / "tb" / "app"
    make_program(target, "1.0.0")
    seed = run_node("a", trust=[authority.pubkey])  # no target: relays and caches
    slow_args = ["--download-limit", "2MiB/s"]
    slow = run_node(
        "b",
        trust=[authority.pubkey],
        peers=[seed.addr],
        targets=[f"{CHANNEL}={target}"],
        extra=slow_args,
    )
    rc, _, err = publish(authority, pkg, "2.0.0", seed.addr, replicas=1)
    assert rc == 0, err

    def a_quarter_done() -> dict[str, Any] | None:
        hits = [e for e in slow.events("download_progress") if e["bytes_done"] >= 2 * 1024**2]
        return hits[0] if hits else None

    wait_until("b a quarter done", a_quarter_done, alive=[slow])
    # A clean exit (rc 0). How long it took is not asserted beyond stop()'s generous
    # deadline: a tight wall-clock bound fails on a loaded machine.
    rc, _seconds = slow.stop(signal.SIGTERM)
    assert rc == 0, slow.log_text()
    assert not slow.events("download_complete")
    assert target.read_bytes() != new
    progress = slow.events("download_progress")
    had = max(e["bytes_done"] for e in progress) // CHUNK  # verified before the stop
    assert 0 < had < nchunks

    again = run_node(
        "b",
        trust=[authority.pubkey],
        peers=[seed.addr],
        targets=[f"{CHANNEL}={target}"],
        extra=slow_args,
        port=slow.port,
    )
    done = again.wait_event("update_complete", timeout=30, new_version="2.0.0")
    assert done["old_version"] is None
    complete = again.events("download_complete", version="2.0.0")
    assert len(complete) == 1
    # Only what the stopped node had not verified is fetched again. Zero is possible:
    # chunks verified after the last progress event (on a loaded machine the stop can
    # come late) are on disk too, and the restart finds them.
    fetched = sum(complete[0]["sources"].values())
    assert fetched <= nchunks - had, (fetched, had)
    assert target.read_bytes() == new
    assert run_program(target) == "2.0.0"


def test_republishing_a_version_with_a_wider_rollout_applies_it_where_it_was_held_back(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    nodes: list[NodeProc] = []
    paths: list[Path] = []
    for i in (1, 2):
        (tmp_path / f"t{i}").mkdir()
        paths.append(tmp_path / f"t{i}" / "app")
        old = make_program(paths[-1], "1.0.0")
        peers = [nodes[-1].addr] if nodes else []
        nodes.append(
            run_node(
                f"n{i}", trust=[authority.pubkey], peers=peers, targets=[f"{CHANNEL}={paths[-1]}"]
            )
        )
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", 2 * CHUNK)

    def publish_with_rollout(pct: int) -> None:
        res = run_cli(
            "publish", "--key", authority.key, "--channel", CHANNEL, "--version", "2.0.0",
            "--file", pkg, "--peer", nodes[0].addr, "--replicas", "2", "--rollout", str(pct),
            "--timeout", "20", timeout=40,
        )  # fmt: skip
        assert res.rc == 0, res.stderr

    # Rollout 0: every node downloads, caches and serves it, none applies it.
    publish_with_rollout(0)
    for node, path in zip(nodes, paths, strict=True):
        refused = node.wait_event("update_refused", version="2.0.0")
        assert refused["reason"] == "outside_rollout"
        node.wait_event("download_complete", version="2.0.0")
        assert path.read_bytes() == old
        assert not node.events("applying")

    # The same version and package signed again later (`created` has one-second
    # resolution) with rollout 100 replaces the first announcement and is applied.
    second = int(time.time()) + 1
    while time.time() < second:
        time.sleep(0.05)
    publish_with_rollout(100)
    for node, path in zip(nodes, paths, strict=True):
        node.wait_event("update_complete", new_version="2.0.0")
        assert path.read_bytes() == new
        assert len(node.events("download_complete", version="2.0.0")) == 1  # not fetched twice

    # --dry-run prints what would be signed and sends nothing.
    dry = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--renew", "2.0.0",
        "--file", pkg, "--expires", "60d", "--dry-run",
    )  # fmt: skip
    assert dry.rc == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert (planned["version"], planned["package_id"]) == ("2.0.0", blake3.blake3(new).hexdigest())
    assert planned["expires"] - planned["created"] == 60 * 86400

    # --renew re-signs 2.0.0 with a later expiry: the nodes keep it (no new download, no
    # new install) and store the renewed announcement.
    def stored_expires(node: NodeProc) -> int:
        status = json.loads(run_cli("status", "--data-dir", node.data_dir, "--json").stdout)
        return int(status["channels"][CHANNEL]["expires"])

    before = [stored_expires(n) for n in nodes]
    second = int(time.time()) + 1
    while time.time() < second:
        time.sleep(0.05)
    res = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--renew", "2.0.0",
        "--file", pkg, "--peer", nodes[0].addr, "--replicas", "2", "--expires", "60d",
        "--timeout", "20", timeout=40,
    )  # fmt: skip
    assert res.rc == 0, res.stderr
    for node, was in zip(nodes, before, strict=True):

        def renewed(n: NodeProc = node, w: int = was) -> bool:
            return stored_expires(n) > w

        wait_until(f"{node.name} to hold the renewed expiry", renewed)
        assert len(node.events("download_complete", version="2.0.0")) == 1
        assert len(node.events("update_complete", new_version="2.0.0")) == 1

    # Without the file: --renew takes the package a node has cached (its data dir), after
    # hashing it again, and every node takes the renewal as before.
    before = [stored_expires(n) for n in nodes]
    second = int(time.time()) + 1
    while time.time() < second:
        time.sleep(0.05)
    res = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--renew", "2.0.0",
        "--data-dir", nodes[1].data_dir, "--peer", nodes[0].addr, "--replicas", "2",
        "--expires", "60d", "--timeout", "20", timeout=40,
    )  # fmt: skip
    assert res.rc == 0, res.stderr
    for node, was in zip(nodes, before, strict=True):

        def renewed_again(n: NodeProc = node, w: int = was) -> bool:
            return stored_expires(n) > w

        wait_until(f"{node.name} to hold the second renewal", renewed_again)
        assert len(node.events("download_complete", version="2.0.0")) == 1

    # The same bytes as a new version: 2.0.0 was published from here with these bytes
    # (publish's history) and the fleet holds it; publish warns and goes on.
    res = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--version", "3.0.0",
        "--file", pkg, "--peer", nodes[0].addr, "--wait", "applied", "--timeout", "20",
        timeout=40,
    )  # fmt: skip
    assert res.rc == 0, res.stderr
    assert f"same bytes (package id {blake3.blake3(new).hexdigest()[:16]}" in res.stderr
    assert f"as {CHANNEL} 2.0.0, published from here before" in res.stderr


# ---------------------------------------------------------------- approval, rollback, quarantine


def test_auto_apply_false_waits_for_apply_then_rollback_quarantines_and_clear_lifts_it(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    (tmp_path / "t").mkdir()
    target = tmp_path / "t" / "app"
    old = make_program(target, "1.0.0")
    config = tmp_path / "node.toml"
    config.write_text(
        f'trust = ["{authority.pubkey}"]\n'
        "\n"
        f'[targets."{CHANNEL}"]\n'
        'path = "t/app"\n'  # relative to the config file's directory
        "auto_apply = false\n"
        'version = "1.0.0"\n'
    )
    node = run_node("n1", config=config)
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", 3 * CHUNK)

    rc, _, err = publish(authority, pkg, "2.0.0", node.addr, replicas=1)
    assert rc == 0, err
    node.wait_event("download_complete", version="2.0.0")

    def waiting() -> list[Any]:
        result: list[Any] = status_json(node.data_dir)["channels"][CHANNEL]["waiting"]
        return result

    assert [w["version"] for w in wait_until("the update to wait", waiting)] == ["2.0.0"]
    human = run_cli("status", "--data-dir", node.data_dir)
    assert "waiting     2.0.0" in human.stdout
    assert f"p2pupdate apply {CHANNEL}" in human.stdout
    assert target.read_bytes() == old
    assert not node.events("applying")

    res = run_cli("apply", CHANNEL, "--data-dir", node.data_dir)
    assert res.rc == 0, res.stderr
    done = node.wait_event("update_complete", new_version="2.0.0")
    assert done["old_version"] == "1.0.0"
    assert target.read_bytes() == new
    status = status_json(node.data_dir)["channels"][CHANNEL]
    assert status["installed"] == "2.0.0"
    assert status["waiting"] == []
    # Nothing left to apply is not a mistake: exit 0 and say so.
    res = run_cli("apply", CHANNEL, "--data-dir", node.data_dir)
    assert (res.rc, res.stdout) == (0, f"{CHANNEL} is already at 2.0.0\n"), res.stderr

    res = run_cli("rollback", CHANNEL, "--data-dir", node.data_dir)
    assert res.rc == 0, res.stderr
    rolled = node.wait_event("rolled_back", version="2.0.0")
    assert rolled["restored_version"] == "1.0.0"
    node.wait_event("quarantined", version="2.0.0")
    assert target.read_bytes() == old
    assert run_program(target) == "1.0.0"
    status = status_json(node.data_dir)["channels"][CHANNEL]
    assert status["installed"] == "1.0.0"
    assert status["quarantined"] == ["2.0.0"]
    # A quarantined version is not applied again.
    res = run_cli("apply", CHANNEL, "--data-dir", node.data_dir)
    assert res.rc == 2
    assert "quarantined" in res.stderr
    assert target.read_bytes() == old

    res = run_cli("quarantine", "clear", CHANNEL, "2.0.0", "--data-dir", node.data_dir)
    assert res.rc == 0, res.stderr
    assert status_json(node.data_dir)["channels"][CHANNEL]["quarantined"] == []
    res = run_cli("quarantine", "clear", CHANNEL, "2.0.0", "--data-dir", node.data_dir)
    assert res.rc == 2  # not quarantined any more
    assert len(res.stderr.splitlines()) == 1


# ---------------------------------------------------------------- status


def test_status_json_while_running_and_from_the_snapshot_after_stop(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    (tmp_path / "t").mkdir()
    target = tmp_path / "t" / "app"
    make_program(target, "1.0.0")
    node = run_node("n1", trust=[authority.pubkey], targets=[f"{CHANNEL}={target}"])
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", 2 * CHUNK)
    rc, _, err = publish(authority, pkg, "2.0.0", node.addr, replicas=1)
    assert rc == 0, err
    node.wait_event("update_complete", new_version="2.0.0")

    live = status_json(node.data_dir)
    assert live["running"] is True
    assert live["listen"] == node.addr
    node_id = live["node_id"]
    assert re.fullmatch(r"[0-9a-f]{64}", node_id)
    assert all(e["node"] == node_id for e in node.events())
    channel = live["channels"][CHANNEL]
    assert channel["installed"] == "2.0.0"
    assert channel["target"] == str(target)
    assert channel["download"] is None
    assert channel["quarantined"] == []
    package_id = blake3.blake3(new).hexdigest()
    assert [e["package_id"] for e in live["cache"]["entries"]] == [package_id]
    assert live["cache"]["size"] == len(new)

    rc, _ = node.stop(signal.SIGTERM)
    assert rc == 0
    assert not (node.data_dir / "control.path").exists()
    saved = status_json(node.data_dir)
    assert saved["running"] is False
    assert isinstance(saved["written_at"], float)
    assert saved["node_id"] == node_id
    assert saved["channels"][CHANNEL]["installed"] == "2.0.0"
    human = run_cli("status", "--data-dir", node.data_dir)
    assert human.rc == 3
    assert "node not running (last known state" in human.stdout
    # Commands that change a node need it running: one line, exit 1.
    res = run_cli("apply", CHANNEL, "--data-dir", node.data_dir)
    assert res.rc == 1
    assert len(res.stderr.splitlines()) == 1
    assert "needs the running node" in res.stderr


def test_auto_download_false_relays_until_apply_asks_and_auto_apply_stays_off(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    relay = run_node("relay", trust=[authority.pubkey])  # downloads and serves
    (tmp_path / "t").mkdir()
    target = tmp_path / "t" / "app"
    old = make_program(target, "1.0.0")
    config = tmp_path / "node.toml"
    config.write_text(
        f'trust = ["{authority.pubkey}"]\n'
        f'peers = ["{relay.addr}"]\n'
        "auto_download = false\n"
        "auto_apply = false\n"
        f'[targets."{CHANNEL}"]\npath = "t/app"\n'
    )
    node = run_node("n1", config=config)
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", 3 * CHUNK)
    rc, _, err = publish(authority, pkg, "2.0.0", relay.addr, replicas=1)
    assert rc == 0, err
    node.wait_event("announcement_received", version="2.0.0")

    def waiting() -> list[Any]:
        result: list[Any] = status_json(node.data_dir)["channels"][CHANNEL]["waiting"]
        return result

    assert [w["version"] for w in wait_until("2.0.0 to be offered", waiting)] == ["2.0.0"]
    assert not node.events("download_started")  # relay only: nothing fetched yet

    res = run_cli("apply", CHANNEL, "--data-dir", node.data_dir)
    assert res.rc == 0, res.stderr
    assert "downloading 2.0.0" in res.stdout
    done = node.wait_event("update_complete", new_version="2.0.0")
    assert done["old_version"] is None
    assert flow_of(node, "2.0.0") == FLOW
    assert target.read_bytes() == new
    assert status_json(node.data_dir)["channels"][CHANNEL]["waiting"] == []

    # One `apply` approved one update: the next one waits again.
    pkg3 = tmp_path / "app-3.0.0"
    make_program(pkg3, "3.0.0", CHUNK)
    rc, _, err = publish(authority, pkg3, "3.0.0", relay.addr, replicas=1)
    assert rc == 0, err
    assert [w["version"] for w in wait_until("3.0.0 to be offered", waiting)] == ["3.0.0"]
    assert not node.events("download_started", version="3.0.0")
    assert target.read_bytes() == new != old


# ---------------------------------------------------------------- systemd


def test_systemd_notify_ready_watchdog_and_stopping(
    authority: Authority, run_node: StartNode
) -> None:
    # A short path of our own: AF_UNIX paths are limited to 108 bytes.
    with (
        tempfile.TemporaryDirectory(prefix="p2n") as d,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = os.path.join(d, "notify")
        sock.bind(path)
        sock.settimeout(10)
        node = run_node(
            "n1",
            trust=[authority.pubkey],
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
        )
        assert sock.recv(4096) == b"READY=1"  # sent once it listens (run_node saw that)
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"WATCHDOG=1"  # again, every half WATCHDOG_USEC
        rc, _ = node.stop(signal.SIGTERM)
        assert rc == 0
        seen = []
        sock.settimeout(0.5)
        while True:
            try:
                seen.append(sock.recv(4096))
            except TimeoutError:
                break
        assert b"STOPPING=1" in seen
        assert set(seen) <= {b"WATCHDOG=1", b"STOPPING=1"}


# ---------------------------------------------------------------- Ctrl-C


def test_publish_interrupted_by_ctrl_c_exits_130_with_one_line(
    tmp_path: Path, authority: Authority
) -> None:
    pkg = tmp_path / "app-2.0.0"
    make_program(pkg, "2.0.0")
    rc, text, _ = _interrupt_publish(tmp_path, authority, pkg, signal.SIGINT)
    assert rc == 130
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if not line.startswith("publish: ")]
    assert errors == ["p2pupdate: interrupted"]


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_publish_of_a_directory_stopped_by_a_signal_removes_its_temporary_files(
    tmp_path: Path, authority: Authority, signum: int
) -> None:
    """SIGTERM (``timeout``, a service manager) and SIGHUP stop publish as Ctrl-C does:
    exit 130, one line, and the packed copy of the directory and the store are removed
    (a killed publish of a 64 MiB directory used to leave 64 MiB in the temp dir)."""
    app = tmp_path / "app"
    app.mkdir()
    make_program(app / "run", "2.0.0", size=256 * 1024)
    work = tmp_path / "tmp"
    work.mkdir()
    rc, text, leftovers = _interrupt_publish(tmp_path, authority, app, signum, tmpdir=work)
    assert rc == 130, text
    errors = [line for line in text.splitlines() if not line.startswith("publish: ")]
    assert errors == ["p2pupdate: interrupted"]
    assert leftovers == []


def _interrupt_publish(
    tmp_path: Path, authority: Authority, pkg: Path, signum: int, tmpdir: Path | None = None
) -> tuple[int, str, list[str]]:
    """Start publish (to a peer that is not there), signal it once it seeds; its exit
    code, its stderr and what it left in ``tmpdir``."""
    err_path = tmp_path / "publish.err"
    argv = ["publish", "--key", str(authority.key), "--channel", CHANNEL, "--version", "2.0.0"]
    argv += ["--file", str(pkg), "--peer", f"127.0.0.1:{free_port()}", "--timeout", "60"]
    env = {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*P2P, *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            preexec_fn=sigint_as_in_a_terminal,  # the suite may run with SIGINT ignored
        )
        try:
            # Its first progress line: it is seeding (past start-up), so the signal hits trio.
            wait_until("publish to start", lambda: b"publish: " in err_path.read_bytes())
            proc.send_signal(signum)
            # Generous: the point is the exit code and the one line, not the speed.
            rc = proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    left = sorted(p.name for p in tmpdir.iterdir()) if tmpdir else []
    return rc, err_path.read_text(), left


# ---------------------------------------------------------------- the operator's docs


def test_operations_doc_covers_every_flag_config_key_event_and_reason() -> None:
    """docs/operations.md is the reference: whatever the code adds must be documented."""
    import argparse

    from p2pupdate.cli import build_parser
    from p2pupdate.core.policy import REASONS
    from p2pupdate.shell.events import EVENT_NAMES
    from p2pupdate.shell.nodeconfig import CONFIG_KEYS, TARGET_KEYS

    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    missing = [f"`{key}`" for key in sorted(CONFIG_KEYS | TARGET_KEYS) if f"`{key}`" not in doc]
    missing += [f"`{name}`" for name in sorted(EVENT_NAMES) if f"`{name}`" not in doc]
    quiet = {"duplicate", "malformed"}  # never reported as an event
    missing += [f"`{r}`" for r in sorted(REASONS - quiet) if f"`{r}`" not in doc]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("node", "publish"):
        for action in sub.choices[command]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and f"`{flag}" not in doc:
                    missing.append(f"{command} {flag}")
    assert not missing, f"not in docs/operations.md: {missing}"
    # Every TOML example uses only keys the node knows.
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        config = tomllib.loads(block)
        assert set(config) <= CONFIG_KEYS, block
        targets = config.get("targets", {})
        tables = targets.values() if isinstance(targets, dict) else targets
        for table in tables:
            assert set(table) <= TARGET_KEYS, block
