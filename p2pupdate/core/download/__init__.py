"""The per-package download state machine: which chunk to ask which peer for, and when.

What it does
    :class:`Downloader` keeps the bitmap of verified chunks of one package, what every peer
    advertises (BITFIELD and HAVE), the requests in flight with their deadlines, and the
    strikes of slow peers. It picks chunks rarest-first with a random tie-break, keeps up to
    ``pipeline_depth`` requests in flight per peer, re-requests from another peer what timed
    out, goes into endgame (stragglers asked of a second peer, the duplicate cancelled when
    one copy arrives) once every missing chunk is in flight, and verifies every chunk against
    the signed chunk table before anything is written. It measures how fast each peer serves
    it (time between two chunks while it waits for one): a peer more than four times as slow
    as the median peer gets a proportionally shorter pipeline, a request waiting on it moves to a
    faster peer that has the chunk and would deliver it in less than half the time, and
    endgame duplicates the chunk expected last first.

What it does not do
    No I/O of any kind. It never reads a clock (every input carries ``now``), never touches
    a socket or a file, and draws randomness only from the ``random.Random`` it is given.
    It does not fetch or check the chunk table (the caller passes the verified table), does
    not persist the bitmap, does not hash the whole file and does not know about priority,
    rate limits or bans beyond saying "ban this peer": the shell does all that.

How the shell drives it
    Feed every input as it happens (``on_peer_bitfield``, ``on_peer_have``, ``on_chunk``,
    ``on_reject``, ``on_peer_gone``, ``on_chunk_written``, ``on_write_failed``,
    ``on_package_verified``, ``on_timer``), carry out the actions each returns, in order,
    then call ``poll(now)`` to fill the peers' pipelines, and sleep until ``next_deadline()``.
    Inputs return only their immediate consequences; only ``poll`` issues new requests.

    The chunk life cycle is: wanted -> requested (one or, in endgame, more peers) ->
    verified (:class:`WriteChunk` returned) -> written (the shell calls
    ``on_chunk_written``: now it is in :attr:`Downloader.have`, servable, and announced with
    :class:`AnnounceHave`). ``have`` therefore means "in the partial file", not "durable":
    to persist the bitmap, copy ``have`` first, fsync the data, then write the copy.
    When every chunk is written the state becomes Verifying and :class:`VerifyPackage` asks
    the shell to hash the whole file; ``on_package_verified(ok)`` ends in Complete or Failed.

The package's modules
    :mod:`.actions` (states and the actions returned), :mod:`.downloader` (the state
    machine), :mod:`.inflight` (requests in flight and their deadlines), :mod:`.speed`
    (what is known of each source and how fast it serves), :mod:`.endgame` (which
    duplicates to ask for at the end).

Peers are opaque hashable keys (the shell uses ``"host:port"`` strings); the class is
generic in that key type: ``dl: Downloader[str] = Downloader(...)``.
"""

from p2pupdate.core.download.actions import (
    TRANSITIONS,
    AnnounceHave,
    AskChunk,
    Ban,
    CancelAsk,
    Completed,
    DownloadAction,
    DownloadFailed,
    DownloadState,
    PeerT,
    RefreshSources,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.download.downloader import Downloader

__all__ = [
    "TRANSITIONS",
    "AnnounceHave",
    "AskChunk",
    "Ban",
    "CancelAsk",
    "Completed",
    "DownloadAction",
    "DownloadFailed",
    "DownloadState",
    "Downloader",
    "PeerT",
    "RefreshSources",
    "VerifyPackage",
    "WriteChunk",
]
