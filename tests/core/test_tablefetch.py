"""TableFetch: page list against the root, each page on its own, bad parts pinned."""

from __future__ import annotations

import os

from p2pupdate.core.chunks import page_hashes, page_of_table, table_root
from p2pupdate.core.messages import TABLE_PAGE_LIST
from p2pupdate.core.tablefetch import BAD_TABLE, TableFetch

N = 5000  # three pages: 2048 + 2048 + 904
HASHES = [os.urandom(32) for _ in range(N)]
ROOT = table_root(HASHES)
LIST = b"".join(page_hashes(HASHES))


def test_pages_from_several_peers_assemble_the_table() -> None:
    f: TableFetch[str] = TableFetch(N, ROOT)
    assert f.wanted() == [TABLE_PAGE_LIST]
    f.ask("a", TABLE_PAGE_LIST, 0.0)
    assert f.wanted() == []
    f.deliver("a", TABLE_PAGE_LIST, LIST)
    assert f.wanted() == [0, 1, 2]
    for page, peer in zip(range(3), "abc", strict=True):
        f.ask(peer, page, 1.0)
        f.deliver(peer, page, page_of_table(HASHES, page))
    assert f.done() and f.hashes == HASHES and f.take_bad() == []


def test_bad_page_list_and_bad_page_are_pinned_on_their_sender() -> None:
    f: TableFetch[str] = TableFetch(N, ROOT)
    f.ask("liar", TABLE_PAGE_LIST, 0.0)
    f.deliver("liar", TABLE_PAGE_LIST, os.urandom(96))
    assert f.take_bad() == [("liar", BAD_TABLE)] and f.wanted() == [TABLE_PAGE_LIST]
    f.ask("good", TABLE_PAGE_LIST, 0.0)
    f.deliver("good", TABLE_PAGE_LIST, LIST)
    f.ask("liar2", 1, 0.0)
    bad = bytearray(page_of_table(HASHES, 1))
    bad[5] ^= 1
    f.deliver("liar2", 1, bytes(bad))
    assert f.take_bad() == [("liar2", BAD_TABLE)]
    assert 1 in f.wanted() and not f.done()


def test_unasked_answers_are_ignored_and_timeouts_free_the_page() -> None:
    f: TableFetch[str] = TableFetch(N, ROOT)
    f.deliver("stranger", TABLE_PAGE_LIST, LIST)  # nobody asked it
    assert f.page_hashes is None
    f.ask("slow", TABLE_PAGE_LIST, 0.0)
    f.expire(5.0, timeout=10.0)
    assert f.wanted() == []
    f.expire(11.0, timeout=10.0)
    assert f.wanted() == [TABLE_PAGE_LIST]
    f.ask("empty", TABLE_PAGE_LIST, 11.0)
    f.deliver("empty", TABLE_PAGE_LIST, b"")  # "I don't have it": no blame
    assert f.take_bad() == [] and f.wanted() == [TABLE_PAGE_LIST]


def test_a_forgotten_request_makes_its_page_wanted_again_at_once() -> None:
    # The connection the page list was asked on closed: ask again now, not after the
    # timeout (a straggler waited 10 s for an answer that could not come).
    fetch: TableFetch[str] = TableFetch(3, b"\x00" * 32)
    fetch.ask("A", TABLE_PAGE_LIST, 0.0)
    assert fetch.wanted() == []
    fetch.forget(TABLE_PAGE_LIST)
    assert fetch.wanted() == [TABLE_PAGE_LIST]
    assert fetch.asked[TABLE_PAGE_LIST] == {"A"}  # another peer is asked first
    fetch.forget(TABLE_PAGE_LIST)  # twice, or never asked: nothing to do
