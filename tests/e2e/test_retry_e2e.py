"""Issue 20, as an operator tried it: a node whose data dir fills up mid-download
catches up by itself once the filesystem is grown (real processes, real tmpfs).

Needs root (CI runs as root) to mount a tmpfs; skipped cleanly otherwise.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Authority, StartNode, run_cli, wait_until
from tests.e2e.test_node_publish import CHANNEL, make_program, publish, run_program
from tests.helpers import fill, small_tmpfs

CHUNK = 64 * 1024


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/b`` (node b's data dir) on an 8 MiB tmpfs, unmounted at the end."""
    with small_tmpfs(tmp_path / "b") as mnt:
        yield mnt


def status_json(data_dir: Path) -> dict[str, Any]:
    res = run_cli("status", "--data-dir", data_dir, "--json")
    assert res.rc == 0, res.stderr
    status: dict[str, Any] = json.loads(res.stdout)
    return status


def test_data_dir_fills_mid_download_node_backs_off_and_finishes_once_grown(
    tmp_path: Path, authority: Authority, run_node: StartNode, small_data_dir: Path
) -> None:
    nchunks = 48
    pkg = tmp_path / "app-2.0.0"
    new = make_program(pkg, "2.0.0", nchunks * CHUNK)  # 3 MiB
    (tmp_path / "tb").mkdir()
    target = tmp_path / "tb" / "app"
    make_program(target, "1.0.0")
    config = tmp_path / "b.toml"
    # A back-off of an hour: in this test only the free-space check can bring the
    # download back. A 256 KiB margin, so that 8 MiB hold a 3 MiB package.
    config.write_text('retry_min = "1h"\nretry_max = "2h"\nmin_free_space = "256KiB"\n')
    seed = run_node("a", trust=[authority.pubkey])
    node = run_node(
        "b",
        trust=[authority.pubkey],
        peers=[seed.addr],
        targets=[f"{CHANNEL}={target}"],
        config=config,
        extra=["--download-limit", "1MiB/s"],
    )
    rc, _, err = publish(authority, pkg, "2.0.0", seed.addr, replicas=1)
    assert rc == 0, err

    def a_quarter_done() -> bool:
        return any(
            e["bytes_done"] >= nchunks * CHUNK // 4 for e in node.events("download_progress")
        )

    wait_until("b a quarter done", a_quarter_done, alive=[node])
    fill(small_data_dir)

    retry = node.wait_event("download_retry", timeout=30, version="2.0.0")
    assert (retry["reason"], retry["attempt"]) == ("disk_full", 1)
    assert 2700 <= retry["delay"] <= 3600 and retry["wake_on"] == "free_space"
    failed = node.events("download_failed", version="2.0.0")
    # One short reason code; what the disk said goes in the separate detail field.
    assert failed and failed[0]["reason"] == "disk_full" and failed[0].get("detail")
    # The node stays up, its target whole, and status says why it is behind.
    status = status_json(node.data_dir)
    assert status["running"] is True
    pending = status["channels"][CHANNEL]["retry"]
    assert (pending["version"], pending["step"], pending["reason"]) == (
        "2.0.0",
        "download",
        "disk_full",
    )
    assert pending["next_try"] > retry["t"] + 2000
    text = run_cli("status", "--data-dir", node.data_dir)
    assert "retry       2.0.0 download failed (disk_full), attempt 1" in text.stdout
    assert run_program(target) == "1.0.0"
    assert not node.events("update_complete")

    # Room for the package and for the applicator's own 64 MiB margin (the
    # backups live in the data dir too).
    res = subprocess.run(
        ["mount", "-o", "remount,size=128m", str(small_data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    done = node.wait_event("update_complete", timeout=60, new_version="2.0.0")
    assert done["old_version"] is None  # the target had no configured version
    assert target.read_bytes() == new
    assert status_json(node.data_dir)["channels"][CHANNEL]["retry"] is None
    # The chunks verified before the disk filled were kept: the retry fetched the rest.
    complete = node.events("download_complete", version="2.0.0")
    assert len(complete) == 1
    had = max(e["bytes_done"] for e in node.events("download_progress")) // CHUNK
    assert sum(complete[0]["sources"].values()) < nchunks, (complete, had)
