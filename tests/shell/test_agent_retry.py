"""A failed download or install step that can pass is tried again (issue 20).

In memory with a virtual clock where the back-off itself is the point; real
TCP, real files and a real (tmpfs) filesystem that fills up where the disk is.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.chunks import ContentInfo
from p2pupdate.errors import DiskFullError
from p2pupdate.shell.agent import Agent, AgentOptions
from p2pupdate.shell.events import EventLog
from p2pupdate.shell.install import targets
from p2pupdate.shell.install.applicator import Applicator, TargetSpec
from p2pupdate.shell.net.transport import MemoryNetwork
from p2pupdate.shell.transfer.memstore import MemoryStore
from p2pupdate.shell.transfer.store import ChunkStore, DiskOps, DiskStore
from p2pupdate.shell.transfer.swarm import SwarmOptions
from tests.helpers import content_of, fill, make_announcement, small_tmpfs
from tests.shell.swarm_helpers import AUTHORITY, Peer, package, seed_with, start_peer

CHANNEL = "app/stable"


class Recorder(EventLog):
    """An event log that also keeps (name, fields, trio time) for the test."""

    def __init__(self) -> None:
        super().__init__(None, "me")
        self.seen: list[tuple[str, dict[str, Any], float]] = []

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        self.seen.append((name, dict(fields), trio.current_time()))
        return super().emit(name, **fields)

    def app_emit(self, name: str, fields: dict[str, Any]) -> None:
        self.emit(name, **fields)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [f for n, f, _ in self.seen if n == name]

    def times(self, name: str) -> list[float]:
        return [t for n, _, t in self.seen if n == name]

    async def wait_for(
        self, cond: Callable[[], bool], timeout: float = 60, poll: float = 0.01
    ) -> None:
        with trio.fail_after(timeout):  # a hang guard, not a timing assertion
            while not cond():
                await trio.sleep(poll)


def make_agent(
    peer: Peer,
    tmp: Path,
    events: Recorder,
    *,
    targets_: tuple[TargetSpec, ...] = (),
    **options: Any,
) -> Agent:
    return Agent(
        peer.node,
        peer.swarm,
        Applicator(tmp / "data", tmp / "backups", events.app_emit),
        events,
        AgentOptions(targets=targets_, **options),
        rng=random.Random(7),
    )


async def start_memory_seed(
    nursery: trio.Nursery,
    net: MemoryNetwork,
    host: str,
    ann: Announcement,
    info: ContentInfo,
    data: bytes,
    peers: list[tuple[str, int]] | None = None,
    **kw: Any,
) -> Peer:
    seed = await start_peer(
        nursery, 0, peers or [], transport=net.transport(host), listen=(host, 7000), **kw
    )
    await seed_with(seed, ann, info, data)
    return seed


# ---------------------------------------------------------------------------
# Back-off, in virtual time
# ---------------------------------------------------------------------------


async def test_disk_full_backs_off_doubling_and_resumes_as_soon_as_room_is_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = MemoryNetwork()
    data, info, ann = package(10 * 65536 + 5, seed=3)
    events = Recorder()
    store = MemoryStore(capacity=65536)  # far too small for the package
    async with trio.open_nursery() as nursery:
        await start_memory_seed(nursery, net, "10.0.0.1", ann, info, data)
        peer = await start_peer(
            nursery,
            1,
            [("10.0.0.1", 7000)],
            store=store,
            transport=net.transport("10.0.0.2"),
            listen=("10.0.0.2", 7000),
        )
        agent = make_agent(peer, tmp_path, events, retry_min=30, retry_max=100, free_space_poll=5)
        await nursery.start(agent.run)
        await events.wait_for(lambda: len(events.named("download_retry")) >= 3, 10_000, poll=0.5)

        retries = events.named("download_retry")[:3]
        assert [r["attempt"] for r in retries] == [1, 2, 3]
        assert {r["reason"] for r in retries} == {"disk_full"}
        assert {r["wake_on"] for r in retries} == {"free_space"}
        assert {r["channel"] for r in retries} == {CHANNEL}
        assert {r["version"] for r in retries} == {"2.0.0"}
        # 30 s doubling, capped at 100 s, each up to a quarter shorter (jitter).
        for r, (low, high) in zip(retries, [(22.5, 30), (45, 60), (75, 100)], strict=True):
            assert low <= r["delay"] <= high
        failed = events.named("download_failed")
        assert all(f["reason"] == "disk_full" and f["detail"] for f in failed)
        # Each try came only after the wait it announced.
        fail_times = events.times("download_failed")
        for i in range(2):
            assert fail_times[i + 1] - fail_times[i] >= retries[i]["delay"] - 0.001

        status = agent.status()["channels"][CHANNEL]["retry"]
        assert status["reason"] == "disk_full" and status["step"] == "download"
        assert status["attempt"] >= 3 and status["version"] == "2.0.0"

        # Room is back: the free-space poll starts the download long before the
        # 100 s back-off would have.
        store.capacity = None
        freed = trio.current_time()
        await events.wait_for(lambda: bool(events.named("download_complete")), 10_000, poll=0.5)
        assert trio.current_time() - freed < 75  # virtual time: the poll, not the timer
        assert store.has_complete(info.package_id)
        assert agent.status()["channels"][CHANNEL]["retry"] is None
        nursery.cancel_scope.cancel()


async def test_disk_full_while_writing_waits_out_its_back_off_and_keeps_chunks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The free space numbers said there was room, yet a write failed: no early
    wake-up (that would fail in a loop); the back-off decides, and the chunks
    written before the failure are not fetched again."""
    net = MemoryNetwork()
    data, info, ann = package(16 * 65536 + 5, seed=13)
    events = Recorder()
    store = MemoryStore()
    store.fail_writes_after = 6
    async with trio.open_nursery() as nursery:
        seed = await start_memory_seed(nursery, net, "10.0.0.1", ann, info, data)
        peer = await start_peer(
            nursery,
            1,
            [("10.0.0.1", 7000)],
            store=store,
            transport=net.transport("10.0.0.2"),
            listen=("10.0.0.2", 7000),
        )
        agent = make_agent(peer, tmp_path, events, retry_min=40, retry_max=40, free_space_poll=1)
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("download_retry")), 10_000, poll=0.5)
        failed = events.named("download_failed")[0]
        assert failed["reason"] == "disk_full"
        assert failed["detail"].startswith("disk full writing chunk")
        retry = events.named("download_retry")[0]
        assert (retry["reason"], retry["wake_on"]) == ("disk_full", "free_space")
        store.fail_writes_after = None  # the disk recovers; nothing tells the node
        await events.wait_for(lambda: bool(events.named("download_complete")), 10_000, poll=0.5)
        started = events.times("download_started")
        assert len(started) == 2
        assert (
            started[1] - events.times("download_failed")[0] >= retry["delay"] - 0.001
        )  # (rounded in the event)
        assert seed.swarm.bytes_uploaded <= info.size + 16 * 65536 - 6 * 65536
        nursery.cancel_scope.cancel()


