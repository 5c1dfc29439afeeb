"""publish's plain progress line: a real rate over the interval, and the upload ratio."""

from __future__ import annotations

import pytest

from p2pupdate.commands import publish

MiB = 1024 * 1024


def test_plain_progress_line_says_the_ratio_and_the_rate_over_the_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = [100.0]
    monkeypatch.setattr("p2pupdate.commands.publish.time.monotonic", lambda: clock[0])
    progress = publish._Progress(total=12 * MiB, replicas=3)
    assert not progress.tty  # pytest captures stderr: the plain lines
    progress.update(2 * MiB, 0, 4, rate=0.0)
    clock[0] += 2.0
    # The caller's rate is its last 0.1 s (0 between bursts); the line uses the interval.
    progress.update(18 * MiB, 1, 4, rate=0.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == (
        "publish: uploaded 18.0 MiB (1.50x the 12.0 MiB package) at 8.0 MiB/s, "
        "1/3 replicas, 4 peers"
    )
