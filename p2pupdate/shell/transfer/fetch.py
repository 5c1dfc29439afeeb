"""The fetching side of the swarm: downloading a package from many peers.

What it does
    :class:`Fetcher` runs one download per package: it opens the partial file, gets the
    chunk table (stored, or fetched by :class:`~.tables.TableFetcher`), resumes from the
    persisted bitmap, then drives the pure :class:`~p2pupdate.core.download.Downloader`:
    it feeds it what peers advertise, send and refuse, and carries out its actions
    (:data:`~p2pupdate.core.download.DownloadAction`, dispatched with ``match``): REQUEST
    and CANCEL to peers, chunks written, bans, HAVE batched, the sources refreshed on a
    stall. Order of a chunk's life: CHUNK arrives -> the core verifies its BLAKE3 against
    the signed table -> written at its offset -> servable and announced (HAVE, batched)
    -> every ``persist_interval`` the ``have`` bitmap is copied, the data fsynced, then
    the copy persisted. The bitmap may lag, never lead. A critical download goes first:
    while it runs, the others ask for nothing new.

What it does not do
    Decide which chunk to ask of whom (the core does) or answer peers (:mod:`.serve`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, assert_never

import trio
from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.core.chunks import table_root
from p2pupdate.core.download import (
    AnnounceHave,
    AskChunk,
    Ban,
    CancelAsk,
    Completed,
    DownloadAction,
    Downloader,
    DownloadFailed,
    DownloadState,
    RefreshSources,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.messages import Bitfield, Cancel, Chunk, Complete, Request
from p2pupdate.core.ratelimit import TokenBucket
from p2pupdate.errors import DiskFullError
from p2pupdate.shell.transfer.packages import Package, SwarmOptions, ban_peer, set_table
from p2pupdate.shell.transfer.tables import TableFetcher

if TYPE_CHECKING:
    from p2pupdate.shell.net.node import Node, PeerConn
    from p2pupdate.shell.transfer.serve import Server
    from p2pupdate.shell.transfer.store import ChunkStore

__all__ = ["HAVE_FLUSH", "DownloadResult", "Fetcher", "LocalChunksFn", "ProgressFn"]

log = logging.getLogger("p2pupdate.swarm")

# HAVE lists are flushed this often (about one loopback round trip or less).
HAVE_FLUSH = 0.01

ProgressFn = Callable[[float, int, int, float], None]
"""on_progress(fraction, bytes_done, size, bytes per second)."""

LocalChunksFn = Callable[[str, bytes, Sequence[bytes], bitarray, int], Awaitable[int]]
"""local_chunks(channel, package id, table, have, size) -> bytes copied from local files."""

_ACTIVE = (DownloadState.PENDING, DownloadState.DOWNLOADING)


@dataclass
class DownloadResult:
    ok: bool
    reason: str = ""
    sources: dict[str, int] = field(default_factory=dict)
    reused_bytes: int = 0  # copied from local files, not fetched (shell.transfer.reuse)


class Fetcher:
    """Every download of one node, and the chunks, rejects and adverts that feed them."""

    def __init__(
        self,
        node: Node,
        store: ChunkStore,
        options: SwarmOptions,
        packages: dict[bytes, Package],
        server: Server,
        rng: random.Random,
    ) -> None:
        self.node = node
        self.store = store
        self.options = options
        self.packages = packages
        self.server = server
        self.rng = rng
        self.limits = node.options.limits
        self.tables = TableFetcher(node, packages, rng, options.table_timeout)
        now = trio.current_time()
        self.down_bucket = TokenBucket(float(options.max_download_speed), 128 * 1024, now)
        self.bad_chunks = 0
        # Verified chunks received and their bytes (metrics).
        self.chunks_verified = 0
        self.bytes_downloaded = 0
        self.critical_active: set[bytes] = set()  # critical downloads in progress
        self.labels: dict[bytes, str] = {}  # node id -> label of sources that left
        # Local chunk reuse (shell.transfer.reuse.LocalChunks.fill, set by the agent):
        # (channel, package id, table, have, size) -> bytes copied, marked in ``have``.
        self.local_chunks: LocalChunksFn | None = None

    # -- peers ------------------------------------------------------------------------
    def peer_down(self, peer: PeerConn) -> None:
        """A peer left: keep its label if a download counts it as a source (for the
        download_complete ``sources``); the oldest go first past the limit."""
        nid = peer.node_id
        if any(
            nid in pkg.downloader.sources()
            for pkg in self.packages.values()
            if pkg.downloader is not None
        ):
            self.labels[nid] = peer.label
            while len(self.labels) > self.limits.max_peer_labels:
                del self.labels[next(iter(self.labels))]

    def peer_left_package(self, pkg: Package, nid: bytes, now: float) -> None:
        """A peer left: its requests for ``pkg`` go back to the pool."""
        if pkg.downloader is not None and pkg.downloader.state in _ACTIVE:
            pkg.downloader.on_peer_gone(nid, now)
            pkg.poke()

    def peer_bits(self, peer: PeerConn, pkg: Package, bits: bitarray) -> None:
        """``peer`` advertises exactly ``bits`` of ``pkg``."""
        if (dl := pkg.downloader) is not None and dl.state in _ACTIVE:
            self._run_actions(pkg, dl.on_peer_bitfield(peer.node_id, bits, trio.current_time()))
            pkg.poke()

    def peer_have(self, peer: PeerConn, pkg: Package, indices: tuple[int, ...]) -> None:
        """``peer`` now also has ``indices`` of ``pkg``."""
        if (dl := pkg.downloader) is not None and dl.state in _ACTIVE:
            self._run_actions(pkg, dl.on_peer_have(peer.node_id, indices, trio.current_time()))
            pkg.poke()

    def on_reject(self, peer: PeerConn, package_id: bytes, index: int) -> None:
        """``peer`` refused a chunk we asked for."""
        pkg = self.packages.get(package_id)
        if pkg is not None and pkg.downloader is not None:
            self._run_actions(
                pkg, pkg.downloader.on_reject(peer.node_id, index, trio.current_time())
            )
            pkg.poke()

    async def on_chunk(self, peer: PeerConn, msg: Chunk) -> None:
        """A CHUNK arrived: paced by the download limit, verified, written."""
        pkg = self.packages.get(msg.package_id)
        if pkg is None or pkg.downloader is None:
            return
        dl = pkg.downloader
        if dl.state not in _ACTIVE:
            return
        if not pkg.critical and self.options.max_download_speed:
            delay = self.down_bucket.consume(len(msg.data), trio.current_time())
            if delay > 0:
                await trio.sleep(delay)
        actions = dl.on_chunk(peer.node_id, msg.index, msg.data, trio.current_time())
        if any(isinstance(act, WriteChunk) for act in actions):
            peer.mark_useful(trio.current_time())  # a verified chunk: eviction keeps it
            self.chunks_verified += 1
            self.bytes_downloaded += len(msg.data)
        await self._run_actions_async(pkg, actions)
        pkg.poke()

    # -- downloads --------------------------------------------------------------------
    async def download(
        self, pkg: Package, on_progress: ProgressFn | None, on_started: Callable[[], None] | None
    ) -> DownloadResult:
        """Fetch ``pkg`` into the complete cache, resuming what is there; the caller has
        checked that it is not complete already."""
        pid = pkg.package_id
        # A partial file created just now holds nothing worth scanning (hashing 1 GiB of
        # zeros would delay the start by seconds); one left by a stop or crash may.
        resumed = any(p == pid for p, _ in self.store.list_partial())
        await self.store.open_partial(pid, pkg.size)  # DiskFullError propagates
        if pkg.hashes is None:
            stored = self.store.load_table(pid)
            hashes = None
            if stored is not None:
                candidate = [stored[i : i + 32] for i in range(0, len(stored), 32)]
                if len(candidate) == pkg.nchunks and table_root(candidate) == pkg.root:
                    hashes = candidate
            if hashes is None:
                if pkg.size == 0:
                    hashes = []
                else:
                    hashes = await self.tables.fetch(pkg)
                self.store.save_table(pid, b"".join(hashes))
            set_table(pkg, hashes)
        assert pkg.hashes is not None
        have = self.store.load_bitmap(pid, pkg.nchunks)
        if have is None:
            have = zeros(pkg.nchunks)
        if resumed:
            for i in await self.store.scan_unclaimed(pid, pkg.hashes, have, pkg.size):
                have[i] = 1
        if self.local_chunks is not None:
            pkg.reused_bytes = await self.local_chunks(pkg.channel, pid, pkg.hashes, have, pkg.size)
        dl: Downloader[bytes] = Downloader(
            pid,
            pkg.size,
            pkg.hashes,
            have=have,
            rng=self.rng,
            pipeline_depth=self.options.pipeline_depth,
            request_timeout=self.options.request_timeout,
            stall_timeout=self.options.stall_timeout,
        )
        pkg.downloader = dl
        if on_started is not None:
            on_started()
        now = trio.current_time()
        for nid, bits in pkg.bitfields.items():
            if nid in self.node.peers:
                self._run_actions(pkg, dl.on_peer_bitfield(nid, bits, now))
        # Tell everyone what we can serve of it already (possibly nothing).
        for peer in list(self.node.peers.values()):
            self.server.post_bitfield(peer, pid, Bitfield(pid, pkg.nchunks, dl.have.tobytes()))
        return await self._drive(pkg, dl, on_progress)

    async def _drive(
        self, pkg: Package, dl: Downloader[bytes], on_progress: ProgressFn | None
    ) -> DownloadResult:
        pid = pkg.package_id
        last_persist = last_progress = trio.current_time()
        last_bytes = dl.bytes_done
        verify_started = False
        try:
            while True:
                now = trio.current_time()
                if dl.state in _ACTIVE:
                    await self._run_actions_async(pkg, dl.on_timer(now))
                    # A critical download goes first: others ask for nothing new meanwhile.
                    if pkg.critical or not (self.critical_active - {pid}):
                        await self._run_actions_async(pkg, dl.poll(now))
                if dl.state is DownloadState.VERIFYING and not verify_started:
                    verify_started = True
                    await self._persist(pkg, dl)
                    ok = await self.store.finalize(pid, pkg.size)
                    await self._run_actions_async(pkg, dl.on_package_verified(ok))
                if dl.state is DownloadState.COMPLETE:
                    pkg.complete = True
                    for peer in list(self.node.peers.values()):
                        peer.post(Complete(pid))
                    self._flush_have(pkg)
                    return DownloadResult(
                        True, sources=self.sources(dl), reused_bytes=pkg.reused_bytes
                    )
                if dl.state is DownloadState.FAILED:
                    await self._persist(pkg, dl)
                    return DownloadResult(
                        False, dl.failure_reason or "failed", sources=self.sources(dl)
                    )
                self._flush_have(pkg)
                if now - last_persist >= self.options.persist_interval:
                    last_persist = now
                    await self._persist(pkg, dl)
                if (
                    on_progress is not None
                    and now - last_progress >= self.options.progress_interval
                ):
                    rate = (dl.bytes_done - last_bytes) / max(now - last_progress, 1e-6)
                    last_bytes, last_progress = dl.bytes_done, now
                    on_progress(dl.progress, dl.bytes_done, pkg.size, rate)
                deadline = dl.next_deadline()
                wait = min(HAVE_FLUSH if pkg.pending_have else 0.2, self.options.persist_interval)
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - now))
                pkg.wake = trio.Event()
                with trio.move_on_after(wait):
                    await pkg.wake.wait()
        finally:
            if dl.state in _ACTIVE:
                # Left by an exception (a disk or store error) or a cancel: stop asking
                # peers for chunks nobody will write (a retry starts a new downloader).
                self._run_actions(pkg, dl.fail("stopped"))
            with trio.CancelScope(shield=True):
                if not pkg.complete and dl.state is not DownloadState.COMPLETE:
                    await self._persist(pkg, dl)

    def sources(self, dl: Downloader[bytes]) -> dict[str, int]:
        """host:port -> verified chunks received from it, for ``dl``."""
        out: dict[str, int] = {}
        for nid, count in dl.sources().items():
            peer = self.node.peers.get(nid)
            label = peer.label if peer is not None else self.labels.get(nid, nid.hex()[:16])
            out[label] = out.get(label, 0) + count
        return out

    async def _persist(self, pkg: Package, dl: Downloader[bytes]) -> None:
        snapshot = bitarray(dl.have)  # copy first: the bitmap never claims later writes
        await self.store.persist(pkg.package_id, snapshot)

    def _flush_have(self, pkg: Package) -> None:
        for msg in pkg.take_have():
            for peer in list(self.node.peers.values()):
                peer.post(msg)

    def _refresh_sources(self, pkg: Package) -> None:
        """A stalled download re-examines its sources (the core's RefreshSources)."""
        dl = pkg.downloader
        if dl is None:
            return
        now = trio.current_time()
        # Claims the downloader dropped (a REJECT) come back from what peers advertised ...
        for nid, bits in pkg.bitfields.items():
            if nid in self.node.peers:
                self._run_actions(pkg, dl.on_peer_bitfield(nid, bits, now))
        # ... and every peer is asked for its bitfield again: our own, unchanged since we
        # last sent it, is the question (answered with the peer's current one).
        msg = Bitfield(pkg.package_id, pkg.nchunks, dl.have.tobytes())
        peers = list(self.node.peers.values())
        for peer in peers:
            self.server.post_bitfield(peer, pkg.package_id, msg)
        log.info(
            "download of %s %s stalled at %.1f%%: asking %d peers again",
            pkg.channel,
            pkg.version,
            100 * dl.progress,
            len(peers),
        )
        pkg.poke()

    # -- carrying out the downloader's actions ----------------------------------------
    def _run_actions(self, pkg: Package, actions: list[DownloadAction[bytes]]) -> None:
        """Carry out actions that need no waiting (WriteChunk is never among these)."""
        for act in actions:
            self._do(pkg, act)

    def _do(self, pkg: Package, act: DownloadAction[bytes]) -> None:
        match act:
            case AskChunk(peer=nid, index=index):
                peer = self.node.peers.get(nid)
                if peer is not None:
                    peer.post(Request(pkg.package_id, index))
            case CancelAsk(peer=nid, index=index):
                peer = self.node.peers.get(nid)
                if peer is not None:
                    peer.post(Cancel(pkg.package_id, index))
            case Ban(peer=nid, reason=reason):
                self.bad_chunks += 1
                ban_peer(self.node, nid, reason)
            case AnnounceHave(indices=indices):
                pkg.pending_have.extend(indices)
            case RefreshSources():
                self._refresh_sources(pkg)
            case VerifyPackage() | Completed() | DownloadFailed():
                pkg.poke()
            case WriteChunk():
                raise AssertionError("WriteChunk must go through _run_actions_async")
            case _:
                assert_never(act)

    async def _run_actions_async(self, pkg: Package, actions: list[DownloadAction[bytes]]) -> None:
        dl = pkg.downloader
        assert dl is not None
        for act in actions:
            match act:
                case WriteChunk(index=index, data=data):
                    try:
                        await self.store.write_chunk(pkg.package_id, index, data)
                    except (OSError, DiskFullError) as exc:
                        log.error("writing chunk %d failed: %s", index, exc)
                        self._run_actions(pkg, dl.on_write_failed(index))
                        kind = "disk_full" if isinstance(exc, DiskFullError) else "disk_error"
                        await self._run_actions_async(pkg, dl.fail(f"{kind}: {exc}"))
                        return
                    await self._run_actions_async(pkg, dl.on_chunk_written(index))
                case _:
                    self._do(pkg, act)