async def test_a_newer_release_cancels_the_pending_retry(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = MemoryNetwork()
    data, info, ann = package(4 * 65536, seed=4)
    events = Recorder()
    store = MemoryStore(capacity=1000)
    async with trio.open_nursery() as nursery:
        seed = await start_memory_seed(nursery, net, "10.0.0.1", ann, info, data)
        peer = await start_peer(
            nursery,
            1,
            [("10.0.0.1", 7000)],
            store=store,
            transport=net.transport("10.0.0.2"),
            listen=("10.0.0.2", 7000),
        )
        agent = make_agent(peer, tmp_path, events, retry_min=30, retry_max=60)
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("download_retry")), 10_000, poll=0.5)
        # A newer version arrives: the old one is superseded, never tried again.
        small = b"v3" * 100
        newer = make_announcement([AUTHORITY], version="3.0.0", data=small)
        store.capacity = None
        await seed_with(seed, newer, content_of(small), small)
        await events.wait_for(
            lambda: any(f["version"] == "3.0.0" for f in events.named("download_started")),
            10_000,
            poll=0.5,
        )
        await trio.sleep(200)  # virtual: well past every back-off of the old version
        started = [f["version"] for f in events.named("download_started")]
        assert "2.0.0" not in started
        assert agent.status()["channels"][CHANNEL]["retry"] is None
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Sources: gone, and a new one joins
# ---------------------------------------------------------------------------


async def test_download_whose_only_source_left_completes_when_a_new_source_joins(
    tmp_path: Path,
) -> None:
    data, info, ann = package(40 * 65536 + 17, seed=5)
    events = Recorder()
    slow = SwarmOptions(request_timeout=2.0, max_upload_speed=512 * 1024)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as first:
            seed = await start_peer(first, 0, [], swarm_options=slow)
            await seed_with(seed, ann, info, data)
            peer = await start_peer(nursery, 1, [seed.node.listen_addr])
            agent = make_agent(peer, tmp_path, events, retry_min=3600, retry_max=3600)
            await nursery.start(agent.run)
            await events.wait_for(
                lambda: any(f["bytes_done"] > 0 for f in events.named("download_progress"))
            )
            first.cancel_scope.cancel()  # the only source goes away mid-download
        assert not peer.store.has_complete(info.package_id)
        second = await start_peer(nursery, 2, [peer.node.listen_addr])
        await seed_with(second, ann, info, data)
        await events.wait_for(lambda: bool(events.named("download_complete")))
        assert second.swarm.bytes_uploaded < info.size  # the first source's chunks were kept
        nursery.cancel_scope.cancel()


