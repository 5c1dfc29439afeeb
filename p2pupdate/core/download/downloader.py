"""The per-package download state machine: :class:`Downloader` (see the package docstring).

What it does
    Takes every input of one package download (what peers advertise, send and refuse,
    what the shell wrote, the timer), checks it, moves the download between its states
    (:data:`~p2pupdate.core.download.actions.TRANSITIONS`) and returns the actions the
    shell carries out. The work behind it lives beside it: the package's chunk sets and
    chunk verification in :mod:`.chunkbook`, what is known of each peer and its speed in
    :mod:`.sources`, the requests in flight in :mod:`.inflight`, and which chunk to ask
    of whom in :mod:`.scheduler` (with :mod:`.endgame`).

What it does not do
    Any I/O, clock reading or randomness beyond the ``random.Random`` it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Generic

from bitarray import bitarray, frozenbitarray

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.download.actions import (
    TRANSITIONS,
    AnnounceHave,
    Ban,
    Completed,
    DownloadAction,
    DownloadFailed,
    DownloadState,
    PeerT,
    RefreshSources,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.download.chunkbook import ChunkBook
from p2pupdate.core.download.inflight import InFlight
from p2pupdate.core.download.scheduler import Scheduler
from p2pupdate.core.download.sources import Sources
from p2pupdate.core.reasons import Reason
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from random import Random

__all__ = ["Downloader"]


class Downloader(Generic[PeerT]):
    """Download state of one package; see the module docstring for the protocol.

    Efficiency: availability is a partition of the missing chunks into bitmaps by the
    number of peers advertising them, so picking the rarest chunks one peer has is a few
    C-level bitmap operations per non-empty availability level, never a Python loop over
    chunks; a new bitfield or a departing peer moves whole bitmaps between levels. ``poll``
    visits only peers with free slots, and skips those that had nothing to offer until
    something that could change that happens.

    Size: the class is longer than the 300 lines the team aims for (about 420) on purpose.
    It is the one face of the download protocol that the swarm, the super-seeder and the
    tests drive: 11 inputs and 24 read-only views, each with its contract in its
    docstring. Every decision behind them lives in the modules beside it; splitting the
    face too would make every caller hold several objects whose states must agree.
    """

    def __init__(
        self,
        package_id: bytes,
        size: int,
        chunk_hashes: Sequence[bytes],
        *,
        have: bitarray | None = None,
        rng: Random,
        pipeline_depth: int = 8,
        request_timeout: float = 10.0,
        endgame_copies: int = 2,
        chunk_size: int = DEFAULT_LIMITS.chunk_size,
        stall_timeout: float = DEFAULT_LIMITS.download_stall_timeout,
        pipeline_seconds: float = DEFAULT_LIMITS.pipeline_seconds,
    ) -> None:
        """Start (or resume, with ``have``) the download of one package.

        ``chunk_hashes`` is the verified chunk table (one 32-byte BLAKE3 per chunk, the last
        chunk shorter; an empty package has none). ``have`` is the bitmap of chunks already
        verified in the partial file. ``endgame_copies`` caps how many peers are asked for
        one chunk at a time in endgame. ``stall_timeout``: after that long without a new
        chunk, ``on_timer`` re-examines the sources (:class:`RefreshSources`), and again
        every ``stall_timeout`` while nothing arrives. ``pipeline_seconds``: each peer is
        asked for about that many seconds of its measured service time at once (at least
        2 requests, at most ``pipeline_depth``; 0 turns the cap off). Bad arguments raise
        ValueError.
        """
        self._c = ChunkBook(package_id, size, chunk_hashes, chunk_size, have)
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if endgame_copies < 1:
            raise ValueError("endgame_copies must be at least 1")
        if not stall_timeout > 0:
            raise ValueError("stall_timeout must be positive")
        if not pipeline_seconds >= 0:
            raise ValueError("pipeline_seconds must not be negative")
        self._stall_timeout = float(stall_timeout)
        # When the last new chunk arrived, or the last re-examination (None until the
        # first on_timer or chunk: the downloader has no clock of its own).
        self._last_progress: float | None = None
        self._reexaminations = 0
        self._state = DownloadState.PENDING
        self._failure: str | None = None
        # Invariant: the chunk book's have, writing and wanted, and the chunks in flight,
        # partition [0, n).
        self._flight: InFlight[PeerT] = InFlight(self._c.n, float(request_timeout))
        self._src: Sources[PeerT] = Sources(self._c.n, pipeline_depth, float(pipeline_seconds))
        self._sched: Scheduler[PeerT] = Scheduler(
            self._c, self._src, self._flight, rng, endgame_copies
        )
        self._duplicates = 0

    # -----------------------------------------------------------------------------------
    # Read-only views
    # -----------------------------------------------------------------------------------

    @property
    def state(self) -> DownloadState:
        """The current state."""
        return self._state

    @property
    def failure_reason(self) -> str | None:
        """Why the download failed (None unless FAILED)."""
        return self._failure

    @property
    def package_id(self) -> bytes:
        """The package id this download is for."""
        return self._c.package_id

    @property
    def size(self) -> int:
        """Package size in bytes."""
        return self._c.size

    @property
    def nchunks(self) -> int:
        """Number of chunks in the package."""
        return self._c.n

    @property
    def chunk_size(self) -> int:
        """Size of every chunk but the last."""
        return self._c.chunk_size

    @property
    def have(self) -> frozenbitarray:
        """Copy of the bitmap of chunks written to the partial file (verified)."""
        return frozenbitarray(self._c.have)

    def has_chunk(self, index: int) -> bool:
        """Whether chunk ``index`` is written and may be served."""
        return 0 <= index < self._c.n and bool(self._c.have[index])

    @property
    def missing(self) -> int:
        """Chunks not yet written (including those being requested or written)."""
        return self._c.missing

    @property
    def bytes_done(self) -> int:
        """Bytes of the package written and verified."""
        return self._c.bytes_done()

    @property
    def progress(self) -> float:
        """Fraction of the package written, 0.0 to 1.0 (1.0 for an empty package)."""
        if self._c.size == 0:
            return 1.0
        return self._c.bytes_done() / self._c.size

    @property
    def in_flight(self) -> int:
        """Number of requests in flight (endgame duplicates counted separately)."""
        return len(self._flight)

    @property
    def in_endgame(self) -> bool:
        """True when every missing chunk is in flight (endgame: duplicates allowed)."""
        return self._sched.in_endgame()

    @property
    def duplicates(self) -> int:
        """Verified chunks received that we already had (endgame and late arrivals)."""
        return self._duplicates

    def chunk_len(self, index: int) -> int:
        """Length of chunk ``index`` (the last one may be shorter)."""
        return self._c.chunk_len(index)

    def sources(self) -> dict[PeerT, int]:
        """Verified chunks accepted per peer (for ``download_complete``'s ``sources``)."""
        return dict(self._src.received)

    def strikes(self, peer: PeerT) -> int:
        """Timed-out requests charged to ``peer`` (kept after it leaves)."""
        return self._src.strikes.get(peer, 0)

    def peers(self) -> list[PeerT]:
        """Peers currently known (connected and not banned)."""
        return list(self._src.by_peer)

    def pipeline_limit(self, peer: PeerT) -> int:
        """Current in-flight limit for ``peer`` (0 if unknown): its depth (halved on a
        timeout), at most ``pipeline_seconds`` of its measured service time (at least 2),
        and cut down for a peer more than ``SLOW_FACTOR`` (4) times as slow as the
        median peer (see ``service_time``) so that what we ask of it arrives about as
        soon as a full pipeline from the median peer would."""
        p = self._src.by_peer.get(peer)
        return 0 if p is None else self._src.cap(p)

    def service_time(self, peer: PeerT) -> float | None:
        """Measured time between two chunks from ``peer`` while we wait for one (None
        until it has sent one)."""
        p = self._src.by_peer.get(peer)
        return None if p is None else p.svc

    def requests_to(self, peer: PeerT) -> list[int]:
        """Chunks in flight to ``peer``, oldest first."""
        p = self._src.by_peer.get(peer)
        return [] if p is None else list(p.requests)

    @property
    def reexaminations(self) -> int:
        """How many times a stall made the download re-examine its sources."""
        return self._reexaminations

    def stall_deadline(self) -> float | None:
        """When ``on_timer`` re-examines the sources if no chunk arrives before (None
        before the first ``on_timer``, and once the download is not active)."""
        if self._last_progress is None or not self._active() or self._c.missing == 0:
            return None
        return self._last_progress + self._stall_timeout

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called (earliest request deadline), or None."""
        return self._flight.next_deadline()

    # -----------------------------------------------------------------------------------
    # Inputs from peers
    # -----------------------------------------------------------------------------------

    def on_peer_bitfield(
        self, peer: PeerT, bits: bitarray, now: float
    ) -> list[DownloadAction[PeerT]]:
        """``peer`` advertises exactly ``bits`` (replacing what it advertised before).

        A bitfield of the wrong length raises RemoteProtocolError (nothing is changed).
        """
        if len(bits) != self._c.n:
            raise RemoteProtocolError(f"bitfield has {len(bits)} bits, expected {self._c.n}")
        if peer in self._src.banned or not self._active():
            return []
        p = self._src.by_peer.get(peer)
        if p is None:
            p = self._src.add(peer)
        else:
            self._c.avail.remove(p.bits)
        p.bits = bitarray(bits, endian="big")
        self._c.avail.add(p.bits)
        p.adv_gen += 1
        return []

    def on_peer_have(
        self, peer: PeerT, indices: Iterable[int], now: float
    ) -> list[DownloadAction[PeerT]]:
        """``peer`` now also has these chunks (a peer seen for the first time starts empty).

        An index out of range raises RemoteProtocolError (nothing is changed).
        """
        idx = list(indices)
        for i in idx:
            self._c.check_index(i)
        if peer in self._src.banned or not self._active():
            return []
        p = self._src.by_peer.get(peer)
        if p is None:
            p = self._src.add(peer)
        bits = p.bits
        changed = False
        for i in idx:
            if not bits[i]:
                bits[i] = 1
                self._c.avail.move(i, +1)
                changed = True
        if changed:
            p.adv_gen += 1
        return []

    def could_ask(self, peer: PeerT, indices: Iterable[int]) -> bool:
        """Whether :meth:`poll` might now ask ``peer`` for one of ``indices``.

        True when ``peer`` has a free pipeline slot and one of them is still missing;
        otherwise a HAVE of ``indices`` cannot change what ``poll`` does, and the shell
        need not run it (a HAVE from every peer for every chunk: the loop would run for
        each one).
        """
        if peer not in self._src.hungry:
            return False
        have, writing = self._c.have, self._c.writing
        return any(not (have[i] or writing[i]) for i in indices)

    def on_peer_gone(self, peer: PeerT, now: float) -> list[DownloadAction[PeerT]]:
        """``peer``'s connection is closed: its requests go back to the pool.

        Also ends the "ignore this banned key" period that follows a :class:`Ban`.
        """
        self._src.banned.discard(peer)
        self._sched.drop(peer)
        return []

    def on_chunk(
        self, peer: PeerT, index: int, data: bytes, now: float
    ) -> list[DownloadAction[PeerT]]:
        """``peer`` sent chunk ``index``.

        The chunk is checked against the table first: a wrong length or hash returns
        ``[Ban(peer, "bad_chunk")]`` and nothing else (nothing is written). A verified chunk
        we lack returns ``WriteChunk`` followed by ``CancelAsk`` for every other peer it was
        requested from; a verified chunk we already have or are writing (endgame duplicate,
        late or unrequested arrival) is ignored. Out-of-range raises RemoteProtocolError.
        """
        self._c.check_index(index)
        if peer in self._src.banned or not self._active():
            return []
        if not self._c.verifies(index, data):
            return self._ban(peer, Reason.BAD_CHUNK)
        self._sched.delivered(peer, index, now)
        if self._c.held(index):
            self._duplicates += 1
            return []
        actions: list[DownloadAction[PeerT]] = [WriteChunk(index, bytes(data))]
        actions.extend(self._sched.cancel_copies(index))
        self._c.to_write(index)
        self._src.timed_out.pop(index, None)
        self._src.received[peer] = self._src.received.get(peer, 0) + 1
        self._last_progress = now
        if self._state is DownloadState.PENDING:
            self._transition(DownloadState.DOWNLOADING)
        return actions

    def on_reject(self, peer: PeerT, index: int, now: float) -> list[DownloadAction[PeerT]]:
        """``peer`` refused chunk ``index`` (it lacks it): ask elsewhere, forget its claim.

        A reject for something not requested from it is ignored. No strike: an honest peer
        may have lost a chunk (evicted) or be a super-seed that has since sent it elsewhere.
        """
        self._c.check_index(index)
        if peer in self._src.banned or not self._active():
            return []
        if not self._sched.rejected(peer, index):
            return []
        p = self._src.by_peer[peer]
        if p.bits[index]:
            p.bits[index] = 0
            self._c.avail.move(index, -1)
        return []

    # -----------------------------------------------------------------------------------
    # Inputs from the shell
    # -----------------------------------------------------------------------------------

    def on_chunk_written(self, index: int) -> list[DownloadAction[PeerT]]:
        """The shell wrote chunk ``index`` (after a WriteChunk): it is now in ``have``.

        Returns ``AnnounceHave((index,))`` and, for the last chunk, ``VerifyPackage()``.
        Calling it for a chunk that was not handed out by WriteChunk raises
        LocalProtocolError. It is accepted after ``fail()`` too (the chunk stays servable).
        """
        self._c.written(index)
        actions: list[DownloadAction[PeerT]] = [AnnounceHave((index,))]
        if self._c.missing == 0 and self._active():
            actions.extend(self._start_verifying())
        return actions

    def on_write_failed(self, index: int) -> list[DownloadAction[PeerT]]:
        """Writing chunk ``index`` failed: it is wanted again (call ``fail`` for disk full)."""
        self._c.write_failed(index)
        self._sched.wanted_again()
        return []

    def on_package_verified(self, ok: bool) -> list[DownloadAction[PeerT]]:
        """Result of the whole-file hash asked for by VerifyPackage.

        ``ok`` gives ``[Completed()]``; a mismatch fails the download with
        ``package_hash_mismatch``. Raises LocalProtocolError unless VERIFYING.
        """
        if ok:
            self._transition(DownloadState.COMPLETE)
            return [Completed()]
        self._transition(DownloadState.FAILED)
        self._failure = "package_hash_mismatch"
        return [DownloadFailed("package_hash_mismatch")]

    def fail(self, reason: str) -> list[DownloadAction[PeerT]]:
        """Give up (disk full, superseded, cancelled): cancel every request, go FAILED.

        Raises LocalProtocolError when already COMPLETE or FAILED (FAILED is sticky).
        Chunks being written may still be reported with ``on_chunk_written``.
        """
        self._transition(DownloadState.FAILED)
        self._failure = reason
        actions: list[DownloadAction[PeerT]] = self._sched.cancel_all()
        actions.append(DownloadFailed(reason))
        return actions

    def on_timer(self, now: float) -> list[DownloadAction[PeerT]]:
        """Expire requests whose deadline is ``<= now``.

        Each expired request returns ``CancelAsk(peer, index)``, adds a strike to the peer and
        halves its pipeline limit; the chunk is asked of another peer at the next ``poll``
        when another has it. A copy that arrives late is still accepted.

        Stall: when the download is active and incomplete and no new chunk has arrived for
        ``stall_timeout`` (counted from the first call, the last chunk, or the last
        re-examination), the download re-examines its sources: every peer's pipeline is
        reset to full depth and its measured speed forgotten, earlier timeouts are
        forgiven (so a timed-out chunk may be asked of any peer that has it, the one that
        timed out included), every peer is
        looked at again at the next ``poll``, and :class:`RefreshSources` asks the shell
        to refresh what peers advertise. It comes after the Cancels of this call.
        """
        if self._last_progress is None:
            self._last_progress = now
        actions = self._sched.expire(now)
        deadline = self.stall_deadline()
        if deadline is not None and now >= deadline:
            actions.append(self._reexamine(now))
        return actions

    def _reexamine(self, now: float) -> RefreshSources:
        self._last_progress = now
        self._reexaminations += 1
        self._sched.remeasure()
        return RefreshSources()

    def poll(self, now: float) -> list[DownloadAction[PeerT]]:
        """Fill every peer's pipeline: return the new :class:`AskChunk` actions (and the
        :class:`CancelAsk` of a request moved off a slow peer).

        First, a request waiting on a peer more than 4x as slow as the median moves
        to a faster peer that has the chunk and a free slot, when that one is expected to
        deliver it in less than half the time (CancelAsk, then AskChunk). Then normal mode
        asks each peer with free slots (a slow peer's pipeline is cut, see
        ``pipeline_limit``) for the rarest chunks it has that are not in flight (random
        among equally rare ones). Once every missing chunk is in flight (endgame) it asks
        peers for chunks already in flight elsewhere, the one expected last first, up to
        ``endgame_copies`` per chunk, never one whose measured holder is expected sooner
        than this peer. Also starts verification when nothing is missing (a resume with
        every chunk, an empty package).
        """
        if not self._active():
            return []
        if self._c.missing == 0:
            return self._start_verifying()
        actions = self._sched.fill(now)
        if actions and self._state is DownloadState.PENDING:
            self._transition(DownloadState.DOWNLOADING)
        return actions

    # -----------------------------------------------------------------------------------
    # Internals
    # -----------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self._state in (DownloadState.PENDING, DownloadState.DOWNLOADING)

    def _transition(self, new: DownloadState) -> None:
        if new not in TRANSITIONS[self._state]:
            raise LocalProtocolError(
                f"illegal download transition {self._state.value} -> {new.value}"
            )
        self._state = new

    def _start_verifying(self) -> list[DownloadAction[PeerT]]:
        self._transition(DownloadState.VERIFYING)
        actions = self._sched.cancel_all()
        actions.append(VerifyPackage())
        return actions

    def _ban(self, peer: PeerT, reason: str) -> list[DownloadAction[PeerT]]:
        self._sched.drop(peer)
        self._src.banned.add(peer)
        return [Ban(peer, reason)]
