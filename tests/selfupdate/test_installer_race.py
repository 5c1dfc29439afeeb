"""The installing node goes last even when its own switch of ``current`` is seen first.

The node that switches ``current`` must not re-exec into the new release before another
node ran it healthily. Its watcher of ``current`` runs beside the install thread: under
load it looked at ``current`` after the thread had switched it but before the thread
returned, took the switch for another node's and re-exec'd the installing node at once
(``test_sim_bad_self_update_small`` failed so, beside two busy loops). Here the install
thread waits, after its switch, until the watcher has seen the new ``current``: the race
made certain instead of left to the scheduler.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from p2pupdate.selfupdate import install as inst
from p2pupdate.selfupdate import manager
from p2pupdate.selfupdate.manager import ManagedInstall, SelfUpdateOptions, SelfUpdater
from tests.helpers import make_announcement


def _fake_release(layout: inst.Layout, version: str) -> None:
    program = layout.program(version)
    program.parent.mkdir(parents=True)
    program.write_text(f'#!/bin/sh\necho "ran {version}"\n')
    program.chmod(0o755)
    layout.marker(version).write_text("{}")


class _Store:
    """The one store call the updater makes: where the downloaded release is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def export(self, package_id: bytes, dest_dir: Path) -> Path:
        return self.path


class _Swarm:
    def __init__(self, path: Path) -> None:
        self.store = _Store(path)


async def test_the_installing_node_is_not_restarted_by_its_own_switch(
    tmp_path: Path, monkeypatch: Any
) -> None:
    layout = inst.Layout(tmp_path / "inst")
    inst.write_launcher(layout, sys.executable)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        _fake_release(layout, version)
    with inst.install_lock(layout):
        inst.switch_current(layout, "1.1.0")
    events: list[tuple[str, dict[str, Any]]] = []
    updater = SelfUpdater(
        ManagedInstall(layout, "1.1.0"),
        SelfUpdateOptions(poll_interval=0.01),
        data_dir=tmp_path / "n1",
        emit=lambda name, fields: events.append((name, fields)),
    )
    updater.attach(_Swarm(tmp_path / "release.tar"), b"\1" * 32)

    seen = threading.Event()
    check_current = updater.check_current

    def watched_check() -> str | None:
        name = check_current()
        if name == "1.2.0":
            seen.set()
        return name

    monkeypatch.setattr(updater, "check_current", watched_check)

    def install_and_switch(
        layout: inst.Layout, key: str, archive: Path, version: str, package_id: bytes
    ) -> tuple[bool, set[str] | None]:
        # The real switch (the release is already complete), then hold the thread
        # until the watcher has looked at the switched ``current``.
        with inst.install_lock(layout):
            inst.switch_current(layout, version)
        assert seen.wait(60), "the watcher never looked at current"
        return True, set()  # no other node: the installer goes on its own ("alone")

    monkeypatch.setattr(manager, "install_and_switch", install_and_switch)
    ann = make_announcement(
        [nacl.signing.SigningKey.generate()], channel=updater.channel, version="1.2.0"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(updater.run)
        await updater.on_downloaded(ann)
        nursery.cancel_scope.cancel()

    assert seen.is_set()
    names = [name for name, _ in events if name.startswith("self_update_")]
    assert names == ["self_update_installed", "self_update_restarting"], events
    restarting = dict(events)["self_update_restarting"]
    assert restarting["reason"] == "installed" and restarting["version"] == "1.2.0"
    assert updater.restart_to == "1.2.0"
