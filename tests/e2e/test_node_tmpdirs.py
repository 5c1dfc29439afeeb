"""A node's temporary dirs live under its data dir and a start removes what a killed run
left there: nothing piles up in the system's temp dir (issue 19)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import wait_until


def _ours(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("p2pupdate-"))


def test_killed_node_leaves_nothing_in_system_tmp_and_next_start_cleans(
    run_node: Any, authority: Any, tmp_path: Path
) -> None:
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    env = {"TMPDIR": str(systmp)}
    node = run_node("n1", trust=[authority.pubkey], env=env)
    tmp = node.data_dir / "tmp"
    wait_until("the export dir under the data dir", lambda: _ours(tmp), alive=[node])
    assert _ours(systmp) == []
    first = _ours(tmp)
    node.kill()  # SIGKILL: no cleanup runs
    assert _ours(tmp) == first  # left behind ...
    stale = tmp / "p2pupdate-self-stale"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half.whl").write_bytes(b"x" * 100)
    node = run_node("n1", trust=[authority.pubkey], env=env)
    # ... and removed by the next start, which makes its own.
    wait_until(
        "stale temp dirs removed",
        lambda: not stale.exists() and not set(first) & set(_ours(tmp)) and _ours(tmp),
        alive=[node],
    )
    assert _ours(systmp) == []
