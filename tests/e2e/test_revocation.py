"""Removing a key from --trust revokes what it signed, across a restart (issue 12, seen case).

Real ``p2pupdate node`` and ``p2pupdate publish`` processes on 127.0.0.1: a node caches a
release signed by a key that is then removed from its ``--trust``; after the restart it
must neither install that release nor refuse the new key's genuine, lower-numbered
release as ``not_newest``.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Authority, StartNode, make_authority
from tests.e2e.test_node_publish import CHANNEL, make_program, publish, run_program


def test_restart_without_a_key_drops_its_release_and_takes_the_new_keys(
    run_node: StartNode, tmp_path: Path
) -> None:
    old: Authority = make_authority(tmp_path / "old.key")
    new: Authority = make_authority(tmp_path / "new.key")
    # First run: both keys trusted, relay only. The old key signs 9.0.0; the node caches it.
    n1 = run_node("n1", trust=[old.pubkey, new.pubkey])
    make_program(tmp_path / "v9", "9.0.0")
    rc, out, err = publish(old, tmp_path / "v9", "9.0.0", n1.addr, replicas=1)
    assert rc == 0, (out, err)
    n1.wait_event("download_complete", version="9.0.0")
    n1.stop()

    # Restart: the old key is revoked, and the node now has a target for the channel.
    (tmp_path / "t").mkdir()
    app = tmp_path / "t" / "app"
    make_program(app, "1.0.0")
    n1 = run_node("n1", trust=[new.pubkey], targets=[f"{CHANNEL}={app}"])
    refused = n1.wait_event("update_refused", version="9.0.0", reason="untrusted")
    assert refused["channel"] == CHANNEL
    make_program(tmp_path / "v2", "2.0.0")
    rc, out, err = publish(new, tmp_path / "v2", "2.0.0", n1.addr, replicas=1)
    assert rc == 0, (out, err)
    n1.wait_event("update_complete", version="2.0.0")
    assert run_program(app) == "2.0.0"
    assert not n1.events("applying", version="9.0.0")
    assert not n1.events("update_refused", version="2.0.0")
