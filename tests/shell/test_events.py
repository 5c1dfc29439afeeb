"""EventLog: one JSON object per line, appended, flushed; logging setup."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pupdate.errors import UsageError
from p2pupdate.shell import events
from p2pupdate.shell.events import EventLog, JsonLogFormatter, jsonable, setup_logging


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_emit_writes_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "abcd") as log:
        log.emit("download_started", channel="app/stable", version="1.2.0", package_id=b"\x01\xff")
        log.emit("download_complete", sources={"127.0.0.1:4000": 3})
    first, second = read_lines(path)
    assert first["node"] == "abcd"
    assert first["event"] == "download_started"
    assert isinstance(first["t"], float)
    assert first["package_id"] == "01ff"
    assert first["channel"] == "app/stable"
    assert second["sources"] == {"127.0.0.1:4000": 3}
    assert list(first)[:3] == ["t", "node", "event"]


def test_emit_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "old"}\n')
    with EventLog(path, "n") as log:
        log.emit("verifying")
    assert [r["event"] for r in read_lines(path)] == ["old", "verifying"]


def test_event_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "n")
    log.emit("applying", channel="c")
    # Another reader sees the line while the log is still open: nothing sits in a buffer.
    assert read_lines(path)[0]["event"] == "applying"
    log.close()
    log.close()  # idempotent


def test_events_survive_a_crash_without_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    code = (
        "import os, pathlib; from p2pupdate.shell.events import EventLog;"
        f"log = EventLog(pathlib.Path({str(path)!r}), 'n');"
        "log.emit('update_complete', old_version='1.0.0', new_version='1.1.0');"
        "os._exit(9)"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == 9
    assert read_lines(path)[0]["new_version"] == "1.1.0"


def test_emit_after_close_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "n")
    log.close()
    record = log.emit("update_failed", reason="late")
    assert record["reason"] == "late"
    assert path.read_text() == ""


def test_without_a_path_events_only_go_to_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(None, "n")
    with caplog.at_level(logging.INFO, logger="p2pupdate.events"):
        log.emit("quarantined", channel="app/stable", version="1.3.0")
    assert "quarantined" in caplog.text
    assert "version=1.3.0" in caplog.text
    log.close()


def test_progress_events_log_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(None, "n")
    with caplog.at_level(logging.INFO, logger="p2pupdate.events"):
        log.emit("download_progress", progress=0.5)
    assert caplog.records == []


def test_fields_named_like_record_keys_are_renamed(tmp_path: Path) -> None:
    with EventLog(tmp_path / "e", "me") as log:
        log.emit("peer_banned", peer="127.0.0.1:4000", node="bad", reason="bad_chunk", t=1, event=2)
        log.emit("update_refused", node="x", reason="expired")
    banned, refused = read_lines(tmp_path / "e")
    # docs/operations.md: peer_banned carries the banned peer's id as ``node``;
    # the writer is ``reporter``.
    assert (banned["node"], banned["reporter"]) == ("bad", "me")
    assert banned["event"] == "peer_banned"
    assert banned["t"] != 1
    assert (banned["field_t"], banned["field_event"]) == (1, 2)
    assert (refused["node"], refused["peer_node"]) == ("me", "x")


def test_events_file_that_is_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        EventLog(tmp_path, "n")


def test_events_file_in_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--events"):
        EventLog(tmp_path / "missing" / "events.jsonl", "n")


def test_jsonable_never_fails() -> None:
    assert jsonable({b"\x00": {1, 2}, 3: float("nan"), "p": Path("/x"), "t": (1, b"a")}) == {
        "00": [1, 2],
        "3": None,
        "p": "/x",
        "t": [1, "61"],
    }
    json.dumps(jsonable(object()))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("p2pupdate")
    saved = (logger.level, logger.propagate, list(logger.handlers), events._installed)
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]
    events._installed = saved[3]


def test_setup_logging_json_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", json=True)
    setup_logging("info", json=True)  # a second call replaces, does not double
    logging.getLogger("p2pupdate.test").info("hello %s", "there")
    logging.getLogger("p2pupdate.test").debug("hidden")
    EventLog(None, "n1").emit("applying", channel="app/stable")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "hello there"
    assert first["level"] == "info"
    assert first["logger"] == "p2pupdate.test"
    assert second["event"] == "applying"
    assert second["channel"] == "app/stable"
    assert second["node"] == "n1"


def test_setup_logging_human_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("debug", json=False)
    logging.getLogger("p2pupdate.test").debug("fine detail")
    err = capsys.readouterr().err
    assert "DEBUG" in err
    assert "p2pupdate.test: fine detail" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_setup_logging_bad_level_is_a_usage_error(restore_logging: None) -> None:
    with pytest.raises(UsageError, match="log_level 'loud'"):
        setup_logging("loud", json=False)


def test_json_formatter_includes_exception_text() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("p2pupdate", logging.ERROR, __file__, 1, "m", (), sys.exc_info())
    out = json.loads(JsonLogFormatter().format(record))
    assert "RuntimeError: boom" in out["exc"]


def test_events_file_is_rotated_by_size_and_every_line_stays_whole_json(tmp_path: Path) -> None:
    """A flood of events costs at most about twice max_size of disk (FILE and FILE.1)."""
    path = tmp_path / "events.jsonl"
    with EventLog(path, "n", max_size=4096) as log:
        for i in range(2000):
            log.emit("peer_connected", peer=f"10.0.0.1:{i}", peer_id="ab" * 32)
        assert log.rotations > 10
    old = path.with_name("events.jsonl.1")
    assert path.stat().st_size <= 4096 and old.stat().st_size <= 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.1"]
    newest = read_lines(path)
    assert newest[-1]["peer"] == "10.0.0.1:1999"  # the newest events are in FILE
    ports = [int(str(r["peer"]).rsplit(":", 1)[1]) for r in read_lines(old) + newest]
    assert ports == list(range(ports[0], 2000))  # nothing lost between the two files


def test_events_file_is_not_rotated_without_max_size(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventLog(path, "n") as log:
        for i in range(200):
            log.emit("verifying", i=i)
    assert len(read_lines(path)) == 200
    assert not path.with_name("events.jsonl.1").exists()
