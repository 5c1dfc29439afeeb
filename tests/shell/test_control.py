"""The control socket over real AF_UNIX sockets: placement, protocol, abuse, concurrency."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.errors import StateFileError, UsageError
from p2pupdate.shell import control
from p2pupdate.shell.control import (
    MAX_REQUEST,
    NodeNotRunning,
    control_request,
    control_request_sync,
    read_status_snapshot,
    serve_control,
    write_status_snapshot,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data dir whose socket path surely fits (pytest's tmp_path may not)."""
    with tempfile.TemporaryDirectory(prefix="p2c") as d:
        yield Path(d)


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2r") as d:
        monkeypatch.setenv("XDG_RUNTIME_DIR", d)
        yield Path(d)


def deep_dir(tmp_path: Path) -> Path:
    path = tmp_path / ("x" * 60) / ("y" * 60)
    path.mkdir(parents=True)
    assert len(os.fsencode(path / "control.sock")) > 108
    return path


async def echo(request: dict[str, Any]) -> dict[str, Any]:
    return {"echo": request}


async def raw_exchange(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, and read every answer line until EOF."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(os.fspath(path))
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(data)
        await stream.send_eof()
        buf = b""
        while chunk := await stream.receive_some(65536):
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


# ---------------------------------------------------------------- placement


async def test_socket_in_data_dir_with_mode_0600(short_dir: Path, nursery: trio.Nursery) -> None:
    path = await nursery.start(serve_control, short_dir, echo)
    assert path == short_dir / "control.sock"
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (short_dir / "control.path").read_text().strip() == str(path)
    # Only the socket and its record: the temporary bind name was renamed away.
    assert sorted(os.listdir(short_dir)) == ["control.path", "control.sock"]
    answer = await control_request(short_dir, {"op": "status"})
    assert answer == {"ok": True, "echo": {"op": "status"}}


async def test_socket_and_record_removed_on_exit(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, short_dir, echo)
        nursery.cancel_scope.cancel()
    assert os.listdir(short_dir) == []
    with pytest.raises(NodeNotRunning):
        await control_request(short_dir, {"op": "status"})


async def test_deep_data_dir_falls_back_to_runtime_dir(
    tmp_path: Path, runtime_dir: Path, nursery: trio.Nursery
) -> None:
    data_dir = deep_dir(tmp_path)
    path = await nursery.start(serve_control, data_dir, echo)
    assert path.parent == runtime_dir / "p2pupdate"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(os.fsencode(path)) <= 107
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert (data_dir / "control.path").read_text().strip() == str(path)
    assert not (data_dir / "control.sock").exists()
    answer = await control_request(data_dir, {"op": "ping"})
    assert answer["echo"] == {"op": "ping"}


async def test_deep_data_dir_without_xdg_uses_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    data_dir = deep_dir(tmp_path)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(serve_control, data_dir, echo)
        assert path.parent == Path(f"/tmp/p2pupdate-{os.getuid()}")
        assert (await control_request(data_dir, {"op": "x"}))["ok"] is True
        nursery.cancel_scope.cancel()
    assert not path.exists()


def test_two_deep_data_dirs_get_different_sockets(tmp_path: Path, runtime_dir: Path) -> None:
    a = control.choose_socket_path(tmp_path / ("a" * 120))
    b = control.choose_socket_path(tmp_path / ("b" * 120))
    assert a != b
    assert a.parent == b.parent == runtime_dir / "p2pupdate"


def test_runtime_dir_not_private_is_refused(tmp_path: Path, runtime_dir: Path) -> None:
    (runtime_dir / "p2pupdate").mkdir(mode=0o755)
    os.chmod(runtime_dir / "p2pupdate", 0o755)
    with pytest.raises(UsageError, match="not a private directory"):
        control.choose_socket_path(tmp_path / ("a" * 120))


async def test_explicit_socket_path_is_recorded(
    short_dir: Path, tmp_path: Path, nursery: trio.Nursery
) -> None:
    custom = short_dir / "elsewhere.sock"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = await nursery.start(partial(serve_control, socket_path=custom), data_dir, echo)
    assert path == custom
    assert (await control_request(data_dir, {"op": "x"}))["ok"] is True


async def test_stale_socket_file_is_removed(short_dir: Path, nursery: trio.Nursery) -> None:
    stale = short_dir / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    assert stale.exists()  # the file outlives its socket, as after kill -9
    with pytest.raises(NodeNotRunning):
        await control_request(short_dir, {"op": "status"})
    await nursery.start(serve_control, short_dir, echo)
    assert (await control_request(short_dir, {"op": "x"}))["ok"] is True


async def test_second_node_on_the_same_data_dir_is_refused(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    await nursery.start(serve_control, short_dir, echo)
    with pytest.raises(UsageError, match="another node is already running"):
        await serve_control(short_dir, echo)
    # The first one is untouched.
    assert (await control_request(short_dir, {"op": "x"}))["ok"] is True


async def test_a_regular_file_at_the_socket_path_is_not_deleted(short_dir: Path) -> None:
    (short_dir / "control.sock").write_text("precious")
    with pytest.raises(UsageError, match="is not a socket"):
        await serve_control(short_dir, echo)
    assert (short_dir / "control.sock").read_text() == "precious"


# ---------------------------------------------------------------- protocol and abuse


async def test_garbage_gets_error_answers_and_the_server_goes_on(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    path = await nursery.start(serve_control, short_dir, echo)
    answers = await raw_exchange(
        path,
        b'not json\n\xff\xfe\x00\n[1, 2]\n{"no_op": 1}\n{"op": 5}\n{"op": "fine"}\n',
    )
    assert [a["ok"] for a in answers] == [False, False, False, False, False, True]
    assert answers[0]["error"] == "request is not valid JSON"
    assert answers[2]["error"] == "request must be a JSON object"
    assert answers[3]["error"] == 'request has no "op" string'
    assert answers[5]["echo"] == {"op": "fine"}


async def test_oversized_request_is_refused_and_closed(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    path = await nursery.start(serve_control, short_dir, echo)
    answers = await raw_exchange(path, b'{"op": "' + b"a" * (MAX_REQUEST + 10) + b'"}\n')
    assert answers == [{"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}]
    assert (await control_request(short_dir, {"op": "after"}))["ok"] is True


async def test_last_line_without_newline_is_answered(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    path = await nursery.start(serve_control, short_dir, echo)
    answers = await raw_exchange(path, b'{"op": "a"}')
    assert answers == [{"ok": True, "echo": {"op": "a"}}]


async def test_handler_errors_become_answers(short_dir: Path, nursery: trio.Nursery) -> None:
    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "apply":
            raise UsageError("unknown channel 'nope'")
        if op == "boom":
            raise RuntimeError("bug")
        if op == "notdict":
            return [1]  # type: ignore[return-value]
        if op == "unencodable":
            return {"x": object()}
        return {"ok": False, "error": "declined"}

    await nursery.start(serve_control, short_dir, handler)
    usage = await control_request(short_dir, {"op": "apply", "channel": "nope"})
    assert usage == {"ok": False, "usage": True, "error": "unknown channel 'nope'"}
    boom = await control_request(short_dir, {"op": "boom"})
    assert boom["ok"] is False
    assert "internal error" in boom["error"]
    for op in ("notdict", "unencodable"):
        bad = await control_request(short_dir, {"op": op})
        assert bad == {"ok": False, "error": f"internal error in {op!r}: bad answer"}
    assert await control_request(short_dir, {"op": "other"}) == {"ok": False, "error": "declined"}


async def test_concurrent_clients_are_served_together(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    n = 20
    arrived = 0
    everyone = trio.Event()

    async def handler(request: dict[str, Any]) -> dict[str, Any]:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            everyone.set()
        # Each answer waits for all requests: a server taking one client at a time hangs here.
        await everyone.wait()
        return {"i": request["i"]}

    await nursery.start(serve_control, short_dir, handler)
    results: dict[int, dict[str, Any]] = {}

    async def client(i: int) -> None:
        results[i] = await control_request(short_dir, {"op": "x", "i": i})

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for i in range(n):
                clients.start_soon(client, i)
    assert results == {i: {"ok": True, "i": i} for i in range(n)}


async def test_a_silent_client_does_not_block_others_and_is_dropped(
    short_dir: Path, nursery: trio.Nursery
) -> None:
    path = await nursery.start(partial(serve_control, read_timeout=0.2), short_dir, echo)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(os.fspath(path))
    async with trio.SocketStream(sock) as silent:
        await silent.send_all(b'{"op": "half')  # and then nothing
        with trio.fail_after(10):
            assert (await control_request(short_dir, {"op": "x"}))["ok"] is True
            # The server closes the silent connection after its read timeout.
            assert await silent.receive_some(100) == b""


async def test_several_requests_on_one_connection(short_dir: Path, nursery: trio.Nursery) -> None:
    path = await nursery.start(serve_control, short_dir, echo)
    answers = await raw_exchange(path, b'{"op": "a"}\n{"op": "b"}\n')
    assert [a["echo"]["op"] for a in answers] == ["a", "b"]


# ---------------------------------------------------------------- client


async def test_no_node_running(short_dir: Path) -> None:
    with pytest.raises(NodeNotRunning, match="no node is running with data dir"):
        await control_request(short_dir, {"op": "status"})


async def test_recorded_path_pointing_nowhere_is_not_running(short_dir: Path) -> None:
    (short_dir / "control.path").write_text(str(short_dir / "gone.sock") + "\n")
    with pytest.raises(NodeNotRunning):
        await control_request(short_dir, {"op": "status"})


async def test_sync_client_from_a_thread(short_dir: Path, nursery: trio.Nursery) -> None:
    await nursery.start(serve_control, short_dir, echo)
    answer = await trio.to_thread.run_sync(control_request_sync, short_dir, {"op": "sync"})
    assert answer == {"ok": True, "echo": {"op": "sync"}}


async def test_unreadable_answer_is_a_control_error(short_dir: Path, nursery: trio.Nursery) -> None:
    # A fake node that answers garbage.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.bind(str(short_dir / "control.sock"))
    raw.listen()
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))

    async def serve_garbage() -> None:
        async with listener:
            stream = await listener.accept()
            async with stream:
                await stream.receive_some(1000)
                await stream.send_all(b"<html>\n")

    nursery.start_soon(serve_garbage)
    with pytest.raises(control.ControlError, match="not valid JSON"):
        await control_request(short_dir, {"op": "status"})


# ---------------------------------------------------------------- status snapshot


def test_status_snapshot_round_trip(tmp_path: Path) -> None:
    assert read_status_snapshot(tmp_path) is None
    write_status_snapshot(tmp_path, {"node_id": "abc", "channels": {}})
    snap = read_status_snapshot(tmp_path)
    assert snap is not None
    assert snap["node_id"] == "abc"
    assert isinstance(snap["written_at"], float)
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b"\xff"])
def test_corrupt_status_snapshot(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "status.json").write_bytes(content)
    with pytest.raises(StateFileError):
        read_status_snapshot(tmp_path)


def test_status_snapshot_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "status.json").mkdir()
    with pytest.raises(StateFileError):
        read_status_snapshot(tmp_path)
