"""Announcements stored in the data dir are checked again at start, with the current settings.

The issue's seen cases, with a real node, agent, disk store and applicator in one process:

* restarted with a key removed from the trust set, a node installed a version signed only
  by that key and then refused the genuine newer release of the new key as ``not_newest``;
* an announcement published with a 5 s expiry was installed after a restart long after.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.policy import TrustConfig
from p2pupdate.shell.agent import Agent, AgentOptions
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.net.node import Node, NodeOptions
from p2pupdate.shell.net.transport import MemoryNetwork
from p2pupdate.shell.transfer.store import DiskStore
from p2pupdate.shell.transfer.swarm import Swarm
from tests.helpers import content_of, make_announcement
from tests.shell.apply_helpers import app_script

OLD = nacl.signing.SigningKey(b"\x31" * 32)  # the key that is revoked
NEW = nacl.signing.SigningKey(b"\x32" * 32)
CHANNEL = "app/stable"


@dataclass
class Running:
    node: Node
    agent: Agent
    store: DiskStore
    events_path: Path
    node_events: list[tuple[str, dict[str, Any]]]

    def events(self) -> list[dict[str, Any]]:
        """Events of the agent and applicator (the event file) and of the node."""
        out = [dict(fields, event=name) for name, fields in self.node_events]
        if self.events_path.exists():
            out += [json.loads(line) for line in self.events_path.read_text().splitlines()]
        return out

    def refusals(self, version: str) -> list[str]:
        return [
            e["reason"]
            for e in self.events()
            if e["event"] == "update_refused" and e.get("version") == version
        ]

    def applied(self) -> list[str]:
        return [e["version"] for e in self.events() if e["event"] == "applying"]


@asynccontextmanager
async def running(
    tmp: Path,
    trust: set[nacl.signing.SigningKey],
    *,
    target: TargetSpec | None = None,
    wall_clock: Callable[[], float] = time.time,
    run: int = 0,
) -> AsyncIterator[Running]:
    """One node with its agent over data dir ``tmp/data`` (kept across runs)."""
    node_events: list[tuple[str, dict[str, Any]]] = []
    events_path = tmp / f"events-{run}.jsonl"
    events = EventLog(events_path, "me")
    node = Node(
        NodeOptions(
            listen=("10.0.0.1", 1),
            trust=TrustConfig(frozenset(bytes(k.verify_key) for k in trust)),
            data_dir=tmp / "data",
        ),
        MemoryNetwork().transport("10.0.0.1"),
        nacl.signing.SigningKey(b"\x03" * 32),
        emit=lambda name, **fields: node_events.append((name, fields)),
        rng=random.Random(1),
        wall_clock=wall_clock,
    )
    store = DiskStore(tmp / "data" / "store")
    swarm = Swarm(node, store)

    def emit(name: str, fields: dict[str, Any]) -> None:
        events.emit(name, **fields)

    applicator = Applicator(tmp / "data", tmp / "backups", emit)
    agent = Agent(
        node, swarm, applicator, events, AgentOptions(targets=(target,) if target else ())
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(agent.run)
            yield Running(node, agent, store, events_path, node_events)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        events.close()


async def cache(r: Running, tmp: Path, version: str) -> tuple[bytes, bytes]:
    """Put the package of ``version`` (a program printing it) into the node's cache."""
    data = app_script(version)
    path = tmp / f"pkg-{version}"
    path.write_bytes(data)
    pid = content_of(data).package_id
    await r.store.add_complete_file(pid, path)
    return data, pid


async def persisted(tmp: Path, ann: Announcement) -> None:
    path = tmp / "data" / "announcements" / (CHANNEL.replace("/", "+") + ".ann")
    with trio.fail_after(10):
        while not (path.exists() and path.read_bytes() == ann.encode()):
            await trio.sleep(0.01)