async def test_hash_mismatch_from_a_bad_disk_is_retried_when_a_new_source_joins(
    tmp_path: Path,
) -> None:
    """A chunk goes bad on disk after it was verified: the whole-package hash fails.
    The bitmap is reset (so every chunk is re-hashed from the file), and the retry
    waits for its back-off or, sooner, for a peer that offers the package."""
    data, info, ann = package(12 * 65536 + 3, seed=6)
    events = Recorder()
    corrupted: list[int] = []

    def bad_disk(fd: int, buf: bytes | memoryview, offset: int) -> int:
        if offset == 3 * 65536 and not corrupted:
            corrupted.append(offset)
            raw = bytearray(buf)
            raw[10] ^= 0xFF
            return os.pwrite(fd, bytes(raw), offset)
        return os.pwrite(fd, buf, offset)

    store = DiskStore(tmp_path / "store", ops=DiskOps(pwrite=bad_disk), free_margin=0)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, data)
        peer = await start_peer(nursery, 1, [seed.node.listen_addr], store=store)
        agent = make_agent(peer, tmp_path, events, retry_min=3600, retry_max=3600)
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("download_retry")))
        assert events.named("download_failed")[0]["reason"] == "package_hash_mismatch"
        retry = events.named("download_retry")[0]
        assert (retry["reason"], retry["wake_on"]) == ("package_hash_mismatch", "new_source")
        assert not store.has_complete(info.package_id)
        # Nothing happens by itself within the hour-long back-off; a new peer
        # holding the package connects, and the retry starts at once.
        newcomer = await start_peer(nursery, 2, [peer.node.listen_addr])
        await seed_with(newcomer, ann, info, data)
        await events.wait_for(lambda: bool(events.named("download_complete")))
        assert events.named("download_complete")
        path = store.complete_path(info.package_id)
        assert path is not None and path.read_bytes() == data
        # Only the bad chunk was fetched again: the good ones were re-hashed from disk.
        fetched_again = seed.swarm.bytes_uploaded + newcomer.swarm.bytes_uploaded - info.size
        assert fetched_again <= 2 * 65536
        nursery.cancel_scope.cancel()
    store.close()


# ---------------------------------------------------------------------------
# Install steps: a full disk while staging is the host's fault
# ---------------------------------------------------------------------------


class FreesSpace(Recorder):
    """Frees the disk (``full[0] = False``) the moment the install retry is scheduled:
    before the agent's waiting task first looks at the free space."""

    def __init__(self, full: list[bool]) -> None:
        super().__init__()
        self.full = full

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        if name == "install_retry":
            self.full[0] = False
        return super().emit(name, **fields)


