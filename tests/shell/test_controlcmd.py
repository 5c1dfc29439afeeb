"""status / apply / rollback / quarantine clear through the CLI against a real control socket."""

from __future__ import annotations

import datetime
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.cli import main
from p2pupdate.commands.controlcmd import format_status
from p2pupdate.commands.versionscmd import quarantine_rows, version_states
from p2pupdate.shell.control import serve_control, write_status_snapshot
from p2pupdate.shell.datadir import default_data_dir, resolve_data_dir

STATUS: dict[str, Any] = {
    "node_id": "ed25519:ab12",
    "listen": "127.0.0.1:4000",
    "peers": ["127.0.0.1:4001", "127.0.0.1:4002"],
    "channels": {
        "app/stable": {
            "installed": "1.2.0",
            "target": "/opt/app",
            "download": {
                "version": "1.3.0",
                "progress": 0.5,
                "bytes_done": 1024 * 1024,
                "bytes_total": 2 * 1024 * 1024,
                "state": "downloading",
            },
            "waiting": [{"version": "1.2.5", "package_id": "cd" * 32}],
            "quarantined": ["1.2.1"],
            "last_refusal": {"version": "1.1.0", "reason": "not_newer"},
            "newest": "1.3.0",
            "quarantine": [{"version": "1.2.1", "reason": "health_check_failed", "at": 1.0e9}],
            "backups": [{"version": "1.1.9", "created": 1.0e9}],
        },
        "relay/only": {
            "installed": None,
            "target": None,
            "download": None,
            "waiting": [],
            "quarantined": [],
            "last_refusal": None,
        },
    },
    "cache": {
        "size": 3 * 1024**3,
        "capacity": 1024**3,
        "entries": [{"package_id": "ef" * 32, "size": 3 * 1024**3, "pinned": ["installed"]}],
        "over_capacity": "installed app/stable 1.2.0",
    },
    "self_update": "not configured",
}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2cc") as d:
        yield Path(d)


