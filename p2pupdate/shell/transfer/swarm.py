"""The swarm: fetching chunk tables and chunks from many peers, and serving them.

This is the trio shell around the pure :class:`~p2pupdate.core.download.Downloader`
(which chunk from whom), :class:`~p2pupdate.core.seeding.SuperSeeder` (which
chunks the only full copy reveals to whom) and
:class:`~p2pupdate.core.ratelimit.TokenBucket` (pacing). It owns no protocol
decisions: it feeds peer messages to those cores and carries out what they
return, reading and writing through a :class:`~p2pupdate.shell.transfer.store.ChunkStore`.

Order of a chunk's life: CHUNK arrives -> the core verifies its BLAKE3
against the signed table -> written at its offset -> servable and announced
(HAVE, batched) -> every ``persist_interval`` the ``have`` bitmap is copied,
the data fsynced, then the copy persisted. The bitmap may lag, never lead.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from bitarray import bitarray
from bitarray.util import ones, zeros

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.chunks import (
    chunk_count,
    chunk_length,
    page_hashes,
    page_of_table,
    table_root,
)
from p2pupdate.core.download import (
    AnnounceHave,
    Ban,
    Cancel,
    Completed,
    Downloader,
    DownloadFailed,
    DownloadState,
    RefreshSources,
    Request,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.messages import (
    TABLE_PAGE_LIST,
    Bitfield,
    Chunk,
    Complete,
    GetTable,
    Have,
    Message,
    Reject,
    Table,
)
from p2pupdate.core.messages import Cancel as CancelMsg
from p2pupdate.core.messages import Request as RequestMsg
from p2pupdate.core.pending import PendingBitfields
from p2pupdate.core.ratelimit import TokenBucket
from p2pupdate.core.seeding import SuperSeeder
from p2pupdate.core.tablefetch import TableFetch
from p2pupdate.errors import DiskFullError, RemoteProtocolError
from p2pupdate.shell.net.node import Node, PeerConn
from p2pupdate.shell.transfer.store import ChunkStore

__all__ = ["DownloadResult", "Swarm", "SwarmOptions"]

log = logging.getLogger("p2pupdate.swarm")

# HAVE lists are flushed this often (about one loopback round trip or less).
HAVE_FLUSH = 0.01


@dataclass
class SwarmOptions:
    upload_slots: int = 16  # chunks being sent at once, all peers together
    pipeline_depth: int = 16
    request_timeout: float = 10.0
    table_timeout: float = 10.0
    persist_interval: float = 0.5
    progress_interval: float = 0.5
    max_upload_speed: int = 0  # bytes/s, 0 = unlimited
    max_download_speed: int = 0
    super_seed: bool = False  # reveal chunks of complete packages gradually (publisher)
    # no new chunk for this long: the download re-examines its sources (core decides)
    stall_timeout: float = DEFAULT_LIMITS.download_stall_timeout


@dataclass
class DownloadResult:
    ok: bool
    reason: str = ""
    sources: dict[str, int] = field(default_factory=dict)
    reused_bytes: int = 0  # copied from local files, not fetched (shell.transfer.reuse)


@dataclass
class _Package:
    package_id: bytes
    size: int
    root: bytes
    critical: bool = False
    channel: str = ""
    version: str = ""
    hashes: list[bytes] | None = None
    page_hashes: list[bytes] | None = None
    complete: bool = False
    downloader: Downloader[bytes] | None = None
    seeder: SuperSeeder[bytes] | None = None
    # who advertised what (for tables, and the downloader once it exists)
    bitfields: dict[bytes, bitarray] = field(default_factory=dict)
    completes: set[bytes] = field(default_factory=set)
    wake: trio.Event = field(default_factory=trio.Event)
    table_wake: trio.Event = field(default_factory=trio.Event)
    pending_have: list[int] = field(default_factory=list)
    cancel_scope: trio.CancelScope | None = None
    bad_table_peers: set[bytes] = field(default_factory=set)
    reused_bytes: int = 0

    @property
    def nchunks(self) -> int:
        return chunk_count(self.size)

    def poke(self) -> None:
        self.wake.set()


class _Uploads:
    """Per-peer queue of chunk requests to serve.

    ``queued`` mirrors what is in the channel, so a CANCEL is recorded only for a
    request that is really waiting: ``cancelled`` is a subset of ``queued`` and
    both are bounded by the queue size (Limits.max_upload_queue).
    """

    def __init__(self, size: int) -> None:
        self.send, self.recv = trio.open_memory_channel[tuple[bytes, int]](size)
        self.queued: set[tuple[bytes, int]] = set()
        self.cancelled: set[tuple[bytes, int]] = set()

    def cancel(self, item: tuple[bytes, int]) -> None:
        if item in self.queued:
            self.cancelled.add(item)

    def take(self, item: tuple[bytes, int]) -> bool:
        """The request ``item`` left the queue; False if it was cancelled meanwhile."""
        self.queued.discard(item)
        if item in self.cancelled:
            self.cancelled.discard(item)
            return False
        return True


class Swarm:
    """Package transfer for one node (implements the node's PackageService)."""

    def __init__(
        self,
        node: Node,
        store: ChunkStore,
        options: SwarmOptions | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.options = options or SwarmOptions()
        self.rng = rng or random.Random()
        self.packages: dict[bytes, _Package] = {}
        self.limits = node.options.limits
        self.pending: PendingBitfields[bytes, bytes] = PendingBitfields(self.limits)
        self._uploads: dict[bytes, _Uploads] = {}
        self._slots = trio.Semaphore(self.options.upload_slots)
        now = trio.current_time()
        # Burst of two chunks: pacing per chunk, no bursts and gaps (docs/performance.md).
        self.up_bucket = TokenBucket(float(self.options.max_upload_speed), 128 * 1024, now)
        self.down_bucket = TokenBucket(float(self.options.max_download_speed), 128 * 1024, now)
        self.bytes_uploaded = 0
        self.bytes_uploaded_by_package: dict[bytes, int] = {}
        self.bad_chunks = 0
        # Verified chunks received and their bytes (metrics).
        self.chunks_verified = 0
        self.bytes_downloaded = 0
        self.last_served: dict[bytes, float] = {}
        self.critical_active: set[bytes] = set()  # critical downloads in progress
        self.on_complete_from_peer: Callable[[bytes, PeerConn], None] | None = None
        # Told when a connected peer advertises chunks of a package (the agent wakes a
        # download retry that waits for a new source).
        self.on_source: Callable[[bytes], None] | None = None
        self._table_fetches: dict[bytes, TableFetch[bytes]] = {}
        self._labels: dict[bytes, str] = {}
        # peer -> package -> when we last sent it our BITFIELD (a refresh is answered at
        # most once per bitfield_refresh_interval); dropped with the peer.
        self._bitfield_sent: dict[bytes, dict[bytes, float]] = {}
        # Local chunk reuse (shell.transfer.reuse.LocalChunks.fill, set by the agent):
        # (channel, package id, table, have, size) -> bytes copied, marked in ``have``.
        self.local_chunks: (
            Callable[[str, bytes, Sequence[bytes], bitarray, int], Awaitable[int]] | None
        ) = None
        node.package_service = self

    # -- what we hold ---------------------------------------------------------------
    def _pkg_for(self, ann: Announcement) -> _Package:
        b = ann.body
        pkg = self.packages.get(b.package_id)
        if pkg is None:
            pkg = _Package(b.package_id, b.size, b.table_root, b.critical, b.channel, b.version)
            # Held before the announcement said how long the package is: keep the
            # ones that fit (as a BITFIELD arriving now would be checked).
            pkg.bitfields.update(
                (nid, bits)
                for nid, bits in self.pending.take(b.package_id).items()
                if len(bits) == pkg.nchunks
            )
            self.packages[b.package_id] = pkg
        return pkg

    def _serving_bits(self, pkg: _Package) -> bitarray | None:
        if pkg.complete:
            return ones(pkg.nchunks)
        if pkg.downloader is not None:
            return bitarray(pkg.downloader.have)
        return None

    def can_serve(self, pkg: _Package, index: int) -> bool:
        if not 0 <= index < pkg.nchunks:
            return False
        if pkg.complete:
            return True
        return pkg.downloader is not None and pkg.downloader.has_chunk(index)

    async def add_complete(self, ann: Announcement, path: Any = None) -> None:
        """Serve a complete package (publisher: from ``path``; else already in the store)."""
        pkg = self._pkg_for(ann)
        if path is not None:
            await self.store.add_complete_file(ann.body.package_id, path)
        table = self.store.load_table(ann.body.package_id)
        if table is not None:
            self._set_table(pkg, [table[i : i + 32] for i in range(0, len(table), 32)])
        pkg.complete = True
        if self.options.super_seed and pkg.seeder is None:
            seeder: SuperSeeder[bytes] = SuperSeeder(
                pkg.nchunks, rng=self.rng, window=self.options.pipeline_depth
            )
            # Peers that told us what they hold before we had the package (a download
            # that outlived its publisher says so as soon as we connect): the seeder
            # starts from the swarm's view, so it hands out what the swarm lacks first.
            for nid, bits in pkg.bitfields.items():
                if nid in self.node.peers:
                    seeder.on_peer_joined(nid, bits)
            pkg.seeder = seeder
        for peer in list(self.node.peers.values()):
            self._advertise(peer, pkg)
        self._reveal_all(pkg)

    def set_table(self, ann: Announcement, hashes: list[bytes]) -> None:
        """Install a table computed locally (publisher) and persist it."""
        pkg = self._pkg_for(ann)
        self._set_table(pkg, hashes)
        self.store.save_table(pkg.package_id, b"".join(hashes))

    def _set_table(self, pkg: _Package, hashes: list[bytes]) -> None:
        pkg.hashes = hashes
        pkg.page_hashes = page_hashes(hashes)

    # -- peers ----------------------------------------------------------------------
    def on_peer_up(self, peer: PeerConn) -> None:
        self._uploads[peer.node_id] = _Uploads(self.limits.max_upload_queue)
        for pkg in self.packages.values():
            self._advertise(peer, pkg)

    def on_peer_down(self, peer: PeerConn) -> None:
        self._bitfield_sent.pop(peer.node_id, None)
        uploads = self._uploads.pop(peer.node_id, None)
        if uploads is not None:
            uploads.send.close()
        now = trio.current_time()
        nid = peer.node_id
        self.pending.drop_peer(nid)
        # Its label outlives it only if a download counts it as a source (for the
        # download_complete ``sources``); the oldest go first past the limit.
        if any(
            nid in pkg.downloader.sources()
            for pkg in self.packages.values()
            if pkg.downloader is not None
        ):
            self._labels[nid] = peer.label
            while len(self._labels) > self.limits.max_peer_labels:
                del self._labels[next(iter(self._labels))]
        for pkg in self.packages.values():
            pkg.bitfields.pop(nid, None)
            pkg.completes.discard(nid)
            pkg.bad_table_peers.discard(nid)
            if pkg.downloader is not None and pkg.downloader.state in (
                DownloadState.PENDING,
                DownloadState.DOWNLOADING,
            ):
                pkg.downloader.on_peer_gone(peer.node_id, now)
                pkg.poke()
            if pkg.seeder is not None:
                pkg.seeder.on_peer_gone(peer.node_id)
                self._reveal_all(pkg)

    def _advertise(self, peer: PeerConn, pkg: _Package) -> None:
        if pkg.hashes is None and pkg.size > 0:
            return
        if pkg.seeder is not None:
            # Super-seeding: show nothing at first; chunks are revealed one window at a
            # time once the peer's own BITFIELD says what it lacks.
            bits = zeros(pkg.nchunks)
        else:
            have = self._serving_bits(pkg)
            if have is None:
                return
            bits = have
        self._post_bitfield(
            peer, pkg.package_id, Bitfield(pkg.package_id, pkg.nchunks, bits.tobytes())
        )
        if pkg.complete:
            peer.post(Complete(pkg.package_id))

    def _post_bitfield(self, peer: PeerConn, package_id: bytes, msg: Bitfield) -> None:
        peer.post(msg)
        if peer.node_id in self._uploads:  # a connected peer (not one that just left)
            sent = self._bitfield_sent.setdefault(peer.node_id, {})
            sent[package_id] = trio.current_time()

    def _answer_refresh(self, peer: PeerConn, pkg: _Package, bits: bitarray) -> None:
        """``peer`` sent the very BITFIELD it sent before: it asks for ours again (a stalled
        download re-examining its sources). Answered at most once per interval per peer
        and package, so two nodes asking each other cannot ping-pong."""
        last = self._bitfield_sent.get(peer.node_id, {}).get(pkg.package_id)
        now = trio.current_time()
        if last is not None and now - last < DEFAULT_LIMITS.bitfield_refresh_interval:
            return
        if self._serving_bits(pkg) is None:
            return
        if pkg.seeder is not None:
            # Start this peer over: what we showed it before is shown again from scratch
            # (our empty BITFIELD makes its downloader forget it), from its bitfield now.
            pkg.seeder.on_peer_gone(peer.node_id)
            pkg.seeder.on_peer_joined(peer.node_id, bits)
        self._advertise(peer, pkg)
        if pkg.seeder is not None:
            self._reveal(pkg, peer)

    def _refresh_sources(self, pkg: _Package) -> None:
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
            self._post_bitfield(peer, pkg.package_id, msg)
        log.info(
            "download of %s %s stalled at %.1f%%: asking %d peers again",
            pkg.channel,
            pkg.version,
            100 * dl.progress,
            len(peers),
        )
        pkg.poke()

    def _reveal_all(self, pkg: _Package) -> None:
        if pkg.seeder is None:
            return
        for peer in list(self.node.peers.values()):
            self._reveal(pkg, peer)

    def _reveal(self, pkg: _Package, peer: PeerConn) -> None:
        assert pkg.seeder is not None
        idx = pkg.seeder.reveal(peer.node_id)
        if idx:
            peer.post(Have(pkg.package_id, tuple(idx)))

    async def run_peer(self, peer: PeerConn) -> None:
        """Serve this peer's chunk requests, one at a time, paced and slotted."""
        uploads = self._uploads.get(peer.node_id)
        if uploads is None:
            return
        async for package_id, index in uploads.recv:
            if not uploads.take((package_id, index)):
                continue
            pkg = self.packages.get(package_id)
            if pkg is None or not self.can_serve(pkg, index):
                peer.post(Reject(package_id, index))
                continue
            if pkg.seeder is not None and not pkg.seeder.should_serve(peer.node_id, index):
                peer.post(Reject(package_id, index))
                self._reveal(pkg, peer)
                continue
            length = chunk_length(pkg.size, index)
            async with self._slots:
                if not pkg.critical:
                    delay = self.up_bucket.consume(length, trio.current_time())
                    if delay > 0:
                        await trio.sleep(delay)
                data = await self.store.read_chunk(package_id, index, length)
                await peer.send(Chunk(package_id, index, data))
            self.bytes_uploaded += length
            self.last_served[package_id] = trio.current_time()
            self.bytes_uploaded_by_package[package_id] = (
                self.bytes_uploaded_by_package.get(package_id, 0) + length
            )
            if pkg.seeder is not None:
                pkg.seeder.on_sent(peer.node_id, index)
                self._reveal(pkg, peer)

    # -- messages ---------------------------------------------------------------------
    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        if isinstance(msg, RequestMsg):
            self._on_request(peer, msg)
        elif isinstance(msg, CancelMsg):
            uploads = self._uploads.get(peer.node_id)
            if uploads is not None:
                uploads.cancel((msg.package_id, msg.index))
        elif isinstance(msg, Chunk):
            await self._on_chunk(peer, msg)
        elif isinstance(msg, Have):
            self._on_have(peer, msg)
        elif isinstance(msg, Bitfield):
            self._on_bitfield(peer, msg)
        elif isinstance(msg, Reject):
            pkg = self.packages.get(msg.package_id)
            if pkg is not None and pkg.downloader is not None:
                self._run_actions(
                    pkg, pkg.downloader.on_reject(peer.node_id, msg.index, trio.current_time())
                )
                pkg.poke()
        elif isinstance(msg, GetTable):
            self._on_get_table(peer, msg)
        elif isinstance(msg, Table):
            self._on_table(peer, msg)
        elif isinstance(msg, Complete):
            pkg = self.packages.get(msg.package_id)
            if pkg is not None:
                pkg.completes.add(peer.node_id)
                if self.on_complete_from_peer is not None:
                    self.on_complete_from_peer(msg.package_id, peer)
        else:
            return False
        return True

    def _on_request(self, peer: PeerConn, msg: RequestMsg) -> None:
        pkg = self.packages.get(msg.package_id)
        uploads = self._uploads.get(peer.node_id)
        if pkg is None or uploads is None or not self.can_serve(pkg, msg.index):
            peer.post(Reject(msg.package_id, msg.index))
            return
        item = (msg.package_id, msg.index)
        if item in uploads.queued:
            # Already waiting: one CHUNK answers both (a re-request after a CANCEL
            # revives it).
            uploads.cancelled.discard(item)
            return
        try:
            uploads.send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            peer.post(Reject(msg.package_id, msg.index))
            return
        uploads.queued.add(item)

    def _on_bitfield(self, peer: PeerConn, msg: Bitfield) -> None:
        bits = bitarray(endian="big")
        bits.frombytes(msg.bits)
        del bits[msg.nchunks :]
        pkg = self.packages.get(msg.package_id)
        if pkg is None:
            self.pending.keep(peer.node_id, msg.package_id, bits)
            return
        if msg.nchunks != pkg.nchunks:
            raise RemoteProtocolError("bitfield length does not match the package")
        refresh = pkg.bitfields.get(peer.node_id) == bits
        pkg.bitfields[peer.node_id] = bits
        pkg.table_wake.set()
        if self.on_source is not None and bits.any():
            self.on_source(pkg.package_id)
        if pkg.downloader is not None and pkg.downloader.state in (
            DownloadState.PENDING,
            DownloadState.DOWNLOADING,
        ):
            self._run_actions(
                pkg, pkg.downloader.on_peer_bitfield(peer.node_id, bits, trio.current_time())
            )
            pkg.poke()
        if refresh:
            self._answer_refresh(peer, pkg, bits)
        if pkg.seeder is not None:
            if peer.node_id in pkg.seeder.peers():
                pkg.seeder.on_peer_have(peer.node_id, bits.search(1))
            else:
                pkg.seeder.on_peer_joined(peer.node_id, bits)
            self._reveal(pkg, peer)

    def _on_have(self, peer: PeerConn, msg: Have) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None:
            self.pending.have(peer.node_id, msg.package_id, msg.indices)
            return
        if any(i >= pkg.nchunks for i in msg.indices):
            raise RemoteProtocolError("HAVE index past the end of the package")
        bits = pkg.bitfields.get(peer.node_id)
        if bits is None:  # (setdefault would allocate a whole bitmap on every HAVE)
            bits = pkg.bitfields[peer.node_id] = zeros(pkg.nchunks)
        for i in msg.indices:
            bits[i] = 1
        pkg.table_wake.set()
        if self.on_source is not None and msg.indices:
            self.on_source(pkg.package_id)
        if pkg.downloader is not None and pkg.downloader.state in (
            DownloadState.PENDING,
            DownloadState.DOWNLOADING,
        ):
            self._run_actions(
                pkg, pkg.downloader.on_peer_have(peer.node_id, msg.indices, trio.current_time())
            )
            pkg.poke()
        if pkg.seeder is not None:
            pkg.seeder.on_peer_have(peer.node_id, msg.indices)
            self._reveal(pkg, peer)

    async def _on_chunk(self, peer: PeerConn, msg: Chunk) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None or pkg.downloader is None:
            return
        dl = pkg.downloader
        if dl.state not in (DownloadState.PENDING, DownloadState.DOWNLOADING):
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

    # -- tables -----------------------------------------------------------------------
    def _on_get_table(self, peer: PeerConn, msg: GetTable) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None or pkg.hashes is None or pkg.page_hashes is None:
            peer.post(Table(msg.package_id, msg.page, b""))
            return
        if msg.page == TABLE_PAGE_LIST:
            peer.post(Table(msg.package_id, msg.page, b"".join(pkg.page_hashes)))
        elif msg.page < len(pkg.page_hashes):
            peer.post(Table(msg.package_id, msg.page, page_of_table(pkg.hashes, msg.page)))
        else:
            peer.post(Table(msg.package_id, msg.page, b""))

    def _on_table(self, peer: PeerConn, msg: Table) -> None:
        pkg = self.packages.get(msg.package_id)
        if pkg is None or pkg.hashes is not None:
            return
        fetch = self._table_fetches.get(msg.package_id)
        if fetch is None:
            return
        fetch.deliver(peer.node_id, msg.page, msg.hashes)
        pkg.table_wake.set()  # next page, or another peer at once (not after 0.25 s)

    async def _fetch_table(self, pkg: _Package) -> list[bytes]:
        """Get the page-hash list and every page, each checked on its own."""
        fetch: TableFetch[bytes] = TableFetch(pkg.nchunks, pkg.root)
        self._table_fetches[pkg.package_id] = fetch
        try:
            while True:
                now = trio.current_time()
                fetch.expire(now, self.options.table_timeout)
                for page in fetch.wanted():
                    candidates = [
                        nid
                        for nid in pkg.bitfields
                        if nid in self.node.peers
                        and nid not in pkg.bad_table_peers
                        and nid not in fetch.asked.get(page, set())
                    ]
                    if not candidates:
                        # Nobody advertised this package yet: ask every peer we have.
                        candidates = [
                            nid
                            for nid in self.node.peers
                            if nid not in pkg.bad_table_peers
                            and nid not in fetch.asked.get(page, set())
                        ]
                    if not candidates:
                        fetch.asked.pop(page, None)  # start over with everyone
                        continue
                    nid = self.rng.choice(candidates)
                    fetch.ask(nid, page, now)
                    self.node.peers[nid].post(GetTable(pkg.package_id, page))
                for nid, reason in fetch.take_bad():
                    pkg.bad_table_peers.add(nid)
                    self._ban(nid, reason)
                if fetch.done():
                    assert fetch.hashes is not None
                    return fetch.hashes
                pkg.table_wake = trio.Event()
                with trio.move_on_after(0.25):
                    await pkg.table_wake.wait()
        finally:
            self._table_fetches.pop(pkg.package_id, None)

    # -- downloads ----------------------------------------------------------------------
    async def download(
        self,
        ann: Announcement,
        *,
        on_progress: Callable[[float, int, int, float], None] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> DownloadResult:
        """Fetch the package of ``ann`` into the complete cache (resuming what is there)."""
        pkg = self._pkg_for(ann)
        if not pkg.critical:
            return await self._download(ann, on_progress, on_started)
        # A critical download goes first: while it runs (table fetch included), other
        # downloads ask for nothing new.
        self.critical_active.add(pkg.package_id)
        try:
            return await self._download(ann, on_progress, on_started)
        finally:
            self.critical_active.discard(pkg.package_id)

    async def _download(
        self,
        ann: Announcement,
        on_progress: Callable[[float, int, int, float], None] | None,
        on_started: Callable[[], None] | None,
    ) -> DownloadResult:
        pkg = self._pkg_for(ann)
        pid = pkg.package_id
        if pkg.complete or self.store.has_complete(pid):
            if not pkg.complete:
                await self.add_complete(ann)
            return DownloadResult(True)
        # A partial file created just now holds nothing worth scanning (hashing 1 GiB of
        # zeros would delay the start by seconds); one left by a stop or crash may.
        resumed = any(p == pid for p, _ in self.store.list_partial())
        await self.store.open_partial(pid, pkg.size)  # DiskFullError propagates
        if pkg.hashes is None:
            stored = self.store.load_table(pid)
            hashes = None
            if stored is not None:
                candidate = [stored[i : i + 32] for i in range(0, len(stored), 32)]
                if self._table_matches(pkg, candidate):
                    hashes = candidate
            if hashes is None:
                if pkg.size == 0:
                    hashes = []
                else:
                    hashes = await self._fetch_table(pkg)
                self.store.save_table(pid, b"".join(hashes))
            self._set_table(pkg, hashes)
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
            self._post_bitfield(peer, pid, Bitfield(pid, pkg.nchunks, dl.have.tobytes()))
        return await self._drive(pkg, dl, on_progress)

    def _table_matches(self, pkg: _Package, hashes: list[bytes]) -> bool:
        return len(hashes) == pkg.nchunks and table_root(hashes) == pkg.root

    async def _drive(
        self,
        pkg: _Package,
        dl: Downloader[bytes],
        on_progress: Callable[[float, int, int, float], None] | None,
    ) -> DownloadResult:
        pid = pkg.package_id
        last_persist = last_progress = trio.current_time()
        last_bytes = dl.bytes_done
        verify_started = False
        try:
            while True:
                now = trio.current_time()
                if dl.state in (DownloadState.PENDING, DownloadState.DOWNLOADING):
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
                        True, sources=self._sources(dl), reused_bytes=pkg.reused_bytes
                    )
                if dl.state is DownloadState.FAILED:
                    await self._persist(pkg, dl)
                    return DownloadResult(
                        False, dl.failure_reason or "failed", sources=self._sources(dl)
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
            if dl.state in (DownloadState.PENDING, DownloadState.DOWNLOADING):
                # Left by an exception (a disk or store error) or a cancel: stop asking
                # peers for chunks nobody will write (a retry starts a new downloader).
                self._run_actions(pkg, dl.fail("stopped"))
            with trio.CancelScope(shield=True):
                if not pkg.complete and dl.state is not DownloadState.COMPLETE:
                    await self._persist(pkg, dl)

    def sources_of(self, package_id: bytes) -> dict[str, int]:
        """host:port -> verified chunks received from it so far, for a download."""
        pkg = self.packages.get(package_id)
        if pkg is None or pkg.downloader is None:
            return {}
        return self._sources(pkg.downloader)

    def _sources(self, dl: Downloader[bytes]) -> dict[str, int]:
        out: dict[str, int] = {}
        for nid, count in dl.sources().items():
            peer = self.node.peers.get(nid)
            label = peer.label if peer is not None else self._labels.get(nid, nid.hex()[:16])
            out[label] = out.get(label, 0) + count
        return out

    async def _persist(self, pkg: _Package, dl: Downloader[bytes]) -> None:
        snapshot = bitarray(dl.have)  # copy first: the bitmap never claims later writes
        await self.store.persist(pkg.package_id, snapshot)

    def _flush_have(self, pkg: _Package) -> None:
        if not pkg.pending_have:
            return
        indices = tuple(pkg.pending_have)
        pkg.pending_have.clear()
        for start in range(0, len(indices), 4096):
            msg = Have(pkg.package_id, indices[start : start + 4096])
            for peer in list(self.node.peers.values()):
                peer.post(msg)

    def _run_actions(self, pkg: _Package, actions: list[Any]) -> None:
        """Carry out actions that need no waiting (WriteChunk is never among these)."""
        for act in actions:
            self._do(pkg, act)

    def _do(self, pkg: _Package, act: Any) -> None:
        if isinstance(act, Request):
            peer = self.node.peers.get(act.peer)
            if peer is not None:
                peer.post(RequestMsg(pkg.package_id, act.index))
        elif isinstance(act, Cancel):
            peer = self.node.peers.get(act.peer)
            if peer is not None:
                peer.post(CancelMsg(pkg.package_id, act.index))
        elif isinstance(act, Ban):
            self.bad_chunks += 1
            self._ban(act.peer, act.reason)
        elif isinstance(act, AnnounceHave):
            pkg.pending_have.extend(act.indices)
        elif isinstance(act, RefreshSources):
            self._refresh_sources(pkg)
        elif isinstance(act, (VerifyPackage, Completed, DownloadFailed)):
            pkg.poke()
        elif isinstance(act, WriteChunk):
            raise AssertionError("WriteChunk must go through _run_actions_async")

    async def _run_actions_async(self, pkg: _Package, actions: list[Any]) -> None:
        dl = pkg.downloader
        assert dl is not None
        for act in actions:
            if isinstance(act, WriteChunk):
                try:
                    await self.store.write_chunk(pkg.package_id, act.index, act.data)
                except (OSError, DiskFullError) as exc:
                    log.error("writing chunk %d failed: %s", act.index, exc)
                    self._run_actions(pkg, dl.on_write_failed(act.index))
                    kind = "disk_full" if isinstance(exc, DiskFullError) else "disk_error"
                    await self._run_actions_async(pkg, dl.fail(f"{kind}: {exc}"))
                    return
                await self._run_actions_async(pkg, dl.on_chunk_written(act.index))
            else:
                self._do(pkg, act)

    def _ban(self, node_id: bytes, reason: str) -> None:
        peer = self.node.peers.get(node_id)
        if peer is not None:
            self.node.ban(peer.addr, node_id, reason)

    async def forget(self, package_id: bytes) -> None:
        """Stop serving a package and delete it from the store (cache eviction)."""
        pkg = self.packages.get(package_id)
        if pkg is not None and pkg.downloader is None:
            del self.packages[package_id]
        elif pkg is not None:
            pkg.complete = False
        self.last_served.pop(package_id, None)
        await self.store.remove(package_id)

    def cancel_download(self, package_id: bytes) -> None:
        pkg = self.packages.get(package_id)
        if pkg is not None and pkg.cancel_scope is not None:
            pkg.cancel_scope.cancel()

    def set_limits(self, max_upload_speed: int, max_download_speed: int) -> None:
        """New upload and download limits (a config reload), effective from the next chunk;
        0 is unlimited. Tokens earned so far are kept."""
        now = trio.current_time()
        self.options = dataclasses.replace(
            self.options,
            max_upload_speed=max_upload_speed,
            max_download_speed=max_download_speed,
        )
        self.up_bucket.set_rate(float(max_upload_speed), 128 * 1024, now)
        self.down_bucket.set_rate(float(max_download_speed), 128 * 1024, now)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pid, pkg in self.packages.items():
            dl = pkg.downloader
            out[pid.hex()] = {
                "channel": pkg.channel,
                "version": pkg.version,
                "size": pkg.size,
                "complete": pkg.complete,
                "progress": 1.0 if pkg.complete else (dl.progress if dl else 0.0),
                "bytes_done": pkg.size if pkg.complete else (dl.bytes_done if dl else 0),
                "state": "complete" if pkg.complete else (dl.state.value if dl else "pending"),
                "uploaded": self.bytes_uploaded_by_package.get(pid, 0),
                "reused_bytes": pkg.reused_bytes,
            }
        return out
