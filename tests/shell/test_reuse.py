"""Local chunk reuse: a download copies the chunks it finds in local files and fetches
only the rest (real files, real TCP on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path

import pytest
import trio
from bitarray.util import zeros

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement, AnnouncementBody, sign_announcement
from p2pupdate.core.chunks import ContentInfo
from p2pupdate.shell.transfer.memstore import MemoryStore
from p2pupdate.shell.transfer.reuse import LocalChunks
from p2pupdate.shell.transfer.store import DiskStore
from tests.helpers import content_of
from tests.shell.swarm_helpers import AUTHORITY, seed_with, start_peer, wait_connected

C = 65536


def announce(data: bytes, version: str = "2.0.0") -> tuple[ContentInfo, Announcement]:
    info = content_of(data)
    now = int(time.time())
    body = AnnouncementBody(
        channel="app/stable",
        version=version,
        package_id=info.package_id,
        size=info.size,
        table_root=info.root,
        created=now,
        expires=now + 3600,
    )
    return info, sign_announcement(body, [AUTHORITY])


def changed(old: bytes, chunks: list[int], seed: int = 2) -> bytes:
    """``old`` with the given chunks replaced by other bytes of the same length."""
    rng = random.Random(seed)
    new = bytearray(old)
    for c in chunks:
        end = min(len(old), (c + 1) * C)
        new[c * C : end] = rng.randbytes(end - c * C)
    return bytes(new)


async def test_download_fetches_only_the_chunks_not_found_in_the_installed_file(
    tmp_path: Path,
) -> None:
    old = random.Random(1).randbytes(40 * C + 1234)
    new = changed(old, [3, 17, 40])  # two full chunks and the short last one
    info, ann = announce(new)
    installed = tmp_path / "app"
    installed.write_bytes(old)
    store = DiskStore(tmp_path / "store")
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, new)
        me = await start_peer(nursery, 1, [seed.node.listen_addr], store=store)
        reuse = LocalChunks(store, lambda channel: [installed] if channel == "app/stable" else [])
        me.swarm.fetcher.local_chunks = reuse.fill
        await wait_connected([me], 1)
        result = await me.swarm.download(ann)
        assert result.ok
        assert sum(result.sources.values()) == 3
        assert result.reused_bytes == 38 * C
        assert me.swarm.status()[info.package_id.hex()]["reused_bytes"] == 38 * C
        path = store.complete_path(info.package_id)
        assert path is not None and path.read_bytes() == new
        nursery.cancel_scope.cancel()
    store.close()


async def test_chunks_come_from_older_cached_packages_and_moved_offsets(tmp_path: Path) -> None:
    old = random.Random(5).randbytes(12 * C)
    old_info, _ = announce(old, "1.0.0")
    # The new package starts with a new chunk: every old chunk moved one place on.
    new = random.Random(6).randbytes(C) + old
    info, _ = announce(new)
    src = tmp_path / "old.pkg"
    src.write_bytes(old)
    store = DiskStore(tmp_path / "store")
    await store.add_complete_file(old_info.package_id, src)
    src.unlink()
    await store.open_partial(info.package_id, info.size)
    have = zeros(info.nchunks)
    copied = await LocalChunks(store).fill(
        "app/stable", info.package_id, info.chunk_hashes, have, info.size
    )
    assert copied == 12 * C
    assert have.to01() == "0" + "1" * 12
    for i in range(1, 13):
        assert await store.read_chunk(info.package_id, i, C) == new[i * C : (i + 1) * C]
    store.close()


async def test_a_file_changed_after_hashing_is_checked_again_when_copied(tmp_path: Path) -> None:
    old = random.Random(7).randbytes(8 * C)
    info, _ = announce(old)  # the package is the old file itself
    f = tmp_path / "app"
    f.write_bytes(old)
    store = MemoryStore()
    reuse = LocalChunks(store, lambda _: [f])
    # First download: hashes the file (digests remembered for this file identity).
    await store.open_partial(info.package_id, info.size)
    assert await reuse.fill("c", info.package_id, info.chunk_hashes, zeros(8), info.size) == 8 * C
    hashed = reuse.bytes_hashed
    # The file's chunk 2 changes behind our back, size and mtime kept: the remembered
    # digests still claim the old bytes, the copy must not.
    st = f.stat()
    with f.open("r+b") as fh:
        fh.seek(2 * C + 10)
        fh.write(b"tampered")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    have = zeros(8)
    copied = await reuse.fill("c", info.package_id, info.chunk_hashes, have, info.size)
    assert reuse.bytes_hashed == hashed  # not hashed again
    assert copied == 7 * C
    assert have.to01() == "11011111"


async def test_directory_candidates_are_walked_and_the_index_is_bounded(tmp_path: Path) -> None:
    a = random.Random(8).randbytes(3 * C)
    b = random.Random(9).randbytes(2 * C + 5)
    release = tmp_path / "release"
    (release / "sub").mkdir(parents=True)
    (release / "a.bin").write_bytes(a)
    (release / "sub" / "b.bin").write_bytes(b)
    (release / "link").symlink_to("/etc/hostname")  # not followed
    (release / "tiny.cfg").write_bytes(b"x" * 10)  # can hold no chunk: not even read
    new = a + b[: 2 * C] + b"\0" * 100
    info, _ = announce(new)
    store = MemoryStore()
    await store.open_partial(info.package_id, info.size)
    have = zeros(info.nchunks)
    whole = LocalChunks(store, lambda _: [release])
    copied = await whole.fill("c", info.package_id, info.chunk_hashes, have, info.size)
    assert copied == 5 * C
    assert have.to01() == "111110"
    assert whole.bytes_hashed == len(a) + len(b)
    # With room for 2 index entries, only the first file's first 2 pieces are hashed.
    small = dataclasses.replace(DEFAULT_LIMITS, max_reuse_index_chunks=2)
    have = zeros(info.nchunks)
    reuse = LocalChunks(store, lambda _: [release], limits=small)
    copied = await reuse.fill("c", info.package_id, info.chunk_hashes, have, info.size)
    assert copied == 2 * C
    assert have.to01() == "110000"
    assert reuse.bytes_hashed == 2 * C


async def test_nothing_local_means_nothing_copied(tmp_path: Path) -> None:
    new = random.Random(10).randbytes(3 * C)
    info, _ = announce(new)
    store = MemoryStore()
    await store.open_partial(info.package_id, info.size)
    other = tmp_path / "other"
    other.write_bytes(random.Random(11).randbytes(3 * C))
    have = zeros(3)
    missing = tmp_path / "missing"
    reuse = LocalChunks(store, lambda _: [missing, other])
    assert await reuse.fill("c", info.package_id, info.chunk_hashes, have, info.size) == 0
    assert not have.any()


async def test_agent_reuses_the_installed_target_and_reports_reused_bytes(
    tmp_path: Path,
) -> None:
    from p2pupdate.shell.install.applicator import TargetSpec
    from tests.shell.test_agent_retry import CHANNEL, Recorder, make_agent

    old = random.Random(12).randbytes(30 * C + 99)
    new = changed(old, [0, 29])
    info, ann = announce(new)
    target = tmp_path / "app"
    target.write_bytes(old)
    store = DiskStore(tmp_path / "store")
    events = Recorder()
    async with trio.open_nursery() as nursery:
        seed = await start_peer(nursery, 0, [])
        await seed_with(seed, ann, info, new)
        me = await start_peer(nursery, 1, [seed.node.listen_addr], store=store)
        spec = TargetSpec(CHANNEL, target, version="1.0.0")
        agent = make_agent(me, tmp_path, events, targets_=(spec,))
        await nursery.start(agent.run)
        await events.wait_for(lambda: bool(events.named("update_complete")))
        done = events.named("download_complete")[0]
        assert done["reused_bytes"] == 28 * C + 99  # the short last chunk too
        assert sum(done["sources"].values()) == 2
        assert target.read_bytes() == new
        last = agent.status()["channels"][CHANNEL]["last_download"]
        assert last == {"version": "2.0.0", "bytes_total": len(new), "reused_bytes": 28 * C + 99}
        nursery.cancel_scope.cancel()
    store.close()


async def test_packed_releases_reuse_the_previous_archive_or_the_live_release(
    tmp_path: Path,
) -> None:
    from p2pupdate.shell.install.pack import pack_directory
    from p2pupdate.shell.install.unpack import extract_release
    from tests.shell.test_pack import make_tree

    tree = tmp_path / "tree"
    make_tree(tree)
    pack_directory(tree, tmp_path / "v1.tar")
    release = tmp_path / "release"
    extract_release(tmp_path / "v1.tar", release, 1 << 30)
    # v2: bin/app grows by a few bytes (every later file moves in the archive).
    app = tree / "bin" / "app"
    app.write_bytes(app.read_bytes() + b"v2")
    pack_directory(tree, tmp_path / "v2.tar")
    new = (tmp_path / "v2.tar").read_bytes()
    info, _ = announce(new)
    store = MemoryStore()
    for candidates in ([tmp_path / "v1.tar"], [release]):
        await store.open_partial(info.package_id, info.size)
        have = zeros(info.nchunks)
        reuse = LocalChunks(store, dict.fromkeys(["c"], candidates).__getitem__)
        copied = await reuse.fill("c", info.package_id, info.chunk_hashes, have, info.size)
        # Everything but a few chunks around the changed file's end and the headers.
        assert have.count(0) <= 6, (candidates, have.count(0))
        assert copied >= info.size - 6 * C
        for i in have.search(1):
            assert (
                await store.read_chunk(info.package_id, i, len(new[i * C : (i + 1) * C]))
                == (new[i * C : (i + 1) * C])
            )
        await store.remove(info.package_id)


async def test_a_fifo_swapped_in_for_a_hashed_file_is_skipped_not_waited_on(
    tmp_path: Path,
) -> None:
    old = random.Random(13).randbytes(4 * C)
    info, _ = announce(old)
    f = tmp_path / "app"
    f.write_bytes(old)
    store = MemoryStore()
    reuse = LocalChunks(store, lambda _: [f])
    await store.open_partial(info.package_id, info.size)
    assert await reuse.fill("c", info.package_id, info.chunk_hashes, zeros(4), info.size) == 4 * C
    # Same path, now a FIFO nobody writes to: listed as not a regular file, skipped.
    f.unlink()
    os.mkfifo(f)
    have = zeros(4)
    with trio.fail_after(30):  # a hang guard: opening a FIFO for reading would block
        assert await reuse.fill("c", info.package_id, info.chunk_hashes, have, info.size) == 0
    assert not have.any()


async def test_opening_a_listed_file_that_became_a_fifo_fails_at_once(tmp_path: Path) -> None:
    from p2pupdate.shell.transfer.reuse import _File, _key, _open_same

    f = tmp_path / "app"
    f.write_bytes(b"x" * 100)
    listed = _File(f, _key(f.stat()), 100)
    f.unlink()
    os.mkfifo(f)  # swapped in between the listing and the read, nobody writing
    with trio.fail_after(30):  # a hang guard (the thread is abandoned if it blocks)
        with pytest.raises(OSError):
            await trio.to_thread.run_sync(_open_same, listed, abandon_on_cancel=True)


async def test_a_directory_target_reuses_its_live_release(tmp_path: Path) -> None:
    from p2pupdate.shell.install.applicator import TargetSpec
    from p2pupdate.shell.install.pack import pack_directory
    from tests.shell.test_agent_retry import CHANNEL, Recorder, make_agent
    from tests.shell.test_pack import make_tree

    tree = tmp_path / "tree"
    make_tree(tree)
    pack_directory(tree, tmp_path / "v1.tar")
    v1 = (tmp_path / "v1.tar").read_bytes()
    info1, ann1 = announce(v1, "1.0.0")
    store = DiskStore(tmp_path / "store")
    events = Recorder()
    spec = TargetSpec(CHANNEL, tmp_path / "srv" / "svc", is_dir=True, health_cmd=["/bin/true"])
    (tmp_path / "srv").mkdir()
    async with trio.open_nursery() as nursery:
        seed1 = await start_peer(nursery, 0, [])
        await seed_with(seed1, ann1, info1, v1)
        me = await start_peer(nursery, 1, [seed1.node.listen_addr], store=store)
        agent = make_agent(me, tmp_path, events, targets_=(spec,))
        await nursery.start(agent.run)
        await events.wait_for(lambda: len(events.named("update_complete")) == 1)
        # The cached 1.0.0 goes: what 2.0.0 reuses can only come from the live release.
        await me.swarm.forget(info1.package_id)
        app = tree / "bin" / "app"
        app.write_bytes(app.read_bytes() + b"v2")
        pack_directory(tree, tmp_path / "v2.tar")
        v2 = (tmp_path / "v2.tar").read_bytes()
        info2, ann2 = announce(v2, "2.0.0")
        seed2 = await start_peer(nursery, 2, [me.node.listen_addr])
        await seed_with(seed2, ann2, info2, v2)
        await seed2.node.inject(ann2)
        await events.wait_for(lambda: len(events.named("update_complete")) == 2)
        done = next(d for d in events.named("download_complete") if d["version"] == "2.0.0")
        fetched = sum(done["sources"].values())
        assert fetched <= 6, fetched  # headers, the grown file's tail, the small files
        assert done["reused_bytes"] >= len(v2) - 6 * C
        assert (spec.path / "bin" / "app").read_bytes() == app.read_bytes()
        nursery.cancel_scope.cancel()
    store.close()
