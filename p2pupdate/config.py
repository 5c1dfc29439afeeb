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
    # A download keeps about this many seconds of a source's measured service time in
    # flight to it (never fewer than 2 requests, never more than the pipeline depth). A
    # queue must cover the round trip, but every request waiting at a source is a chunk
    # promised to that holder: at 4 MiB/s shared by 9 downloaders (7 chunks/s each) the
    # fixed depth of 16 queued 2.3 s per hop, so a fresh chunk took that long to be
    # passed on and a second holder with idle upload was never asked. 0.3 s is ten
    # loopback round trips on a loaded machine and leaves fast links their full depth
    # (16 chunks of 64 KiB in 0.3 s is 3.3 MiB/s per link).
    pipeline_seconds: float = 0.3
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
    # A node with no connected peer for this long logs one WARNING naming the peers it
    # cannot reach: long enough to ride out a restart of its neighbours, short enough
    # that an operator sees a firewall or typo on the first minute.
    isolation_warning: float = 60.0
    # Yanks (signed revocations) kept: each needs trusted signatures, so only the
    # authority makes them; 1000 is years of revoked releases and a few hundred KiB.
    max_yanks: int = 1000
    # Longest reason text carried in a report (the rest is cut): the record must fit 1 KiB.
    max_report_reason: int = 64

    # -- per-peer state (docs/security.md lists each with the attack it stops) ------
    # Everything below is something a remote peer can make the node hold. Each is
    # capped here and freed when the peer that caused it goes.
    # BITFIELDs for packages we have no announcement for yet (kept so a download can
    # start at once when the announcement arrives). At most this many packages ...
    max_pending_bitfield_packages: int = 64
    # ... and at most this many of them per peer. A bitfield is at most 8 KiB (65536
    # chunks), so the whole pending set is bounded by connections x this x 8 KiB
    # (64 x 4 x 8 KiB = 2 MiB), and it is dropped when the peer disconnects.
    max_pending_bitfields_per_peer: int = 4
    # Chunk REQUESTs one peer may have queued with us; more are REJECTed. A CANCEL is
    # recorded only for a request in this queue, so the cancel set is bounded too.
    max_upload_queue: int = 32
    # Labels (host:port) of peers that have gone, kept only while a download still
    # names them as a source: the download_complete ``sources`` field.
    max_peer_labels: int = 1024
    # Strike counters (per observed IP and per proven node id). Entries decay with
    # the ban period; when full the oldest is forgotten (a strike is a heuristic).
    max_strike_entries: int = 4096
    # Protocol errors before a proven node id is banned, and (from any number of
    # node ids) before the observed IP is banned - never on a shared host.
    strikes_to_ban: int = 3
    ip_strikes_to_ban: int = 12
    # Active bans (node ids, addresses and IPs). One ban costs the attacker a key
    # and three protocol errors; when full, the ban ending soonest is dropped.
    max_bans: int = 4096
    # Our own addresses learned by dialling ourselves (aliases of 127.0.0.1 etc.):
    # a PEX flood of aliases must not grow this set without end.
    max_self_addrs: int = 64

    # -- connection admission (eclipse and exhaustion; Bitcoin Core's model) ------
    # Connections from one IP address, and from one netgroup (IPv4 /24, IPv6 /64):
    # one host or one cheap subnet cannot fill the node's slots. Loopback peers are
    # exempt by default (the simulation runs every node on 127.0.0.1); see NodeOptions.
    # The netgroup caps apply to public addresses only: on a private network a /24 of
    # peers is the fleet itself (core/admission.py).
    max_conns_per_ip: int = 4
    max_conns_per_netgroup: int = 8
    # Handshakes in progress from one IP / netgroup: 16 silent sockets from one host
    # cannot hold every handshake slot.
    max_handshakes_per_ip: int = 2
    max_handshakes_per_netgroup: int = 4
    # Connection slots only outbound dials may use: even with every inbound slot
    # taken, the node keeps dialling the peers it chose (configured and known-good).
    reserved_outbound: int = 8
    # Inbound peers protected from eviction for each useful trait (recently sent a
    # new announcement or verified chunks; longest connected), as in Bitcoin Core's
    # AttemptToEvictConnection. The rest are candidates; one from the largest
    # netgroup is evicted to make room.
    evict_protect_useful: int = 4
    evict_protect_oldest: int = 4

    # -- membership (PEX) -------------------------------------------------------------
    # Known addresses in all, and how many one source netgroup may have added: a peer
    # that floods PEERS fills only its own share, and addresses that have worked are
    # never evicted to make room.
    max_known_addrs: int = 1024
    max_addrs_per_source: int = 64
    # A node below its target connections with no known address left to dial sends its
    # PEERS to every peer (a pull: they answer with theirs) after this long, the wait
    # doubling up to the node's pex_interval while it stays short. When a whole fleet
    # starts at once, the PEERS a node gets at connect time were sampled before its peers
    # knew anyone, so without a pull it could keep its few bootstrap peers until the next
    # periodic PEX (10-30 s later): in a 10-node benchmark such a node, with 5 peers
    # against 8-9, finished last, 0.5 s after the others.
    pex_pull_interval: float = 0.5
    # A PEERS is answered with ours unless we sent that peer one this recently: a pull gets
    # an answer, the exchange at connect time (both sides send) does not ping-pong.
    pex_reply_interval: float = 1.0

    # -- fleet membership (docs/security.md "Fleet membership") ---------------------
    # An admission certificate is two keys, two times and a signature (~150 bytes);
    # 512 bytes bounds the signature-checking work a handshake can cause.
    max_admission: int = 512
    # Node ids in one revocation list: 1024 x 32 bytes fits one frame with room to
    # spare; a fleet that must revoke more than that rotates its fleet key instead.
    max_revoked: int = 1024
    # Members remembered (node id -> admission expiry) to judge relayed reports.
    max_fleet_members_seen: int = 4096
    # ``status`` warns this many days before the node's admission expires.
    admission_warn_days: int = 7

    # -- logs ----------------------------------------------------------------------------
    # Repeated per-peer events and log lines: the first few per window pass, the rest
    # are counted and summarised once per window (a flood cannot fill the disk).
    log_burst: int = 10
    log_window: float = 60.0
    # Distinct (event, peer) keys tracked by the throttle; past this, all further keys
    # share one bucket per event name.
    max_log_keys: int = 256

    # -- messages and gossip ---------------------------------------------------------
    # PEERS and INVENTORY list lengths, chosen so that every valid message fits one frame
    # even at the longest field sizes: 200 peers of 253-byte host names, 200 channels of
    # 259 bytes with their ids.
    max_peers_per_message: int = 200
    max_inventory: int = 200
    # Highest GET_TABLE / TABLE page number (page -1 asks for the page-hash list). A
    # table of the largest package has 32 pages; the wire format allows up to 1024.
    max_table_page: int = 1023
    # Seen-set size: ids of every announcement looked at (good or bad), so a flood of
    # distinct junk costs one verification each and memory stays bounded.
    max_seen: int = 8192
    # Outbox depth per connection: small control messages; a peer that lets this many
    # pile up is too slow to keep and is dropped.
    outbox_size: int = 2048
    # Clock difference tolerated between an announcement's creator and us (seconds) for
    # expiry and not-yet-valid: NTP-less hosts drift minutes, not hours.
    clock_skew: float = 300.0

    # -- control socket ----------------------------------------------------------------
    # A request is a small JSON object (an op and a channel); 64 KiB is generous.
    max_control_request: int = 64 * KiB
    # A status answer lists cache entries and channels; 16 MiB bounds what a client
    # buffers (and what a status snapshot file may be).
    max_control_response: int = 16 * MiB
    # At most this many control connections at once; more get a "busy" answer.
    max_control_clients: int = 32

    # -- files read back from disk (checked as if they came from the network) -----------
    # A node key file is 64 hex digits and a newline; 4 KiB means it is not one.
    max_keyfile: int = 4096
    # A config file is a few dozen lines; 1 MiB means someone pointed --config at the
    # wrong file.
    max_config_file: int = 1 * MiB
    # A channel's apply state is a few hundred bytes; 1 MiB leaves room for a long
    # quarantine list while bounding what a corrupt file can make us read.
    max_apply_state_file: int = 1 * MiB
    # A download's bitmap file: one bit per chunk (8 KiB at most) plus a small header.
    max_bitmap_file: int = 64 * KiB
    # A managed install's state files (quarantine, boot records, registrations) are
    # tiny. The stable launcher (stdlib only, it cannot import this) keeps the same
    # number in selfupdate/launcher.py; a test checks they agree.
    max_selfupdate_state: int = 256 * KiB

    # -- local chunk reuse ------------------------------------------------------------------
    # Chunks of local files (installed target, backups, older cached packages) hashed and
    # remembered to find a new package's unchanged chunks without fetching them. One entry
    # is a 32-byte hash plus where it lies (~150 bytes in Python): 262144 entries are
    # 16 GiB of local files indexed in about 40 MiB; files past the limit are not read.
    max_reuse_index_chunks: int = 262_144
    # Files of a directory target's release looked at, at most (each a stat and a hash).
    max_reuse_files: int = 100_000

    # -- installing -----------------------------------------------------------------------
    # A directory target's archive with more members than this is refused (inode
    # exhaustion).
    max_archive_members: int = 200_000
    # Symbolic links followed while resolving one link target, as the Linux kernel allows
    # (ELOOP): bounds the work of hostile chains and refuses loops.
    max_link_hops: int = 40
    # Health-check output goes into one JSON event line: keep it short.
    health_output_limit: int = 4096
    # A self-update release (wheelhouse of p2pupdate and its dependencies) is ~6 MiB;
    # 512 MiB means it is not one.
    max_release_size: int = 512 * MiB
    # A wheelhouse holds a few dozen wheels; more members than this is not a release.
    max_release_members: int = 1000
    # A release manifest is a few KiB.
    max_release_manifest: int = 1 * MiB


DEFAULT_LIMITS = Limits()
