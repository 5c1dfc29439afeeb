"""The download's states and the actions it hands the shell.

What it does
    Names the states of one package download (:class:`DownloadState`) with the table of
    legal changes (:data:`TRANSITIONS`), and the frozen actions :class:`Downloader` returns
    (:data:`DownloadAction`): what the shell must send, write, ban, announce or report.
    Actions compare by value, so tests assert them exactly.

What it does not do
    Decide anything: the state machine is :mod:`p2pupdate.core.download.downloader`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeAlias, TypeVar

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
    "PeerT",
    "RefreshSources",
    "VerifyPackage",
    "WriteChunk",
]

PeerT = TypeVar("PeerT", bound=Hashable)


class DownloadState(Enum):
    """Where a download is. FAILED is sticky; COMPLETE is final."""

    PENDING = "pending"  # created, nothing requested or received yet
    DOWNLOADING = "downloading"  # at least one chunk requested or received
    VERIFYING = "verifying"  # every chunk written; the shell hashes the whole file
    COMPLETE = "complete"  # the whole-file hash matched the package id
    FAILED = "failed"  # see Downloader.failure_reason


TRANSITIONS: Mapping[DownloadState, frozenset[DownloadState]] = {
    DownloadState.PENDING: frozenset(
        {DownloadState.DOWNLOADING, DownloadState.VERIFYING, DownloadState.FAILED}
    ),
    DownloadState.DOWNLOADING: frozenset({DownloadState.VERIFYING, DownloadState.FAILED}),
    DownloadState.VERIFYING: frozenset({DownloadState.COMPLETE, DownloadState.FAILED}),
    DownloadState.COMPLETE: frozenset(),
    DownloadState.FAILED: frozenset(),
}
"""Every legal state change; anything else raises LocalProtocolError."""


@dataclass(frozen=True)
class AskChunk(Generic[PeerT]):
    """Send REQUEST(index) to ``peer`` (named apart from the wire message
    :class:`p2pupdate.core.messages.Request` it becomes)."""

    peer: PeerT
    index: int


@dataclass(frozen=True)
class CancelAsk(Generic[PeerT]):
    """Send CANCEL(index) to ``peer``: we no longer want it from there (a copy arrived
    elsewhere, the request timed out, or the download ended). Named apart from the wire
    message :class:`p2pupdate.core.messages.Cancel` it becomes."""

    peer: PeerT
    index: int


@dataclass(frozen=True)
class WriteChunk:
    """Write ``data`` (already verified) at ``index * chunk_size`` in the partial file, then
    call ``on_chunk_written(index)`` (or ``on_write_failed(index)``)."""

    index: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Ban(Generic[PeerT]):
    """Ban ``peer`` and close its connection. The downloader has already dropped it; call
    ``on_peer_gone(peer)`` once the connection is closed."""

    peer: PeerT
    reason: str


@dataclass(frozen=True)
class AnnounceHave:
    """Tell every connected peer we now serve these chunks (HAVE)."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class VerifyPackage:
    """Every chunk is written: hash the whole file and call ``on_package_verified(ok)``."""


@dataclass(frozen=True)
class Completed:
    """The package is complete and verified: move it into the cache."""


@dataclass(frozen=True)
class RefreshSources:
    """No chunk arrived for ``stall_timeout`` while the download is incomplete: find out
    again who has what. Tell the downloader again what every connected peer advertised
    (``on_peer_bitfield``: claims forgotten on REJECT come back) and ask every connected
    peer for its current bitfield. The downloader has already forgiven earlier timeouts,
    so what timed out is asked of anyone who has it, the slow peer included."""


@dataclass(frozen=True)
class DownloadFailed:
    """The download failed for ``reason``; it will do nothing more."""

    reason: str


DownloadAction: TypeAlias = (
    AskChunk[PeerT]
    | CancelAsk[PeerT]
    | Ban[PeerT]
    | WriteChunk
    | AnnounceHave
    | RefreshSources
    | VerifyPackage
    | Completed
    | DownloadFailed
)
