"""Boot sentinel: every case of issue 6 §5, with real files and real process restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.core import apply as core
from p2pupdate.errors import ApplyError
from p2pupdate.shell.install.sentinel import EXIT_ROLLED_BACK, BootSentinel
from tests.shell.apply_helpers import Events, app_script

REPO = Path(__file__).resolve().parents[2]
OLD = app_script("1.0.0")
NEW = app_script("2.0.0")


class Node:
    """A node program at ``bin/p2pupdate`` with its sentinel state beside it."""

    def __init__(self, tmp: Path, bound: int = 3) -> None:
        self.program = tmp / "bin" / "p2pupdate"
        self.program.parent.mkdir()
        self.program.write_bytes(OLD)
        os.chmod(self.program, 0o755)
        self.state = tmp / "state"
        self.bound = bound
        self.events = Events()

    def sentinel(self) -> BootSentinel:
        """A new instance each time, as a new process would make."""
        return BootSentinel(self.state, self.program, boot_attempts=self.bound, emit=self.events)

    def self_update(self) -> None:
        """What self-update does: arm, then swap the new program in."""
        self.sentinel().arm("2.0.0", "1.0.0")
        self.program.write_bytes(NEW)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_no_sentinel_continues(node: Node) -> None:
    outcome = node.sentinel().on_boot("1.0.0")
    assert (outcome.action, outcome.exit_code) == ("continue", None)
    assert node.events.items == []


def test_healthy_boot_confirms_and_promotes_to_last_good(node: Node) -> None:
    node.self_update()
    assert node.sentinel().last_good_copy.read_bytes() == OLD  # kept before the swap
    outcome = node.sentinel().on_boot("2.0.0")
    assert (outcome.action, outcome.attempt, outcome.exit_code) == ("counted", 1, None)
    assert node.sentinel().confirm("2.0.0")
    s = node.sentinel()
    assert s.last_good_copy.read_bytes() == NEW
    assert s.status()["last_good"]["version"] == "2.0.0"
    assert not s.sentinel_path.exists()
    assert s.on_boot("2.0.0").action == "continue"
    assert node.events.one("self_update_confirmed")["version"] == "2.0.0"


def test_crash_loop_rolls_back_quarantines_and_exits_3(node: Node) -> None:
    node.self_update()
    for attempt in (1, 2, 3):
        outcome = node.sentinel().on_boot("2.0.0")  # ...and the node crashes each time
        assert (outcome.action, outcome.attempt) == ("counted", attempt)
    outcome = node.sentinel().on_boot("2.0.0")
    assert (outcome.action, outcome.exit_code) == ("rolled_back", EXIT_ROLLED_BACK)
    assert node.program.read_bytes() == OLD
    assert node.sentinel().quarantined() == ["2.0.0"]
    rolled = node.events.one("rolled_back")
    assert (rolled["version"], rolled["restored_version"]) == ("2.0.0", "1.0.0")
    assert node.events.one("quarantined")["version"] == "2.0.0"
    # The supervisor starts the good program: no sentinel any more.
    assert node.sentinel().on_boot("1.0.0").action == "continue"
    # A quarantined version is not armed again...
    with pytest.raises(ApplyError) as info:
        node.sentinel().arm("2.0.0", "1.0.0")
    assert info.value.reason == core.QUARANTINED


def test_quarantine_clear_lets_the_version_be_tried_again(node: Node) -> None:
    node.self_update()
    for _ in range(4):
        node.sentinel().on_boot("2.0.0")
    s = node.sentinel()
    assert s.is_quarantined("2.0.0+build.1")
    assert s.quarantine_clear("2.0.0")
    assert not s.quarantine_clear("2.0.0")
    assert node.sentinel().quarantined() == []
    node.self_update()
    assert node.sentinel().on_boot("2.0.0").action == "counted"


def test_no_last_good_quarantines_and_keeps_going(node: Node) -> None:
    node.program.unlink()  # nothing to keep at arm time
    node.sentinel().arm("2.0.0", None)
    node.program.write_bytes(NEW)
    for _ in range(3):
        assert node.sentinel().on_boot("2.0.0").action == "counted"
    outcome = node.sentinel().on_boot("2.0.0")
    assert (outcome.action, outcome.exit_code) == ("quarantined", None)
    assert node.program.read_bytes() == NEW  # keep going with what there is
    assert node.sentinel().quarantined() == ["2.0.0"]
    assert not node.sentinel().sentinel_path.exists()


def test_stale_sentinel_for_another_version_is_cleared(node: Node) -> None:
    node.sentinel().arm("2.0.0", "1.0.0")  # armed, but the swap never happened
    outcome = node.sentinel().on_boot("1.0.0")
    assert (outcome.action, outcome.detail) == ("cleared", "stale")
    assert not node.sentinel().sentinel_path.exists()
    assert node.sentinel().quarantined() == []


def test_sentinel_of_another_program_is_stale(node: Node, tmp_path: Path) -> None:
    node.self_update()
    other = BootSentinel(node.state, tmp_path / "other", boot_attempts=3)
    assert other.on_boot("2.0.0").action == "cleared"


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01garbage",
        b'{"format": 1, "new_version": "2.0.0"',
        json.dumps({"format": 1, "program": "x", "new_version": "2.0.0"}).encode(),
        json.dumps(
            {
                "format": 1,
                "program": "x",
                "new_version": "not-semver",
                "last_good_version": None,
                "boot_attempts": 0,
                "armed_at": 0,
            }
        ).encode(),
        json.dumps(
            {
                "format": 1,
                "program": "x",
                "new_version": "2.0.0",
                "last_good_version": None,
                "boot_attempts": -4,
                "armed_at": 0,
            }
        ).encode(),
        b"[]",
        None,  # a directory where the file is expected
    ],
)
def test_corrupt_sentinel_is_cleared_never_fatal(node: Node, content: bytes | None) -> None:
    node.self_update()
    path = node.sentinel().sentinel_path
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    outcome = node.sentinel().on_boot("2.0.0")
    assert outcome.action == "cleared" and outcome.detail.startswith("corrupt")
    assert outcome.exit_code is None
    assert not path.exists()
    assert node.sentinel().on_boot("2.0.0").action == "continue"


_BOOT = """
import sys
from pathlib import Path
from p2pupdate.shell.install.sentinel import BootSentinel
outcome = BootSentinel(Path(sys.argv[1]), Path(sys.argv[2]), boot_attempts=3).on_boot("2.0.0")
print(outcome.action, outcome.attempt)
sys.exit(outcome.exit_code or 70)  # 70: this boot 'crashes' after counting
"""


def test_counter_survives_process_restarts(node: Node) -> None:
    node.self_update()
    results: list[tuple[int, str]] = []
    for _ in range(4):
        proc = subprocess.run(
            [sys.executable, "-c", _BOOT, str(node.state), str(node.program)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        results.append((proc.returncode, proc.stdout.strip()))
    assert results == [
        (70, "counted 1"),
        (70, "counted 2"),
        (70, "counted 3"),
        (EXIT_ROLLED_BACK, "rolled_back 3"),
    ]
    assert node.program.read_bytes() == OLD


def test_directory_program_rolls_back_by_symlink(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    (releases / "1.0.0").mkdir(parents=True)
    (releases / "2.0.0").mkdir()
    program = tmp_path / "current"
    program.symlink_to(releases / "1.0.0")
    s = BootSentinel(tmp_path / "state", program, boot_attempts=1)
    s.arm("2.0.0", "1.0.0")
    assert s.status()["last_good"] == {
        "kind": "dir",
        "path": str(releases / "1.0.0"),
        "version": "1.0.0",
    }
    program.unlink()
    program.symlink_to(releases / "2.0.0")
    assert s.on_boot("2.0.0").action == "counted"
    outcome = s.on_boot("2.0.0")
    assert outcome.exit_code == EXIT_ROLLED_BACK
    assert program.resolve() == releases / "1.0.0"


def test_failed_restore_is_reported_and_the_node_keeps_going(node: Node) -> None:
    node.self_update()
    s = node.sentinel()
    # root reads anything: a directory where the last good file should be stands in.
    s.last_good_copy.unlink()
    s.last_good_copy.mkdir()
    info: dict[str, Any] = json.loads(s.last_good_path.read_text())
    assert info["kind"] == "file"
    for _ in range(3):
        node.sentinel().on_boot("2.0.0")
    # With the copy gone, there is no last good to restore: quarantine and keep going.
    outcome = node.sentinel().on_boot("2.0.0")
    assert outcome.action == "quarantined" and outcome.exit_code is None
    assert node.program.read_bytes() == NEW


def test_rollback_failure_is_critical_not_fatal(node: Node) -> None:
    node.self_update()
    # The program's directory cannot take a staging file (a file where it should be a dir).
    for _ in range(3):
        node.sentinel().on_boot("2.0.0")
    node.program.unlink()
    node.program.parent.rmdir()
    node.program.parent.write_bytes(b"not a directory")
    outcome = node.sentinel().on_boot("2.0.0")
    assert (outcome.action, outcome.exit_code) == ("rollback_failed", None)
    failed = node.events.one("update_failed")
    assert failed["reason"] == "rollback_failed" and "last good at" in failed["detail"]
    assert node.sentinel().quarantined() == ["2.0.0"]


def test_unusable_state_directory_is_reported_not_fatal(node: Node) -> None:
    node.state.write_bytes(b"a file where the state directory should be")
    outcome = node.sentinel().on_boot("2.0.0")
    assert (outcome.action, outcome.exit_code) == ("error", None)
    assert "NotADirectoryError" in node.events.one("sentinel_error")["detail"]
