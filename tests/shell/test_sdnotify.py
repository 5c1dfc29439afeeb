"""sd_notify over a real AF_UNIX datagram socket, by path and abstract name."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pupdate.shell.sdnotify import READY, STOPPING, WATCHDOG, notify, watchdog_interval


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # pytest's tmp_path can exceed sun_path's 108 bytes; use a short private dir.
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = Path(d) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with sock:
            yield sock


def test_ready_watchdog_stopping_reach_the_socket(receiver: socket.socket) -> None:
    assert notify(READY)
    assert notify(WATCHDOG)
    assert notify(STOPPING)
    assert [receiver.recv(100) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_abstract_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"p2pupdate-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify(READY)
        assert sock.recv(100) == b"READY=1"


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify(READY) is False


def test_nobody_listening_does_not_raise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify(READY) is False
    assert "cannot notify systemd" in caplog.text


def test_relative_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative.sock")
    assert notify(READY) is False


def test_full_queue_does_not_block(receiver: socket.socket) -> None:
    # Nobody reads: the datagram queue fills and notify returns False instead of blocking.
    results = [notify(WATCHDOG) for _ in range(2000)]
    assert results[0] is True
    assert results[-1] is False


def test_watchdog_interval_is_half_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_watchdog_off(monkeypatch: pytest.MonkeyPatch, usec: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None


def test_watchdog_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
