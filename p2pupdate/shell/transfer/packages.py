"""What the swarm knows of each package, shared by its serving and fetching sides.

What it does
    :class:`SwarmOptions` are the swarm's settings. :class:`Package` is the swarm's
    record of one package: its geometry and chunk table, whether it is complete, the
    downloader or super-seeder working on it, and what every connected peer advertised
    of it. :func:`package_for` finds or makes the record for an announcement (taking the
    bitfields held before the announcement came), :func:`serving_bits` and
    :func:`can_serve` say what we can serve of it.

What it does not do
    Talk to peers or touch the store: :mod:`.serve` answers peers, :mod:`.fetch`
    downloads, :mod:`.swarm` ties them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from bitarray import bitarray
from bitarray.util import ones

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.chunks import chunk_count, page_hashes
from p2pupdate.core.download import Downloader
from p2pupdate.core.messages import Have
from p2pupdate.core.seeding import SuperSeeder

if TYPE_CHECKING:
    from p2pupdate.core.announcement import Announcement
    from p2pupdate.core.pending import PendingBitfields
    from p2pupdate.shell.net.node import Node

__all__ = [
    "Package",
    "SwarmOptions",
    "ban_peer",
    "can_serve",
    "package_for",
    "serving_bits",
    "set_table",
]


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
class Package:
    """The swarm's record of one package."""

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
    bad_table_peers: set[bytes] = field(default_factory=set)
    reused_bytes: int = 0  # copied from local files by the last download (fetch.py)

    @property
    def nchunks(self) -> int:
        return chunk_count(self.size)

    def poke(self) -> None:
        self.wake.set()

    def take_have(self) -> list[Have]:
        """HAVE messages for the chunks written since the last call (4096 a message)."""
        indices = tuple(self.pending_have)
        self.pending_have.clear()
        return [
            Have(self.package_id, indices[start : start + 4096])
            for start in range(0, len(indices), 4096)
        ]


def package_for(
    packages: dict[bytes, Package], pending: PendingBitfields[bytes, bytes], ann: Announcement
) -> Package:
    """The record of ``ann``'s package, made (and registered) if it is new."""
    b = ann.body
    pkg = packages.get(b.package_id)
    if pkg is None:
        pkg = Package(b.package_id, b.size, b.table_root, b.critical, b.channel, b.version)
        # Held before the announcement said how long the package is: keep the
        # ones that fit (as a BITFIELD arriving now would be checked).
        pkg.bitfields.update(
            (nid, bits)
            for nid, bits in pending.take(b.package_id).items()
            if len(bits) == pkg.nchunks
        )
        packages[b.package_id] = pkg
    return pkg


def set_table(pkg: Package, hashes: list[bytes]) -> None:
    """Install the verified chunk table of ``pkg``."""
    pkg.hashes = hashes
    pkg.page_hashes = page_hashes(hashes)


def serving_bits(pkg: Package) -> bitarray | None:
    """The chunks of ``pkg`` we can serve (None while we have nothing of it)."""
    if pkg.complete:
        return ones(pkg.nchunks)
    if pkg.downloader is not None:
        return bitarray(pkg.downloader.have)
    return None


def can_serve(pkg: Package, index: int) -> bool:
    """Whether chunk ``index`` of ``pkg`` is ours to send."""
    if not 0 <= index < pkg.nchunks:
        return False
    if pkg.complete:
        return True
    return pkg.downloader is not None and pkg.downloader.has_chunk(index)


def ban_peer(node: Node, node_id: bytes, reason: str) -> None:
    """Ban a connected peer (one that already left is let go)."""
    peer = node.peers.get(node_id)
    if peer is not None:
        node.ban(peer.addr, node_id, reason)
