"""``publish``'s same-bytes warning: the local history and the fleet's announcements."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.commands.samebytes import MAX_HISTORY, SameBytesWarning, history_path
from p2pupdate.core.policy import ACCEPT
from tests.helpers import make_announcement

PKG = blake3.blake3(b"the bytes").digest()
OTHER = blake3.blake3(b"other bytes").digest()


def warner(
    path: Path, version: str, pid: bytes = PKG, channel: str = "app/stable"
) -> SameBytesWarning:
    return SameBytesWarning(channel, version, Path("app.bin"), pid, path)


def test_history_path_follows_xdg_state_home_else_home() -> None:
    assert history_path({"XDG_STATE_HOME": "/s"}) == Path("/s/p2pupdate-publish/history.jsonl")
    assert history_path({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/state/p2pupdate-publish/history.jsonl"
    )


def test_warns_once_for_an_earlier_version_with_the_same_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hist = tmp_path / "h.jsonl"
    warner(hist, "1.0.0").record()
    warner(hist, "1.1.0", pid=OTHER).record()
    warner(hist, "1.0.0", channel="app/beta").record()  # another channel: not a match
    w = warner(hist, "2.0.0")
    w.check_history()
    w.check_history()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "as app/stable 1.0.0, published from here before: 2.0.0 would change nothing" in err[0]


def test_republishing_the_same_version_is_no_warning_and_replaces_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hist = tmp_path / "h.jsonl"
    warner(hist, "1.0.0").record()
    w = warner(hist, "1.0.0")
    w.check_history()  # a renewal or a wider rollout: same version
    w.record()
    assert capsys.readouterr().err == ""
    assert len(hist.read_text().splitlines()) == 1


def test_fleet_announcement_with_same_bytes_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = nacl.signing.SigningKey.generate()
    old = make_announcement([key], version="1.0.0", data=b"the bytes")
    w = warner(tmp_path / "h.jsonl", "2.0.0", pid=old.body.package_id)
    w.check_announcement(make_announcement([key], version="0.9.0", data=b"x"), ACCEPT)
    assert capsys.readouterr().err == ""
    w.check_announcement(old, ACCEPT)
    assert "as app/stable 1.0.0, which the fleet already has" in capsys.readouterr().err


def test_history_is_bounded(tmp_path: Path) -> None:
    hist = tmp_path / "h.jsonl"
    lines = [
        json.dumps({"channel": "app/stable", "version": f"1.0.{i}", "package_id": OTHER.hex()})
        for i in range(MAX_HISTORY + 50)
    ]
    hist.write_text("\n".join(lines) + "\n")
    warner(hist, "9.0.0").record()
    kept = hist.read_text().splitlines()
    assert len(kept) == MAX_HISTORY
    assert json.loads(kept[-1])["version"] == "9.0.0"


@given(st.binary(max_size=3000))
def test_a_damaged_history_never_fails_a_publish(garbage: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hist = Path(d) / "h.jsonl"
        hist.write_bytes(garbage)
        w = warner(hist, "2.0.0")
        w.check_history()
        w.record()
        recs = [json.loads(line) for line in hist.read_text().splitlines()]
        assert recs[-1] == {"channel": "app/stable", "version": "2.0.0", "package_id": PKG.hex()}


def test_an_unwritable_history_is_ignored(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    warner(blocker / "sub" / "h.jsonl", "1.0.0").record()  # parent is a file: OSError
