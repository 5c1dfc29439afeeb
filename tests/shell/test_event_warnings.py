"""Failure events reach a `--log-level warning` log; listeners see every event."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from p2pupdate.shell.events import EventLog


@pytest.mark.parametrize(
    "name", ["update_failed", "rolled_back", "quarantined", "rollout_aborted", "yanked"]
)
def test_failure_events_log_at_warning(name: str, caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(None, "n1")
    with caplog.at_level(logging.WARNING, logger="p2pupdate.events"):
        log.emit(name, channel="app/stable", version="1.1.0")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_ordinary_events_stay_at_info_and_listeners_see_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = EventLog(None, "n1")
    seen: list[tuple[str, dict[str, Any]]] = []
    log.listeners.append(lambda name, record: seen.append((name, record)))
    with caplog.at_level(logging.WARNING, logger="p2pupdate.events"):
        log.emit("update_complete", channel="app/stable", new_version="1.1.0")
    assert caplog.records == []
    assert seen[0][0] == "update_complete" and seen[0][1]["new_version"] == "1.1.0"