async def wait_for(what: Callable[[], bool], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not what():
            await trio.sleep(0.01)


def app_target(tmp: Path) -> TargetSpec:
    (tmp / "t").mkdir(exist_ok=True)
    path = tmp / "t" / "app"
    path.write_bytes(app_script("1.0.0"))
    path.chmod(0o755)
    return TargetSpec(CHANNEL, path, version="1.0.0", confirm_window=0.1, health_timeout=60)


async def test_restart_with_a_key_removed_from_trust_revokes_what_it_signed(
    tmp_path: Path,
) -> None:
    # First run: both keys trusted; the (later compromised) OLD key signs 9.0.0, which
    # this relay node accepts, caches and stores.
    async with running(tmp_path, {OLD, NEW}) as r:
        data9, pid9 = await cache(r, tmp_path, "9.0.0")
        frozen = make_announcement([OLD], version="9.0.0", data=data9)
        decision = await r.node.inject(frozen)
        assert decision is not None and decision.ok
        await persisted(tmp_path, frozen)
    # Restart with OLD removed from --trust, now with a target for the channel.
    target = app_target(tmp_path)
    async with running(tmp_path, {NEW}, target=target, run=1) as r:
        await wait_for(lambda: "untrusted" in r.refusals("9.0.0"))
        assert r.node.book.newest(CHANNEL) is None
        assert not (tmp_path / "data" / "announcements" / "app+stable.ann").exists()
        # The genuine release of the new key is lower-numbered; it is not "not_newest".
        data2, pid2 = await cache(r, tmp_path, "2.0.0")
        genuine = make_announcement([NEW], version="2.0.0", data=data2)
        decision = await r.node.inject(genuine)
        assert decision is not None and decision.ok, decision
        await wait_for(lambda: r.agent.applicator.installed_version(target) == "2.0.0")
        assert target.path.read_bytes() == data2
        assert "9.0.0" not in r.applied()
        # Nothing signed only by the revoked key is offered to peers any more.
        assert r.node.book.inventory() == ((CHANNEL, genuine.id),)
        assert r.node.book.by_id(frozen.id) is None
        # Its cached package is no longer pinned (evictable like any unused package).
        entries = {e["package_id"]: e for e in r.agent.status()["cache"]["entries"]}
        assert entries[pid9.hex()]["pinned"] == []
        assert entries[pid2.hex()]["pinned"] != []


async def test_announcement_expired_while_the_node_was_down_is_not_installed(
    tmp_path: Path,
) -> None:
    t0 = float(int(time.time()))
    async with running(tmp_path, {NEW}, wall_clock=lambda: t0) as r:
        data, _ = await cache(r, tmp_path, "1.5.0")
        short = make_announcement([NEW], version="1.5.0", data=data, created=int(t0), expires_in=5)
        decision = await r.node.inject(short)
        assert decision is not None and decision.ok
        await persisted(tmp_path, short)
    # Restarted ten minutes later (far past expiry plus the 5 minutes of clock skew).
    later = t0 + 600
    target = app_target(tmp_path)
    async with running(tmp_path, {NEW}, target=target, wall_clock=lambda: later, run=1) as r:
        await wait_for(lambda: "expired" in r.refusals("1.5.0"))
        assert r.node.book.newest(CHANNEL) is None
        # A later valid release still goes in, and the expired one never did.
        data2, _ = await cache(r, tmp_path, "1.2.0")
        fresh = make_announcement([NEW], version="1.2.0", data=data2, created=int(later))
        decision = await r.node.inject(fresh)
        assert decision is not None and decision.ok, decision
        await wait_for(lambda: r.agent.applicator.installed_version(target) == "1.2.0")
        assert r.applied() == ["1.2.0"]


async def test_stored_announcement_beyond_the_current_validity_cap_is_dropped(
    tmp_path: Path,
) -> None:
    # Stored by a node (or an older release) that accepted a year-long validity.
    (tmp_path / "data" / "announcements").mkdir(parents=True)
    long = make_announcement([NEW], version="5.0.0", expires_in=365 * 86400)
    (tmp_path / "data" / "announcements" / "app+stable.ann").write_bytes(long.encode())
    async with running(tmp_path, {NEW}) as r:
        await wait_for(lambda: "validity_too_long" in r.refusals("5.0.0"))
        assert r.node.book.newest(CHANNEL) is None


async def test_update_held_for_apply_is_not_installed_once_expired(tmp_path: Path) -> None:
    clock = [float(int(time.time()))]
    t0 = clock[0]
    target = app_target(tmp_path)
    target = TargetSpec(CHANNEL, target.path, version="1.0.0", auto_apply=False, confirm_window=0.1)
    async with running(tmp_path, {NEW}, target=target, wall_clock=lambda: clock[0]) as r:
        data, _ = await cache(r, tmp_path, "1.5.0")
        ann = make_announcement([NEW], version="1.5.0", data=data, created=int(t0), expires_in=60)
        decision = await r.node.inject(ann)
        assert decision is not None and decision.ok
        await wait_for(lambda: r.agent.channels[CHANNEL].waiting is not None)
        clock[0] = t0 + 3600  # the operator comes back an hour later
        reply = await r.agent.control({"op": "apply", "channel": CHANNEL})
        assert not reply["ok"] and "expired" in reply["error"], reply
        assert r.agent.applicator.installed_version(target) == "1.0.0"
        assert r.applied() == []


async def test_app_and_self_update_channels_are_both_checked_at_load(tmp_path: Path) -> None:
    from p2pupdate.selfupdate.release import platform_channel

    own = platform_channel("stable")
    directory = tmp_path / "data" / "announcements"
    directory.mkdir(parents=True)
    stored = {
        CHANNEL: make_announcement([OLD], channel=CHANNEL, version="9.0.0"),
        own: make_announcement([OLD], channel=own, version="9.0.0"),
        "db/stable": make_announcement([NEW], channel="db/stable", version="1.0.0"),
    }
    for channel, ann in stored.items():
        (directory / (channel.replace("/", "+") + ".ann")).write_bytes(ann.encode())
    async with running(tmp_path, {NEW}) as r:
        refused = {
            e["channel"]
            for e in r.events()
            if e["event"] == "update_refused" and e["reason"] == "untrusted"
        }
        assert refused == {CHANNEL, own}
        assert r.node.book.newest(CHANNEL) is None and r.node.book.newest(own) is None
        kept = r.node.book.newest("db/stable")
        assert kept is not None and kept.id == stored["db/stable"].id
        assert sorted(p.name for p in directory.iterdir()) == ["db+stable.ann"]
