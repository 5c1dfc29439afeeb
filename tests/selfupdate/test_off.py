"""A node started outside a managed install: self-update is off, SIGHUP does not end it."""

from __future__ import annotations

import signal
import time
from typing import Any

from tests.e2e.conftest import run_cli, wait_until


def test_node_outside_managed_install_survives_sighup(run_node: Any, authority: Any) -> None:
    node = run_node("n1", trust=[authority.pubkey])
    for _ in range(3):
        node.proc.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    wait_until(
        "the node to say self-update is off",
        lambda: "self-update is off" in node.log_text(),
        alive=[node],
    )
    assert node.proc.poll() is None
    res = run_cli("status", "--data-dir", node.data_dir, "--json")
    assert res.rc == 0, res.stderr
    assert '"self_update": "off: not a managed install' in res.stdout
    rc, _ = node.stop()
    assert rc == 0
