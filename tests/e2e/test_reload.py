"""SIGHUP reloads the config of a running node: keys, targets and limits, nothing dropped."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.conftest import Authority, StartNode, make_authority, run_cli, wait_until
from tests.e2e.test_node_publish import CHANNEL, make_program, run_program


def _config(path: Path, *, trust: str, target: Path | None, extra: str = "") -> None:
    text = f'trust = ["{trust}"]\n{extra}'
    if target is not None:
        text += f'[targets."{CHANNEL}"]\npath = "{target}"\n'
    path.write_text(text)


def _publish(authority: Authority, pkg: Path, version: str, peer: str) -> None:
    res = run_cli(
        "publish", "--key", authority.key, "--channel", CHANNEL, "--version", version,
        "--file", pkg, "--peer", peer, "--timeout", "30", timeout=60,
    )  # fmt: skip
    assert res.rc == 0, res.stderr


def test_sighup_revokes_a_removed_key_trusts_a_new_one_and_adds_a_target_without_restart(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    old_key, new_key = authority, make_authority(tmp_path / "new.key")
    config = tmp_path / "node.toml"
    _config(config, trust=old_key.pubkey, target=None)  # relay only at first
    node = run_node("n1", config=config)
    pid = node.proc.pid
    (tmp_path / "opt").mkdir()
    app = tmp_path / "opt" / "app"
    make_program(app, "1.0.0")

    pkg2 = tmp_path / "app-2.0.0"
    make_program(pkg2, "2.0.0", 3 * 65536)
    _publish(old_key, pkg2, "2.0.0", node.addr)
    node.wait_event("download_complete", version="2.0.0")
    assert run_program(app) == "1.0.0"  # no target yet

    # The operator adds the target, moves trust to the new key and sets an upload limit;
    # the listen port cannot change live and is named in the log line.
    _config(config, trust=new_key.pubkey, target=app, extra='max_upload_speed = "1MiB/s"\n')
    node.proc.send_signal(signal.SIGHUP)
    wait_until("the reload log line", lambda: "config reloaded" in node.log_text())
    line = next(x for x in node.log_text().splitlines() if "config reloaded" in x)
    assert "applied: trust, targets, max_upload_speed" in line, line
    # The key removed from the trust set is revoked at once: what only it signed is
    # dropped, never installed on the new target.
    dropped = node.wait_event("update_refused", version="2.0.0", reason="untrusted")
    assert dropped["channel"] == CHANNEL
    assert not node.events("applying", version="2.0.0")

    # The new key's release reaches the new target, by the same process.
    pkg3 = tmp_path / "app-3.0.0"
    make_program(pkg3, "3.0.0", 3 * 65536)
    _publish(new_key, pkg3, "3.0.0", node.addr)
    node.wait_event("update_complete", new_version="3.0.0")
    assert run_program(app) == "3.0.0"
    assert node.proc.pid == pid and node.proc.poll() is None


def test_sighup_with_a_broken_config_changes_nothing(
    tmp_path: Path, authority: Authority, run_node: StartNode
) -> None:
    config = tmp_path / "node.toml"
    _config(config, trust=authority.pubkey, target=None)
    node = run_node("n1", config=config)
    config.write_text("trust = [\n")  # not TOML any more
    node.proc.send_signal(signal.SIGHUP)
    wait_until("the refusal", lambda: "config not reloaded" in node.log_text())
    assert node.proc.poll() is None
    res = run_cli("status", "--data-dir", node.data_dir)
    assert res.rc == 0, res.stderr
