"""The serving side of the swarm: advertising what we hold and answering chunk requests.

What it does
    :class:`Server` tells every peer what we hold of each package (BITFIELD, COMPLETE,
    HAVE), answers a stalled peer that asks for our bitfield again (at most once per
    ``bitfield_refresh_interval``), answers GETTABLE, and serves REQUESTs: each peer has a
    bounded upload queue (CANCEL drops a request still waiting), and one task per peer
    sends them one at a time, within the shared upload slots and the upload rate limit
    (none for a critical package). For a complete package served with super-seeding it
    carries out the :class:`~p2pupdate.core.seeding.SuperSeeder`'s decisions: which
    chunks to reveal to whom, which requests to refuse.

What it does not do
    Download (:mod:`.fetch`) or decide anything about super-seeding itself (the core does).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import trio
from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.chunks import chunk_length, page_of_table
from p2pupdate.core.messages import (
    TABLE_PAGE_LIST,
    Bitfield,
    Cancel,
    Chunk,
    Complete,
    GetTable,
    Have,
    Reject,
    Request,
    Table,
)
from p2pupdate.core.ratelimit import TokenBucket
from p2pupdate.core.seeding import SuperSeeder
from p2pupdate.shell.transfer.packages import (
    Package,
    SwarmOptions,
    can_serve,
    package_for,
    serving_bits,
    set_table,
)

if TYPE_CHECKING:
    from p2pupdate.core.announcement import Announcement
    from p2pupdate.core.pending import PendingBitfields
    from p2pupdate.shell.net.node import Node, PeerConn
    from p2pupdate.shell.transfer.store import ChunkStore

__all__ = ["Server"]


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


class Server:
    """What a node serves of its packages, to every connected peer."""

    def __init__(
        self,
        node: Node,
        store: ChunkStore,
        options: SwarmOptions,
        packages: dict[bytes, Package],
        pending: PendingBitfields[bytes, bytes],
        rng: random.Random,
    ) -> None:
        self.node = node
        self.store = store
        self.options = options
        self.packages = packages
        self.pending = pending
        self.rng = rng
        self.limits = node.options.limits
        self.uploads: dict[bytes, _Uploads] = {}
        self._slots = trio.Semaphore(options.upload_slots)
        # Burst of two chunks: pacing per chunk, no bursts and gaps (docs/performance.md).
        now = trio.current_time()
        self.up_bucket = TokenBucket(float(options.max_upload_speed), 128 * 1024, now)
        self.bytes_uploaded = 0
        self.bytes_uploaded_by_package: dict[bytes, int] = {}
        self.last_served: dict[bytes, float] = {}
        # peer -> package -> when we last sent it our BITFIELD (a refresh is answered at
        # most once per bitfield_refresh_interval); dropped with the peer.
        self._bitfield_sent: dict[bytes, dict[bytes, float]] = {}

    # -- what we hold -----------------------------------------------------------------
    async def add_complete(self, ann: Announcement, path: Any = None) -> None:
        """Serve a complete package (publisher: from ``path``; else already in the store)."""
        pkg = package_for(self.packages, self.pending, ann)
        if path is not None:
            await self.store.add_complete_file(ann.body.package_id, path)
        table = self.store.load_table(ann.body.package_id)
        if table is not None:
            set_table(pkg, [table[i : i + 32] for i in range(0, len(table), 32)])
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
            self.advertise(peer, pkg)
        self.reveal_all(pkg)

    # -- peers ------------------------------------------------------------------------
    def peer_up(self, peer: PeerConn) -> None:
        """A peer connected: give it an upload queue and tell it what we hold."""
        self.uploads[peer.node_id] = _Uploads(self.limits.max_upload_queue)
        for pkg in self.packages.values():
            self.advertise(peer, pkg)

    def peer_down(self, peer: PeerConn) -> None:
        """A peer left: drop its upload queue and what we sent it."""
        self._bitfield_sent.pop(peer.node_id, None)
        uploads = self.uploads.pop(peer.node_id, None)
        if uploads is not None:
            uploads.send.close()

    def peer_left_package(self, pkg: Package, nid: bytes) -> None:
        """A peer left: the super-seeder forgets it and reveals to the others."""
        if pkg.seeder is not None:
            pkg.seeder.on_peer_gone(nid)
            self.reveal_all(pkg)

    def advertise(self, peer: PeerConn, pkg: Package) -> None:
        """Tell ``peer`` what we hold of ``pkg`` (nothing before we have its table)."""
        if pkg.hashes is None and pkg.size > 0:
            return
        if pkg.seeder is not None:
            # Super-seeding: show nothing at first; chunks are revealed one window at a
            # time once the peer's own BITFIELD says what it lacks.
            bits = zeros(pkg.nchunks)
        else:
            have = serving_bits(pkg)
            if have is None:
                return
            bits = have
        self.post_bitfield(
            peer, pkg.package_id, Bitfield(pkg.package_id, pkg.nchunks, bits.tobytes())
        )
        if pkg.complete:
            peer.post(Complete(pkg.package_id))

    def post_bitfield(self, peer: PeerConn, package_id: bytes, msg: Bitfield) -> None:
        """Send ``msg`` to ``peer`` and remember when (see :meth:`peer_bits`)."""
        peer.post(msg)
        if peer.node_id in self.uploads:  # a connected peer (not one that just left)
            sent = self._bitfield_sent.setdefault(peer.node_id, {})
            sent[package_id] = trio.current_time()

    def peer_bits(self, peer: PeerConn, pkg: Package, bits: bitarray, refresh: bool) -> None:
        """``peer`` sent its BITFIELD of ``pkg``; ``refresh``: the same as before."""
        if refresh:
            self._answer_refresh(peer, pkg, bits)
        if pkg.seeder is not None:
            if peer.node_id in pkg.seeder.peers():
                pkg.seeder.on_peer_have(peer.node_id, bits.search(1))
            else:
                pkg.seeder.on_peer_joined(peer.node_id, bits)
            self.reveal(pkg, peer)

    def peer_have(self, peer: PeerConn, pkg: Package, indices: tuple[int, ...]) -> None:
        """``peer`` sent HAVE for ``pkg``: the super-seeder learns it."""
        if pkg.seeder is not None:
            pkg.seeder.on_peer_have(peer.node_id, indices)
            self.reveal(pkg, peer)

    def _answer_refresh(self, peer: PeerConn, pkg: Package, bits: bitarray) -> None:
        """``peer`` sent the very BITFIELD it sent before: it asks for ours again (a stalled
        download re-examining its sources). Answered at most once per interval per peer
        and package, so two nodes asking each other cannot ping-pong."""
        last = self._bitfield_sent.get(peer.node_id, {}).get(pkg.package_id)
        now = trio.current_time()
        if last is not None and now - last < DEFAULT_LIMITS.bitfield_refresh_interval:
            return
        if serving_bits(pkg) is None:
            return
        if pkg.seeder is not None:
            # Start this peer over: what we showed it before is shown again from scratch
            # (our empty BITFIELD makes its downloader forget it), from its bitfield now.
            pkg.seeder.on_peer_gone(peer.node_id)
            pkg.seeder.on_peer_joined(peer.node_id, bits)
        self.advertise(peer, pkg)
        if pkg.seeder is not None:
            self.reveal(pkg, peer)

    def reveal_all(self, pkg: Package) -> None:
        """Super-seeding: reveal to every peer what the seeder now allows."""
        if pkg.seeder is None:
            return
        for peer in list(self.node.peers.values()):
            self.reveal(pkg, peer)

    def reveal(self, pkg: Package, peer: PeerConn) -> None:
        """Super-seeding: reveal to ``peer`` what the seeder now allows it (HAVE)."""
        assert pkg.seeder is not None
        idx = pkg.seeder.reveal(peer.node_id)
        if idx:
            peer.post(Have(pkg.package_id, tuple(idx)))

    # -- requests ---------------------------------------------------------------------
    def on_request(self, peer: PeerConn, msg: Request) -> None:
        """Queue ``peer``'s REQUEST, or REJECT it (not ours to serve, queue full)."""
        pkg = self.packages.get(msg.package_id)
        uploads = self.uploads.get(peer.node_id)
        if pkg is None or uploads is None or not can_serve(pkg, msg.index):
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

    def on_cancel(self, peer: PeerConn, msg: Cancel) -> None:
        """``peer`` no longer wants a chunk: drop it if it is still waiting."""
        uploads = self.uploads.get(peer.node_id)
        if uploads is not None:
            uploads.cancel((msg.package_id, msg.index))

    def on_get_table(self, peer: PeerConn, msg: GetTable) -> None:
        """Send the page-hash list or one page of the chunk table (empty: we lack it)."""
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

    async def run_peer(self, peer: PeerConn) -> None:
        """Serve this peer's chunk requests, one at a time, paced and slotted."""
        uploads = self.uploads.get(peer.node_id)
        if uploads is None:
            return
        async for package_id, index in uploads.recv:
            if not uploads.take((package_id, index)):
                continue
            pkg = self.packages.get(package_id)
            if pkg is None or not can_serve(pkg, index):
                peer.post(Reject(package_id, index))
                continue
            if pkg.seeder is not None and not pkg.seeder.should_serve(peer.node_id, index):
                peer.post(Reject(package_id, index))
                self.reveal(pkg, peer)
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
                self.reveal(pkg, peer)
