"""Fetching a package's chunk table from peers, page by page.

What it does
    :class:`TableFetcher` gets the page-hash list and then every page of a package's
    chunk table, each page asked of a peer that advertised the package (of any peer
    when none has yet), checked on its own by :class:`~p2pupdate.core.tablefetch.TableFetch`
    as it arrives, asked again elsewhere after ``table_timeout``; a peer that sends a
    page that does not verify is banned and not asked again.

What it does not do
    Decide what verifies (the core does) or serve tables (:mod:`.serve`).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import trio

from p2pupdate.core.messages import GetTable, Table
from p2pupdate.core.tablefetch import TableFetch
from p2pupdate.shell.transfer.packages import Package, ban_peer

if TYPE_CHECKING:
    from p2pupdate.shell.net.node import Node, PeerConn

__all__ = ["TableFetcher"]


class TableFetcher:
    """The table fetches in progress, one per package."""

    def __init__(
        self, node: Node, packages: dict[bytes, Package], rng: random.Random, timeout: float
    ) -> None:
        self.node = node
        self.packages = packages
        self.rng = rng
        self.timeout = timeout
        self._fetches: dict[bytes, TableFetch[bytes]] = {}

    def on_table(self, peer: PeerConn, msg: Table) -> None:
        """A TABLE page arrived: hand it to the fetch waiting for it, if any."""
        pkg = self.packages.get(msg.package_id)
        if pkg is None or pkg.hashes is not None:
            return
        fetch = self._fetches.get(msg.package_id)
        if fetch is None:
            return
        fetch.deliver(peer.node_id, msg.page, msg.hashes)
        pkg.table_wake.set()  # next page, or another peer at once (not after 0.25 s)

    async def fetch(self, pkg: Package) -> list[bytes]:
        """Get the page-hash list and every page, each checked on its own."""
        fetch: TableFetch[bytes] = TableFetch(pkg.nchunks, pkg.root)
        self._fetches[pkg.package_id] = fetch
        # The connection each outstanding page was asked on: if it closed (the peer left,
        # or a second connection to it replaced this one), no answer will come, so the
        # page is asked again now rather than after ``timeout``.
        asked_on: dict[int, PeerConn] = {}
        try:
            while True:
                now = trio.current_time()
                fetch.expire(now, self.timeout)
                for page, (nid, _) in list(fetch.outstanding.items()):
                    if self.node.peers.get(nid) is not asked_on.get(page):
                        fetch.forget(page)
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
                    asked_on[page] = self.node.peers[nid]
                    asked_on[page].post(GetTable(pkg.package_id, page))
                for nid, reason in fetch.take_bad():
                    pkg.bad_table_peers.add(nid)
                    ban_peer(self.node, nid, reason)
                if fetch.done():
                    assert fetch.hashes is not None
                    return fetch.hashes
                pkg.table_wake = trio.Event()
                with trio.move_on_after(0.25):
                    await pkg.table_wake.wait()
        finally:
            self._fetches.pop(pkg.package_id, None)