async def test_space_freed_before_the_retry_task_runs_still_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of a loaded machine, made certain: the space comes back between the
    failure and the first free-space poll. The disk was seen full at the failure, so
    the retry runs at once (it used to wait out its hour-long back-off)."""
    appdir = tmp_path / "opt"
    appdir.mkdir()
    target_path = appdir / "app.conf"
    target_path.write_bytes(b"config 1\n")
    spec = TargetSpec(CHANNEL, target_path, version="1.0.0", health_timeout=5.0)
    data, info, ann = package(3 * 65536 + 1, seed=9)
    full = [True]
    events = FreesSpace(full)
    real_check = targets.check_free_space

    def check_free_space(directory: Path, needed: int, margin: int = 0) -> None:
        if full[0]:
            raise DiskFullError(f"not enough free space in {directory}")
        real_check(directory, needed, margin)

    monkeypatch.setattr(targets, "check_free_space", check_free_space)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, data)
        peer = await start_peer(nursery, 1, [seed.node.listen_addr])
        agent = make_agent(
            peer,
            tmp_path,
            events,
            targets_=(spec,),
            retry_min=3600,
            retry_max=3600,
            free_space_poll=0.05,
        )
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("update_complete")))
        assert [f["reason"] for f in events.named("update_failed")] == ["disk_full"]
        assert target_path.read_bytes() == data
        nursery.cancel_scope.cancel()


async def test_disk_full_while_staging_does_not_quarantine_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    appdir = tmp_path / "opt"
    appdir.mkdir()
    target_path = appdir / "app.conf"
    target_path.write_bytes(b"config 1\n")
    spec = TargetSpec(CHANNEL, target_path, version="1.0.0", health_timeout=5.0)
    data, info, ann = package(3 * 65536 + 1, seed=9)
    events = Recorder()
    full = [True]
    real_check = targets.check_free_space

    def check_free_space(directory: Path, needed: int, margin: int = 0) -> None:
        # The shell's disk layer (as in test_applicator_faults): a full disk
        # cannot be made on demand under the target's directory.
        if full[0]:
            raise DiskFullError(f"not enough free space in {directory}")
        real_check(directory, needed, margin)

    monkeypatch.setattr(targets, "check_free_space", check_free_space)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, data)
        peer = await start_peer(nursery, 1, [seed.node.listen_addr])
        # An hour-long back-off: only the free-space check can bring it back here.
        agent = make_agent(
            peer,
            tmp_path,
            events,
            targets_=(spec,),
            retry_min=3600,
            retry_max=3600,
            free_space_poll=0.05,
        )
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("install_retry")))
        failed = events.named("update_failed")
        assert failed and {f["reason"] for f in failed} == {"disk_full"}
        assert not events.named("quarantined")
        assert agent.applicator.quarantined(CHANNEL) == []
        assert target_path.read_bytes() == b"config 1\n"
        retry = agent.status()["channels"][CHANNEL]["retry"]
        assert retry["step"] == "install" and retry["reason"] == "disk_full"
        assert retry["wake_on"] == "free_space" and retry["attempt"] == 1
        full[0] = False  # the operator freed some space
        await events.wait_for(lambda: bool(events.named("update_complete")))
        assert target_path.read_bytes() == data
        assert agent.applicator.installed_version(spec) == "2.0.0"
        assert agent.status()["channels"][CHANNEL]["retry"] is None
        nursery.cancel_scope.cancel()


async def test_health_check_failure_is_final_not_retried(tmp_path: Path) -> None:
    appdir = tmp_path / "opt"
    appdir.mkdir()
    target_path = appdir / "app.conf"
    target_path.write_bytes(b"config 1\n")
    spec = TargetSpec(
        CHANNEL, target_path, version="1.0.0", health_timeout=5.0, health_cmd=["false"]
    )
    data, info, ann = package(2 * 65536, seed=10)
    events = Recorder()
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, data)
        peer = await start_peer(nursery, 1, [seed.node.listen_addr])
        agent = make_agent(peer, tmp_path, events, targets_=(spec,), retry_min=0.05, retry_max=0.05)
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("quarantined")))
        assert events.named("update_failed")[0]["reason"] == "health_check_failed"
        assert not events.named("install_retry")
        assert agent.status()["channels"][CHANNEL]["retry"] is None
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# A real filesystem that fills up mid-download, and is grown again
# ---------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (root only; skipped where a mount is not possible)."""
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


async def test_small_filesystem_fills_mid_download_and_completes_once_grown(
    tmp_path: Path, small_fs: Path
) -> None:
    data, info, ann = package(48 * 65536 + 11, seed=12)  # about 3 MiB
    events = Recorder()
    store: ChunkStore = DiskStore(small_fs / "store", free_margin=256 * 1024)
    slow = SwarmOptions(request_timeout=2.0, max_upload_speed=1024 * 1024)
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [], swarm_options=slow)
        await seed_with(seed, ann, info, data)
        peer = await start_peer(nursery, 1, [seed.node.listen_addr], store=store)
        # An hour-long back-off: only the free-space poll can bring it back in this test.
        agent = make_agent(
            peer, tmp_path, events, retry_min=3600, retry_max=3600, free_space_poll=0.1
        )
        await nursery.start(agent.run)
        await events.wait_for(
            lambda: any(f["bytes_done"] > info.size // 4 for f in events.named("download_progress"))
        )
        await trio.to_thread.run_sync(fill, small_fs)
        await events.wait_for(lambda: bool(events.named("download_retry")))
        failed = events.named("download_failed")[0]
        assert failed["reason"] == "disk_full" and failed["detail"]
        retry = events.named("download_retry")[0]
        assert (retry["reason"], retry["attempt"], retry["wake_on"]) == (
            "disk_full",
            1,
            "free_space",
        )
        status = agent.status()["channels"][CHANNEL]
        assert status["retry"]["reason"] == "disk_full" and status["download"] is None
        assert not store.has_complete(info.package_id)
        assert free_bytes(small_fs) < 256 * 1024

        res = await trio.run_process(
            ["mount", "-o", "remount,size=32m", str(small_fs)], capture_stderr=True, check=False
        )
        assert res.returncode == 0, res.stderr
        await events.wait_for(lambda: bool(events.named("download_complete")))
        path = store.complete_path(info.package_id)
        assert path is not None and path.read_bytes() == data
        assert events.named("download_complete")
        assert agent.status()["channels"][CHANNEL]["retry"] is None
        # The verified chunks written before the disk filled were kept, not fetched again.
        assert seed.swarm.bytes_uploaded < info.size + info.size // 4
        nursery.cancel_scope.cancel()
    store.close()
