"""The per-package download state machine: :class:`Downloader` (see the package docstring).

What it does
    Keeps the chunk sets of one package (written, being written, in flight, wanted), the
    peers it knows and what they advertise, and turns every input into the actions the
    shell carries out. It picks chunks rarest-first (:mod:`~p2pupdate.core.availability`),
    and leaves the books of requests in flight to :mod:`.inflight`, the speed of each
    source to :mod:`.speed` and the choice of endgame duplicates to :mod:`.endgame`.

What it does not do
    Any I/O, clock reading or randomness beyond the ``random.Random`` it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Generic

import blake3
from bitarray import bitarray, frozenbitarray
from bitarray.util import zeros

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.availability import Availability
from p2pupdate.core.download.actions import (
    TRANSITIONS,
    AnnounceHave,
    Ban,
    Cancel,
    Completed,
    DownloadAction,
    DownloadFailed,
    DownloadState,
    PeerT,
    RefreshSources,
    Request,
    VerifyPackage,
    WriteChunk,
)
from p2pupdate.core.download.endgame import endgame_picks
from p2pupdate.core.download.inflight import InFlight
from p2pupdate.core.download.speed import (
    Source,
    median_pace,
    move_off_slow,
    pipeline_cap,
    record_arrival,
)
from p2pupdate.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from random import Random

__all__ = ["Downloader"]

HASH_LEN = 32  # BLAKE3 digest size used by the chunk table


class Downloader(Generic[PeerT]):
    """Download state of one package; see the module docstring for the protocol.

    Efficiency: availability is a partition of the missing chunks into bitmaps by the
    number of peers advertising them, so picking the rarest chunks one peer has is a few
    C-level bitmap operations per non-empty availability level, never a Python loop over
    chunks; a new bitfield or a departing peer moves whole bitmaps between levels. ``poll``
    visits only peers with free slots, and skips those that had nothing to offer until
    something that could change that happens.
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
    ) -> None:
        """Start (or resume, with ``have``) the download of one package.

        ``chunk_hashes`` is the verified chunk table (one 32-byte BLAKE3 per chunk, the last
        chunk shorter; an empty package has none). ``have`` is the bitmap of chunks already
        verified in the partial file. ``endgame_copies`` caps how many peers are asked for
        one chunk at a time in endgame. ``stall_timeout``: after that long without a new
        chunk, ``on_timer`` re-examines the sources (:class:`RefreshSources`), and again
        every ``stall_timeout`` while nothing arrives. Bad arguments raise ValueError.
        """
        if len(package_id) != HASH_LEN:
            raise ValueError("package_id must be 32 bytes")
        if size < 0:
            raise ValueError("size must not be negative")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        nchunks = -(-size // chunk_size)
        if len(chunk_hashes) != nchunks:
            raise ValueError(
                f"chunk table has {len(chunk_hashes)} entries, {size} bytes need {nchunks}"
            )
        if any(len(h) != HASH_LEN for h in chunk_hashes):
            raise ValueError("every chunk hash must be 32 bytes")
        if have is not None and len(have) != nchunks:
            raise ValueError(f"have bitmap has {len(have)} bits, expected {nchunks}")
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if endgame_copies < 1:
            raise ValueError("endgame_copies must be at least 1")
        if not stall_timeout > 0:
            raise ValueError("stall_timeout must be positive")

        self._package_id = bytes(package_id)
        self._size = size
        self._chunk_size = chunk_size
        self._n = nchunks
        self._hashes: tuple[bytes, ...] = tuple(bytes(h) for h in chunk_hashes)
        self._rng = rng
        self._depth = pipeline_depth
        self._timeout = float(request_timeout)
        self._endgame_copies = endgame_copies
        self._stall_timeout = float(stall_timeout)
        # When the last new chunk arrived, or the last re-examination (None until the
        # first on_timer or chunk: the downloader has no clock of its own).
        self._last_progress: float | None = None
        self._reexaminations = 0

        self._state = DownloadState.PENDING
        self._failure: str | None = None

        # Chunk sets. Invariant: have, writing, in flight (self._flight.bits), wanted
        # partition [0, n).
        self._have: bitarray = zeros(nchunks) if have is None else bitarray(have, endian="big")
        self._writing: bitarray = zeros(nchunks)  # verified, WriteChunk out, not written yet
        self._wanted: bitarray = ~self._have  # missing and neither requested nor writing
        self._missing = nchunks - self._have.count()

        self._avail = Availability(self._wanted)  # over the missing chunks

        self._peers: dict[PeerT, Source] = {}
        self._hungry: dict[PeerT, None] = {}  # peers with free pipeline slots, in order
        self._banned: set[PeerT] = set()
        self._received: dict[PeerT, int] = {}  # verified chunks accepted from each peer
        self._strikes: dict[PeerT, int] = {}  # timed-out requests per peer
        # chunk -> peers whose request for it timed out (asked elsewhere if possible)
        self._timed_out: dict[int, set[PeerT]] = {}

        self._flight: InFlight[PeerT] = InFlight(nchunks, self._timeout)

        self._best_svc: float | None = None  # the median peer's svc (see Source.svc)
        self._wanted_gen = 0  # bumped when a chunk becomes wanted again / a peer leaves
        self._flight_gen = 0  # bumped when endgame candidates may have grown
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
        return self._package_id

    @property
    def size(self) -> int:
        """Package size in bytes."""
        return self._size

    @property
    def nchunks(self) -> int:
        """Number of chunks in the package."""
        return self._n

    @property
    def chunk_size(self) -> int:
        """Size of every chunk but the last."""
        return self._chunk_size

    @property
    def have(self) -> frozenbitarray:
        """Copy of the bitmap of chunks written to the partial file (verified)."""
        return frozenbitarray(self._have)

    def has_chunk(self, index: int) -> bool:
        """Whether chunk ``index`` is written and may be served."""
        return 0 <= index < self._n and bool(self._have[index])

    @property
    def missing(self) -> int:
        """Chunks not yet written (including those being requested or written)."""
        return self._missing

    @property
    def bytes_done(self) -> int:
        """Bytes of the package written and verified."""
        if self._n == 0:
            return 0
        done = self._have.count() * self._chunk_size
        if self._have[self._n - 1]:
            done -= self._chunk_size - self.chunk_len(self._n - 1)
        return done

    @property
    def progress(self) -> float:
        """Fraction of the package written, 0.0 to 1.0 (1.0 for an empty package)."""
        if self._size == 0:
            return 1.0
        return self.bytes_done / self._size

    @property
    def in_flight(self) -> int:
        """Number of requests in flight (endgame duplicates counted separately)."""
        return len(self._flight)

    @property
    def in_endgame(self) -> bool:
        """True when every missing chunk is in flight (endgame: duplicates allowed)."""
        return bool(self._flight.holders) and self._no_fresh_chunks()

    @property
    def duplicates(self) -> int:
        """Verified chunks received that we already had (endgame and late arrivals)."""
        return self._duplicates

    def chunk_len(self, index: int) -> int:
        """Length of chunk ``index`` (the last one may be shorter)."""
        if index == self._n - 1:
            return self._size - index * self._chunk_size
        return self._chunk_size

    def sources(self) -> dict[PeerT, int]:
        """Verified chunks accepted per peer (for ``download_complete``'s ``sources``)."""
        return dict(self._received)

    def strikes(self, peer: PeerT) -> int:
        """Timed-out requests charged to ``peer`` (kept after it leaves)."""
        return self._strikes.get(peer, 0)

    def peers(self) -> list[PeerT]:
        """Peers currently known (connected and not banned)."""
        return list(self._peers)

    def pipeline_limit(self, peer: PeerT) -> int:
        """Current in-flight limit for ``peer`` (0 if unknown): its depth (halved on a
        timeout), cut down for a peer more than ``SLOW_FACTOR`` (4) times as slow as the
        median peer (see ``service_time``) so that what we ask of it arrives about as
        soon as a full pipeline from the median peer would."""
        p = self._peers.get(peer)
        return 0 if p is None else self._cap(p)

    def service_time(self, peer: PeerT) -> float | None:
        """Measured time between two chunks from ``peer`` while we wait for one (None
        until it has sent one)."""
        p = self._peers.get(peer)
        return None if p is None else p.svc

    def requests_to(self, peer: PeerT) -> list[int]:
        """Chunks in flight to ``peer``, oldest first."""
        p = self._peers.get(peer)
        return [] if p is None else list(p.requests)

    @property
    def reexaminations(self) -> int:
        """How many times a stall made the download re-examine its sources."""
        return self._reexaminations

    def stall_deadline(self) -> float | None:
        """When ``on_timer`` re-examines the sources if no chunk arrives before (None
        before the first ``on_timer``, and once the download is not active)."""
        if self._last_progress is None or not self._active() or self._missing == 0:
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
        if len(bits) != self._n:
            raise RemoteProtocolError(f"bitfield has {len(bits)} bits, expected {self._n}")
        if peer in self._banned or not self._active():
            return []
        p = self._peers.get(peer)
        if p is None:
            p = self._add_peer(peer)
        else:
            self._avail.remove(p.bits)
        p.bits = bitarray(bits, endian="big")
        self._avail.add(p.bits)
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
            self._check_index(i)
        if peer in self._banned or not self._active():
            return []
        p = self._peers.get(peer)
        if p is None:
            p = self._add_peer(peer)
        bits = p.bits
        changed = False
        for i in idx:
            if not bits[i]:
                bits[i] = 1
                self._avail.move(i, +1)
                changed = True
        if changed:
            p.adv_gen += 1
        return []

    def on_peer_gone(self, peer: PeerT, now: float) -> list[DownloadAction[PeerT]]:
        """``peer``'s connection is closed: its requests go back to the pool.

        Also ends the "ignore this banned key" period that follows a :class:`Ban`.
        """
        self._banned.discard(peer)
        self._drop_peer(peer)
        return []

    def on_chunk(
        self, peer: PeerT, index: int, data: bytes, now: float
    ) -> list[DownloadAction[PeerT]]:
        """``peer`` sent chunk ``index``.

        The chunk is checked against the table first: a wrong length or hash returns
        ``[Ban(peer, "bad_chunk")]`` and nothing else (nothing is written). A verified chunk
        we lack returns ``WriteChunk`` followed by ``Cancel`` for every other peer it was
        requested from; a verified chunk we already have or are writing (endgame duplicate,
        late or unrequested arrival) is ignored. Out-of-range raises RemoteProtocolError.
        """
        self._check_index(index)
        if peer in self._banned or not self._active():
            return []
        if (
            len(data) != self.chunk_len(index)
            or blake3.blake3(data).digest() != self._hashes[index]
        ):
            return self._ban(peer, "bad_chunk")
        p = self._peers.get(peer)
        if p is not None:
            rid = p.requests.get(index)
            if rid is not None:
                record_arrival(p, self._flight.issued_at(rid), now)
                self._best_svc = median_pace(self._peers.values())
                self._forget_request(peer, p, index, rid)
                p.limit = min(self._depth, p.limit + 1)
                self._update_hungry(peer, p)
        if self._have[index] or self._writing[index]:
            self._duplicates += 1
            return []
        actions: list[DownloadAction[PeerT]] = [WriteChunk(index, bytes(data))]
        for q, rid in list(self._flight.holders.get(index, {}).items()):
            self._forget_request(q, self._peers[q], index, rid)
            actions.append(Cancel(q, index))
        self._wanted[index] = 0
        self._writing[index] = 1
        self._timed_out.pop(index, None)
        self._received[peer] = self._received.get(peer, 0) + 1
        self._last_progress = now
        if self._state is DownloadState.PENDING:
            self._transition(DownloadState.DOWNLOADING)
        return actions

    def on_reject(self, peer: PeerT, index: int, now: float) -> list[DownloadAction[PeerT]]:
        """``peer`` refused chunk ``index`` (it lacks it): ask elsewhere, forget its claim.

        A reject for something not requested from it is ignored. No strike: an honest peer
        may have lost a chunk (evicted) or be a super-seed that has since sent it elsewhere.
        """
        self._check_index(index)
        if peer in self._banned or not self._active():
            return []
        p = self._peers.get(peer)
        if p is None:
            return []
        rid = p.requests.get(index)
        if rid is None:
            return []
        self._forget_request(peer, p, index, rid, freed=True)
        self._release_if_unowned(index)
        if p.bits[index]:
            p.bits[index] = 0
            self._avail.move(index, -1)
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
        if not 0 <= index < self._n or not self._writing[index]:
            raise LocalProtocolError(f"chunk {index} was not waiting to be written")
        self._writing[index] = 0
        self._have[index] = 1
        self._avail.discard(index)
        self._missing -= 1
        actions: list[DownloadAction[PeerT]] = [AnnounceHave((index,))]
        if self._missing == 0 and self._active():
            actions.extend(self._start_verifying())
        return actions

    def on_write_failed(self, index: int) -> list[DownloadAction[PeerT]]:
        """Writing chunk ``index`` failed: it is wanted again (call ``fail`` for disk full)."""
        if not 0 <= index < self._n or not self._writing[index]:
            raise LocalProtocolError(f"chunk {index} was not waiting to be written")
        self._writing[index] = 0
        self._wanted[index] = 1
        self._wanted_gen += 1
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
        actions: list[DownloadAction[PeerT]] = self._cancel_all()
        actions.append(DownloadFailed(reason))
        return actions

    def on_timer(self, now: float) -> list[DownloadAction[PeerT]]:
        """Expire requests whose deadline is ``<= now``.

        Each expired request returns ``Cancel(peer, index)``, adds a strike to the peer and
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
        actions: list[DownloadAction[PeerT]] = []
        if self._last_progress is None:
            self._last_progress = now
        while (expired := self._flight.pop_expired(now)) is not None:
            rid, peer, index = expired
            p = self._peers[peer]
            self._strikes[peer] = self._strikes.get(peer, 0) + 1
            p.limit = max(1, p.limit // 2)
            self._timed_out.setdefault(index, set()).add(peer)
            self._forget_request(peer, p, index, rid, freed=True)
            self._release_if_unowned(index)
            actions.append(Cancel(peer, index))
        deadline = self.stall_deadline()
        if deadline is not None and now >= deadline:
            actions.append(self._reexamine(now))
        return actions

    def _reexamine(self, now: float) -> RefreshSources:
        self._last_progress = now
        self._reexaminations += 1
        self._timed_out.clear()
        self._best_svc = None  # speeds are measured again from scratch
        for peer, p in self._peers.items():
            p.limit = self._depth
            p.svc = p.last_arrival = None
            p.starved = None
            p.eg_starved = None
            self._update_hungry(peer, p)
        self._wanted_gen += 1
        self._flight_gen += 1
        return RefreshSources()

    def poll(self, now: float) -> list[DownloadAction[PeerT]]:
        """Fill every peer's pipeline: return the new :class:`Request` actions (and the
        :class:`Cancel` of a request moved off a slow peer).

        First, a request waiting on a peer more than 4x as slow as the median moves
        to a faster peer that has the chunk and a free slot, when that one is expected to
        deliver it in less than half the time (Cancel, then Request). Then normal mode
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
        if self._missing == 0:
            return self._start_verifying()
        actions: list[DownloadAction[PeerT]] = []
        self._unpin(now, actions)  # first: a faster peer's free slot goes to those
        for peer in list(self._hungry):
            p = self._peers[peer]
            mark = (self._wanted_gen, p.adv_gen)
            if p.starved != mark:
                free = self._cap(p) - len(p.requests)
                if self._pick_rarest(peer, p, free, now, actions) < free:
                    p.starved = mark
        if self._flight.holders and self._no_fresh_chunks():
            for peer in list(self._hungry):
                p = self._peers[peer]
                if p.eg_starved != (self._flight_gen, self._wanted_gen, p.adv_gen):
                    free = self._cap(p) - len(p.requests)
                    if self._pick_endgame(peer, p, free, now, actions) < free:
                        p.eg_starved = (self._flight_gen, self._wanted_gen, p.adv_gen)
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

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise RemoteProtocolError(f"chunk index {index} out of range 0..{self._n - 1}")

    def _start_verifying(self) -> list[DownloadAction[PeerT]]:
        self._transition(DownloadState.VERIFYING)
        actions = self._cancel_all()
        actions.append(VerifyPackage())
        return actions

    def _cancel_all(self) -> list[DownloadAction[PeerT]]:
        actions: list[DownloadAction[PeerT]] = [
            Cancel(peer, index) for peer, index in self._flight.clear()
        ]
        for peer, p in self._peers.items():
            p.requests.clear()
            self._update_hungry(peer, p)
        return actions

    def _add_peer(self, peer: PeerT) -> Source:
        p = Source(self._n, self._depth)
        self._peers[peer] = p
        self._hungry[peer] = None
        return p

    def _drop_peer(self, peer: PeerT) -> None:
        p = self._peers.pop(peer, None)
        if p is None:
            return
        self._avail.remove(p.bits)
        for index, rid in list(p.requests.items()):
            self._forget_request(peer, p, index, rid, freed=True)
            self._release_if_unowned(index)
        self._hungry.pop(peer, None)
        if p.svc is not None:
            self._best_svc = median_pace(self._peers.values())
        # Exclusions that this peer made possible may lapse: re-examine everyone.
        self._wanted_gen += 1

    def _ban(self, peer: PeerT, reason: str) -> list[DownloadAction[PeerT]]:
        self._drop_peer(peer)
        self._banned.add(peer)
        return [Ban(peer, reason)]

    def _issue(self, peer: PeerT, p: Source, index: int, now: float) -> Request[PeerT]:
        rid, first = self._flight.add(peer, index, now)
        p.requests[index] = rid
        if first:  # a new chunk in flight: a new endgame candidate for others
            self._wanted[index] = 0
            self._flight_gen += 1
        self._update_hungry(peer, p)
        return Request(peer, index)

    def _forget_request(
        self, peer: PeerT, p: Source, index: int, rid: int, *, freed: bool = False
    ) -> None:
        """Remove one request from the books (the chunk's fate is decided by the caller).

        ``freed``: the request ended without the chunk, so if other copies are still in
        flight a copy slot opened and endgame candidates may have grown.
        """
        del p.requests[index]
        if self._flight.remove(peer, index, rid) and freed:
            self._flight_gen += 1
        self._update_hungry(peer, p)

    def _update_hungry(self, peer: PeerT, p: Source) -> None:
        if len(p.requests) < self._cap(p):
            self._hungry[peer] = None
        else:
            self._hungry.pop(peer, None)

    def _release_if_unowned(self, index: int) -> None:
        """After a request ended without this chunk: make it wanted if nobody else has it
        in flight and it is neither written nor being written."""
        if (
            index not in self._flight.holders
            and not self._have[index]
            and not self._writing[index]
            and not self._wanted[index]
        ):
            self._wanted[index] = 1
            self._wanted_gen += 1

    def _excluded(self, peer: PeerT, index: int) -> bool:
        """Whether ``peer`` timed out on ``index`` and another live peer could serve it."""
        ex = self._timed_out.get(index)
        if not ex or peer not in ex:
            return False
        return any(q.bits[index] for k, q in self._peers.items() if k not in ex)

    def _no_fresh_chunks(self) -> bool:
        # Endgame starts when every missing chunk is in flight (or being written). A chunk
        # that no peer has yet blocks it: early in a swarm most chunks are nowhere yet,
        # and duplicate requests then would waste the uploads the swarm lives on.
        return not self._wanted.any()

    def _pick_rarest(
        self, peer: PeerT, p: Source, free: int, now: float, out: list[DownloadAction[PeerT]]
    ) -> int:
        picked = self._avail.pick_rarest(
            p.bits & self._wanted, free, self._rng, lambda i: not self._excluded(peer, i)
        )
        out.extend(self._issue(peer, p, i, now) for i in picked)
        return len(picked)

    def _pick_endgame(
        self, peer: PeerT, p: Source, free: int, now: float, out: list[DownloadAction[PeerT]]
    ) -> int:
        picked = endgame_picks(
            peer,
            p,
            free,
            self._flight.holders,
            self._peers,
            copies=self._endgame_copies,
            median=self._best_svc,
            excluded=self._excluded,
            rng=self._rng,
        )
        out.extend(self._issue(peer, p, i, now) for i in picked)
        return len(picked)

    def _cap(self, p: Source) -> int:
        return pipeline_cap(p, self._best_svc, self._depth)

    def _unpin(self, now: float, out: list[DownloadAction[PeerT]]) -> None:
        """Move requests waiting on a slow peer to a faster one (see ``move_off_slow``)."""

        def move(peer: PeerT, p: Source, index: int, q_peer: PeerT, q: Source) -> None:
            self._forget_request(peer, p, index, p.requests[index])
            out.append(Cancel(peer, index))
            out.append(self._issue(q_peer, q, index, now))

        move_off_slow(self._peers, self._best_svc, self._depth, self._excluded, move)
