"""The swarm: fetching chunk tables and chunks from many peers, and serving them.

This is the trio shell around the pure :class:`~p2pupdate.core.download.Downloader`
(which chunk from whom), :class:`~p2pupdate.core.seeding.SuperSeeder` (which
chunks the only full copy reveals to whom) and
:class:`~p2pupdate.core.ratelimit.TokenBucket` (pacing). It owns no protocol
decisions: it feeds peer messages to those cores and carries out what they
return, reading and writing through a :class:`~p2pupdate.shell.transfer.store.ChunkStore`.

:class:`Swarm` is the node's package service: it keeps what every peer advertises of
every package (:mod:`.packages`), dispatches each package message with ``match`` to
the side it concerns, and hands the rest to those two sides: serving
(:class:`~p2pupdate.shell.transfer.serve.Server`: adverts, upload queues, REQUEST,
CANCEL, GETTABLE, super-seeding) and fetching
(:class:`~p2pupdate.shell.transfer.fetch.Fetcher`: tables, downloads, CHUNK, REJECT,
carrying out the downloader's actions).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import trio
from bitarray import bitarray
from bitarray.util import zeros

from p2pupdate.core.announcement import Announcement
from p2pupdate.core.messages import (
    Bitfield,
    Cancel,
    Chunk,
    Complete,
    GetTable,
    Have,
    Message,
    Reject,
    Request,
    Table,
)
from p2pupdate.core.pending import PendingBitfields
from p2pupdate.errors import RemoteProtocolError
from p2pupdate.shell.net.node import Node, PeerConn
from p2pupdate.shell.transfer.fetch import DownloadResult, Fetcher, ProgressFn
from p2pupdate.shell.transfer.packages import Package, SwarmOptions, package_for, set_table
from p2pupdate.shell.transfer.serve import Server
from p2pupdate.shell.transfer.store import ChunkStore

__all__ = ["DownloadResult", "Swarm", "SwarmOptions"]


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
        self.packages: dict[bytes, Package] = {}
        self.limits = node.options.limits
        self.pending: PendingBitfields[bytes, bytes] = PendingBitfields(self.limits)
        self.server = Server(node, store, self.options, self.packages, self.pending, self.rng)
        self.fetcher = Fetcher(node, store, self.options, self.packages, self.server, self.rng)
        self.on_complete_from_peer: Callable[[bytes, PeerConn], None] | None = None
        # Told when a connected peer advertises chunks of a package (the agent wakes a
        # download retry that waits for a new source).
        self.on_source: Callable[[bytes], None] | None = None
        node.package_service = self

    # -- counters (metrics, publish progress, the simulation) --------------------------
    @property
    def bytes_uploaded(self) -> int:
        return self.server.bytes_uploaded

    @property
    def last_served(self) -> dict[bytes, float]:
        """package id -> when we last sent a chunk of it (cache eviction keeps those)."""
        return self.server.last_served

    @property
    def bytes_downloaded(self) -> int:
        return self.fetcher.bytes_downloaded

    @property
    def chunks_verified(self) -> int:
        return self.fetcher.chunks_verified

    @property
    def bad_chunks(self) -> int:
        return self.fetcher.bad_chunks

    # -- what we hold -------------------------------------------------------------------
    async def add_complete(self, ann: Announcement, path: Any = None) -> None:
        """Serve a complete package (publisher: from ``path``; else already in the store)."""
        await self.server.add_complete(ann, path)

    def set_table(self, ann: Announcement, hashes: list[bytes]) -> None:
        """Install a table computed locally (publisher) and persist it."""
        pkg = package_for(self.packages, self.pending, ann)
        set_table(pkg, hashes)
        self.store.save_table(pkg.package_id, b"".join(hashes))

    async def forget(self, package_id: bytes) -> None:
        """Stop serving a package and delete it from the store (cache eviction)."""
        pkg = self.packages.get(package_id)
        if pkg is not None and pkg.downloader is None:
            del self.packages[package_id]
        elif pkg is not None:
            pkg.complete = False
        self.server.last_served.pop(package_id, None)
        await self.store.remove(package_id)

    # -- peers --------------------------------------------------------------------------
    def on_peer_up(self, peer: PeerConn) -> None:
        self.server.peer_up(peer)

    def on_peer_down(self, peer: PeerConn) -> None:
        self.server.peer_down(peer)
        now = trio.current_time()
        nid = peer.node_id
        self.pending.drop_peer(nid)
        self.fetcher.peer_down(peer)
        for pkg in self.packages.values():
            pkg.bitfields.pop(nid, None)
            pkg.completes.discard(nid)
            pkg.bad_table_peers.discard(nid)
            self.fetcher.peer_left_package(pkg, nid, now)
            self.server.peer_left_package(pkg, nid)

    async def run_peer(self, peer: PeerConn) -> None:
        """Serve this peer's chunk requests for the life of the connection."""
        await self.server.run_peer(peer)

    # -- messages -----------------------------------------------------------------------
    async def handle(self, peer: PeerConn, msg: Message) -> bool:
        """Handle a package message; False if it is not one."""
        match msg:
            case Request():
                self.server.on_request(peer, msg)
            case Cancel():
                self.server.on_cancel(peer, msg)
            case Chunk():
                await self.fetcher.on_chunk(peer, msg)
            case Have():
                self._on_have(peer, msg)
            case Bitfield():
                self._on_bitfield(peer, msg)
            case Reject():
                self.fetcher.on_reject(peer, msg.package_id, msg.index)
            case GetTable():
                self.server.on_get_table(peer, msg)
            case Table():
                self.fetcher.tables.on_table(peer, msg)
            case Complete():
                pkg = self.packages.get(msg.package_id)
                if pkg is not None:
                    pkg.completes.add(peer.node_id)
                    if self.on_complete_from_peer is not None:
                        self.on_complete_from_peer(msg.package_id, peer)
            case _:
                return False
        return True

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
        self.fetcher.peer_bits(peer, pkg, bits)
        self.server.peer_bits(peer, pkg, bits, refresh)

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
        self.fetcher.peer_have(peer, pkg, msg.indices)
        self.server.peer_have(peer, pkg, msg.indices)

    # -- downloads ----------------------------------------------------------------------
    async def download(
        self,
        ann: Announcement,
        *,
        on_progress: ProgressFn | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> DownloadResult:
        """Fetch the package of ``ann`` into the complete cache (resuming what is there)."""
        pkg = package_for(self.packages, self.pending, ann)
        if not pkg.critical:
            return await self._download(ann, pkg, on_progress, on_started)
        # A critical download goes first: while it runs (table fetch included), other
        # downloads ask for nothing new.
        self.fetcher.critical_active.add(pkg.package_id)
        try:
            return await self._download(ann, pkg, on_progress, on_started)
        finally:
            self.fetcher.critical_active.discard(pkg.package_id)

    async def _download(
        self,
        ann: Announcement,
        pkg: Package,
        on_progress: ProgressFn | None,
        on_started: Callable[[], None] | None,
    ) -> DownloadResult:
        if pkg.complete or self.store.has_complete(pkg.package_id):
            if not pkg.complete:
                await self.server.add_complete(ann)
            return DownloadResult(True)
        return await self.fetcher.download(pkg, on_progress, on_started)

    def sources_of(self, package_id: bytes) -> dict[str, int]:
        """host:port -> verified chunks received from it so far, for a download."""
        pkg = self.packages.get(package_id)
        if pkg is None or pkg.downloader is None:
            return {}
        return self.fetcher.sources(pkg.downloader)

    # -- operator -----------------------------------------------------------------------
    def set_limits(self, max_upload_speed: int, max_download_speed: int) -> None:
        """New upload and download limits (a config reload), effective from the next chunk;
        0 is unlimited. Tokens earned so far are kept."""
        now = trio.current_time()
        self.options = dataclasses.replace(
            self.options,
            max_upload_speed=max_upload_speed,
            max_download_speed=max_download_speed,
        )
        self.server.options = self.fetcher.options = self.options
        self.server.up_bucket.set_rate(float(max_upload_speed), 128 * 1024, now)
        self.fetcher.down_bucket.set_rate(float(max_download_speed), 128 * 1024, now)

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
                "uploaded": self.server.bytes_uploaded_by_package.get(pid, 0),
                "reused_bytes": pkg.reused_bytes,
            }
        return out