class FakeNode:
    """The node's side of the control protocol, recording what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        op = request["op"]
        if op == "status":
            return dict(STATUS)
        if request.get("channel") == "unknown":
            return {"ok": False, "usage": True, "error": "no target for channel 'unknown'"}
        if request.get("channel") == "broken":
            return {"ok": False, "error": "apply failed: health_check_failed"}
        if op == "apply":
            return {"ok": True, "message": f"applying {request['channel']} 1.2.5"}
        return {"ok": True}


async def cli(*argv: str) -> int:
    # The commands run their own trio.run: give them a thread, as a separate process would be.
    return await trio.to_thread.run_sync(main, list(argv))


@pytest.fixture
async def node(data_dir: Path, nursery: trio.Nursery) -> FakeNode:
    fake = FakeNode()
    await nursery.start(serve_control, data_dir, fake.handle)
    return fake


async def test_status_of_a_running_node(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("status", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert node.requests == [{"op": "status"}]
    assert "node ed25519:ab12" in out
    assert "not running" not in out
    assert "listen  127.0.0.1:4000" in out
    assert "peers   2: 127.0.0.1:4001, 127.0.0.1:4002" in out
    assert "installed   1.2.0" in out
    assert "download    1.3.0 downloading 50.0% (1.0 MiB of 2.0 MiB)" in out
    assert "waiting     1.2.5" in out
    assert "p2pupdate apply app/stable" in out
    assert "quarantined 1.2.1 (health_check_failed, 2001-09-0" in out
    assert "last refusal 1.1.0: not_newer" in out
    assert "(none: relay and cache only)" in out
    assert "cache 3.0 GiB of 1.0 GiB, 1 package" in out
    assert "over its size because pinned: installed app/stable 1.2.0" in out


async def test_status_json_of_a_running_node(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("status", "--data-dir", str(data_dir), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {**STATUS, "running": True}


async def test_status_of_a_stopped_node_reads_the_snapshot(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status_snapshot(data_dir, STATUS)
    # Exit 3: not running, as `systemctl status` says of a stopped unit.
    assert await cli("status", "--data-dir", str(data_dir)) == 3
    out = capsys.readouterr().out
    assert "node not running (last known state, written " in out
    assert "installed   1.2.0" in out
    assert await cli("status", "--data-dir", str(data_dir), "--json") == 3
    snap = json.loads(capsys.readouterr().out)
    assert snap["running"] is False
    assert snap["channels"] == STATUS["channels"]
    assert "written_at" in snap


async def test_status_of_a_stopped_node_without_snapshot(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("status", "--data-dir", str(data_dir)) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no node is running" in err


async def test_status_data_dir_missing_is_a_usage_error(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("status", "--data-dir", str(data_dir / "nope")) == 2
    assert "--data-dir" in capsys.readouterr().err


async def test_apply(data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("apply", "app/stable", "--data-dir", str(data_dir)) == 0
    assert node.requests == [{"op": "apply", "channel": "app/stable"}]
    assert capsys.readouterr().out == "applying app/stable 1.2.5\n"


async def test_rollback(data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("rollback", "app/stable", "--data-dir", str(data_dir)) == 0
    assert node.requests == [{"op": "rollback", "channel": "app/stable"}]
    assert capsys.readouterr().out == "rollback app/stable: done\n"


async def test_quarantine_clear(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["quarantine", "clear", "app/stable", "1.2.1", "--data-dir", str(data_dir)]
    assert await cli(*argv) == 0
    assert node.requests == [
        {"op": "quarantine_clear", "channel": "app/stable", "version": "1.2.1"}
    ]
    assert "1.2.1" in capsys.readouterr().out


async def test_apply_unknown_channel_exits_2(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("apply", "unknown", "--data-dir", str(data_dir)) == 2
    assert capsys.readouterr().err == "p2pupdate: error: no target for channel 'unknown'\n"


async def test_apply_failure_exits_1(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("apply", "broken", "--data-dir", str(data_dir)) == 1
    assert capsys.readouterr().err == "p2pupdate: apply failed: health_check_failed\n"


@pytest.mark.parametrize("cmd", ["apply", "rollback"])
async def test_action_without_a_running_node_exits_1(
    data_dir: Path, capsys: pytest.CaptureFixture[str], cmd: str
) -> None:
    write_status_snapshot(data_dir, STATUS)  # a snapshot does not make it running
    assert await cli(cmd, "app/stable", "--data-dir", str(data_dir)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{cmd} needs the running node" in err


async def test_bad_channel_name_exits_2(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("apply", "../etc", "--data-dir", str(data_dir)) == 2
    assert "bad channel" in capsys.readouterr().err
    assert node.requests == []


async def test_quarantine_clear_bad_version_exits_2(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["quarantine", "clear", "app/stable", "latest", "--data-dir", str(data_dir)]
    assert await cli(*argv) == 2
    assert "bad version 'latest'" in capsys.readouterr().err
    assert node.requests == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(["node_id", "listen", "peers", "channels", "cache", "self_update", "x"]),
        JSON,
    ),
    st.booleans(),
)
def test_format_status_never_fails_on_odd_input(status: dict[str, Any], running: bool) -> None:
    text = format_status(status, running=running)
    assert text.startswith("node ")


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=3))
def test_format_status_tolerates_odd_channels(channel: dict[str, Any]) -> None:
    text = format_status(
        {"channels": {"c": channel}, "cache": {"entries": [channel]}}, running=True
    )
    assert "channel c" in text


# ---------------------------------------------------------------- where the data dir is


async def test_data_dir_from_the_environment(
    data_dir: Path, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(data_dir))
    assert await cli("status") == 0
    assert node.requests == [{"op": "status"}]


async def test_data_dir_flag_wins_over_the_environment(
    data_dir: Path, node: FakeNode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert await cli("status", "--data-dir", str(data_dir)) == 0
    assert node.requests == [{"op": "status"}]


async def test_data_dir_from_the_node_config(
    data_dir: Path, node: FakeNode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(tmp_path / "elsewhere"))
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{data_dir}"\nlisten = "127.0.0.1:0"\n')
    assert await cli("status", "--config", str(config)) == 0
    assert node.requests == [{"op": "status"}]


async def test_default_data_dir_missing_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("P2PUPDATE_DATA_DIR", str(tmp_path / "nowhere"))
    assert await cli("status") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "P2PUPDATE_DATA_DIR" in err and "does not exist" in err


def test_platform_default_data_dir() -> None:
    assert default_data_dir(0, {}) == Path("/var/lib/p2pupdate")
    assert default_data_dir(1000, {"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path("/s/p2pupdate")
    # A relative XDG_STATE_HOME is invalid by the spec and ignored.
    assert default_data_dir(1000, {"XDG_STATE_HOME": "s", "HOME": "/h"}) == Path(
        "/h/.local/state/p2pupdate"
    )
    assert resolve_data_dir(None, None, {}, 0) == (
        Path("/var/lib/p2pupdate"),
        "the default data dir",
    )
    assert resolve_data_dir(None, Path("/c"), {"P2PUPDATE_DATA_DIR": "/e"}, 0)[0] == Path("/c")
    assert resolve_data_dir(None, None, {"P2PUPDATE_DATA_DIR": "/e"}, 0)[0] == Path("/e")


# ---------------------------------------------------------------- quarantine list, versions


async def test_quarantine_list(
    data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("quarantine", "list", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert out.startswith("app/stable  1.2.1  health_check_failed  since 2001-09-0")
    assert await cli("quarantine", "list", "--data-dir", str(data_dir), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "running": True,
        "quarantined": [
            {"channel": "app/stable", "version": "1.2.1", "reason": "health_check_failed",
             "at": 1.0e9},
        ],
    }  # fmt: skip
    assert await cli("quarantine", "list", "--channel", "relay/only", "--data-dir",
                     str(data_dir)) == 0  # fmt: skip
    assert capsys.readouterr().out == "no quarantined versions\n"


async def test_versions(data_dir: Path, node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("versions", "--channel", "app/stable", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "channel app/stable",
        "  1.3.0  newest announced, downloading 50%",
        "  1.2.5  waiting for apply",
        "  1.2.1  quarantined: health_check_failed",
        "  1.2.0  installed",
        "  1.1.9  backup",
        "  1.1.0  refused: not_newer",
    ]
    assert await cli("versions", "--channel", "nope/x", "--data-dir", str(data_dir)) == 2
    assert "knows no channel 'nope/x'" in capsys.readouterr().err


async def test_versions_of_a_stopped_node_reads_the_snapshot(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_status_snapshot(data_dir, STATUS)
    assert await cli("versions", "--channel", "app/stable", "--data-dir", str(data_dir),
                     "--json") == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is False
    assert doc["versions"][0] == {"version": "1.3.0", "states": ["newest announced",
                                                                 "downloading 50%"]}  # fmt: skip


async def test_quarantine_list_of_no_node_exits_3(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("quarantine", "list", "--data-dir", str(data_dir)) == 3
    assert "no node is running" in capsys.readouterr().err


@given(st.dictionaries(st.text(max_size=12), JSON, max_size=8))
def test_version_states_never_fail_on_odd_input(channel: dict[str, Any]) -> None:
    for row in version_states(channel):
        assert isinstance(row["version"], str) and row["states"]
    quarantine_rows({"channels": {"c": channel}}, None)


def test_format_status_shows_a_pending_retry() -> None:
    status = {
        "channels": {
            "app/stable": {
                "installed": "1.0.0",
                "retry": {
                    "version": "2.0.0",
                    "step": "download",
                    "reason": "disk_full",
                    "attempt": 3,
                    "next_try": 1_700_000_000.0,
                    "wake_on": "free_space",
                },
            }
        }
    }
    text = format_status(status, running=True)
    line = next(x for x in text.splitlines() if x.strip().startswith("retry"))
    assert "2.0.0 download failed (disk_full), attempt 3; next try at " in line
    assert line.endswith("or as soon as there is room")


def test_status_shows_the_admission_and_warns_before_expiry() -> None:
    soon = time.time() + 3 * 86400
    status = {
        "node_id": "ed25519:ab",
        "peers": [],
        "encrypted": True,
        "fleet": {
            "fleet_keys": ["aa" * 32],
            "admission_fleet": "aa" * 32,
            "admission_expires": int(soon),
            "warning": "admission expires in 3.0 days: renew it (p2pupdate admit)",
            "revoked": 2,
        },
    }
    text = format_status(status, running=True)
    assert "fleet   ed25519:aaaaaaaaaaaaaaaa" in text
    stamp = datetime.datetime.fromtimestamp(int(soon)).astimezone().strftime("%Y-%m-%d")
    assert f"expires {stamp}" in text
    assert "WARNING: admission expires in 3.0 days" in text
    assert "revoked nodes  2" in text
    open_swarm = format_status({"node_id": "x", "fleet": None, "encrypted": False}, running=True)
    assert "fleet   none (open swarm; plain connections)" in open_swarm


def test_status_shows_what_the_last_download_fetched_and_reused() -> None:
    channel = {
        "installed": "2.0.0",
        "target": "/opt/app",
        "last_download": {
            "version": "2.0.0",
            "bytes_total": 64 * 1024 * 1024,
            "reused_bytes": 61 * 1024 * 1024,
        },
    }
    text = format_status({"channels": {"app/stable": channel}}, running=True)
    line = next(x for x in text.splitlines() if x.strip().startswith("fetched"))
    assert "2.0.0" in line and "3.0 MiB from peers" in line and "61.0 MiB reused" in line
