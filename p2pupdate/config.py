"""Hard limits and node settings, as frozen dataclasses.

:class:`Limits` holds every hard cap on input, each with the reason it has the
value it has. The core takes these as parameters so tests can shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    # Chunks are exactly 64 KiB: the unit of transfer, hashing and bitmap bits.
    chunk_size: int = 64 * KiB
    # 2048 hashes of 32 bytes = 64 KiB: one table page fits one frame.
    table_page_entries: int = 2048
    # Largest package we agree to move or install (4 GiB = 65536 chunks = 32 pages).
    max_package_size: int = 4 * GiB
    # Frame body: a CHUNK (64 KiB payload) plus its msgpack header, nothing bigger.
    max_frame: int = 64 * KiB + 256
    # An announcement is small by design; 1 KiB bounds signature-checking work.
    max_announcement: int = 1024
    # Channel names and agent strings end up in logs and paths: short.
    max_str: int = 256
    # PEERS / INVENTORY / HAVE lists: enough for a fleet view, small enough to parse cheaply.
    max_list: int = 4096
    # Nesting depth of any decoded message: our messages are at most 3 deep.
    max_depth: int = 4
    # Signatures in one envelope (multi-authority release, docs/protocol.md).
    max_signatures: int = 5
    # Semver strings in announcements (docs/protocol.md: at most 64 bytes).
    max_version_len: int = 64
    # Longest validity (expires - created) of an announcement: 90 days. Without a cap, one
    # announcement signed by a key later revoked or stolen, with expires decades away, keeps
    # its channel on that version (every genuine lower-numbered release is "not newest")
    # until it expires; 90 days is three times the publish default of 30 days. A node may
    # set its own (``max_announcement_validity``).
    max_validity: int = 90 * 86400
    # Seconds without a new chunk after which an incomplete download re-examines its
    # sources (asks peers for their bitfields again, forgives timeouts). Long enough that
    # a merely slow swarm (a 64 KiB chunk takes 0.5 s at 128 KiB/s) never triggers it,
    # short enough that a download whose sources changed under it does not wait long.
    download_stall_timeout: float = 30.0
    # A BITFIELD identical to the last one from that peer asks for ours again; answered at
    # most this often per peer and package, so two stalled nodes cannot ping-pong.
    bitfield_refresh_interval: float = 5.0
    # A node report (docs/protocol.md, "Node reports") is one small signed record per node:
    # 1 KiB holds a dozen followed channels with their versions and a short reason each,
    # bounds the signature check, and keeps a heartbeat of the whole fleet cheap.
    max_report: int = 1024
    # Reports kept (one per node id): the whole fleet view for a 100,000-node fleet is at
    # most 100 MiB, and a flood of made-up node ids cannot grow memory past that.
    max_reports: int = 100_000
    # A report not renewed for this long is dropped (the node is gone); also the oldest
    # signed time a report may carry when it arrives (an older one is a replay).
    report_ttl: float = 24 * 3600.0
    # How often a node re-issues its report when nothing changed (the heartbeat): often
    # enough that `fleet` shows a dead node within minutes, rare enough that a 1000-node
    # fleet sends about 1.7 reports a second in all.
    report_interval: float = 600.0
    # Yanks (signed revocations) kept: each needs trusted signatures, so only the
    # authority makes them; 1000 is years of revoked releases and a few hundred KiB.
    max_yanks: int = 1000
    # Longest reason text carried in a report (the rest is cut): the record must fit 1 KiB.
    max_report_reason: int = 64


DEFAULT_LIMITS = Limits()
