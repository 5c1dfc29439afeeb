"""Reason codes: the one list of why something was refused, failed or rolled back.

Every ``reason`` that reaches an event, ``status`` or a state file is one of
these short snake_case codes; what happened in particular (an errno text, a
path, the versions involved) goes in a separate ``detail`` field, never into
the code. :class:`Reason` is a ``StrEnum``: a member *is* its string value, so
events and state files carry exactly the strings they always did (outside
tools read ``reason``; docs/operations.md lists them per event).

Used by the trust policy (relay and act decisions), the applicator's decisions
(:mod:`p2pupdate.core.apply`), the retry rules (:mod:`p2pupdate.core.retry`),
the self-update decisions (:mod:`p2pupdate.core.selfupdate`), fleet membership
(:mod:`p2pupdate.core.fleet`), connection admission (:mod:`p2pupdate.core.admission`),
the node and the agent.
"""

from __future__ import annotations

import enum

__all__ = ["ACT_REASONS", "RELAY_REASONS", "Reason", "split_reason"]


class Reason(enum.StrEnum):
    """A reason code (see the module doc)."""

    # -- relay: is the announcement itself acceptable (core.policy.relay_decision)
    MALFORMED = "malformed"
    UNTRUSTED = "untrusted"
    BAD_SIGNATURE = "bad_signature"
    BELOW_THRESHOLD = "below_threshold"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    VALIDITY_TOO_LONG = "validity_too_long"
    NOT_NEWEST = "not_newest"
    DUPLICATE = "duplicate"
    EQUIVOCATION = "equivocation"
    # -- act: may this node install it (core.policy.act_decision)
    BAD_VERSION = "bad_version"
    QUARANTINED = "quarantined"
    TOO_LARGE = "too_large"
    NOT_NEWER = "not_newer"
    BELOW_MIN_VERSION = "below_min_version"
    OUTSIDE_ROLLOUT = "outside_rollout"
    YANKED = "yanked"  # revoked by a signed yank (core.yank)
    ROLLOUT_ABORTED = "rollout_aborted"  # the release's abort rule fired (core.reports)
    # -- download (the agent's download_failed)
    DISK_FULL = "disk_full"
    DISK_ERROR = "disk_error"
    STORE_ERROR = "store_error"
    ERROR = "error"  # a store or state file error during a download (historic name)
    NO_SOURCES = "no_sources"
    PACKAGE_HASH_MISMATCH = "package_hash_mismatch"
    # -- install (the applicator's update_refused / update_failed / rolled_back)
    HASH_MISMATCH = "hash_mismatch"
    BAD_ARCHIVE = "bad_archive"
    HEALTH_CHECK_FAILED = "health_check_failed"
    HEALTH_TIMEOUT = "health_timeout"
    NOT_CONFIRMED = "not_confirmed"
    RESTART_FAILED = "restart_failed"
    # The restart command could not be started at all (missing, not executable): a fault
    # of the host, not of the release. Rolled back, never quarantined; tried again later.
    RESTART_NOT_STARTED = "restart_not_started"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    INTERRUPTED = "interrupted"
    ROLLBACK_FAILED = "rollback_failed"
    INSTALL_FAILED = "install_failed"
    PACKAGE_MISSING = "package_missing"
    STATE_ERROR = "state_error"
    NO_BACKUP = "no_backup"
    OPERATOR_ROLLBACK = "operator_rollback"
    # -- self-update: the installing node's rollback of a release (core.selfupdate)
    FAILED_ON_OTHERS = "failed_on_others"
    NOT_SEEN_HEALTHY = "not_seen_healthy"
    # -- fleet membership: why a peer is not a member (core.fleet; peer_refused), or
    # why a revocation list was not taken (besides BAD_SIGNATURE, EXPIRED, NOT_NEWER)
    NO_ADMISSION = "no_admission"
    MALFORMED_ADMISSION = "malformed_admission"
    FOREIGN_FLEET = "foreign_fleet"
    WRONG_NODE = "wrong_node"
    REVOKED = "revoked"
    # -- connections: why the node refused one (core.admission; the node's log lines)
    IP_BANNED = "ip_banned"
    HANDSHAKES_FULL = "handshakes_full"
    HANDSHAKES_PER_IP = "handshakes_per_ip"
    HANDSHAKES_PER_NETGROUP = "handshakes_per_netgroup"
    INBOUND_FULL = "inbound_full"
    CONNECTIONS_PER_IP = "connections_per_ip"
    CONNECTIONS_PER_NETGROUP = "connections_per_netgroup"
    # -- bans: why a peer (peer_banned) or an IP (ip_banned) was banned; the event's
    # ``detail`` says more (the last protocol error, in words)
    PROTOCOL_ERRORS = "protocol_errors"
    BAD_CHUNK = "bad_chunk"
    BAD_TABLE = "bad_table"
    FALSE_REPLICA_CLAIM = "false_replica_claim"
    # The two kinds the node's per-peer refusals are counted (throttled) and summarised
    # under: a connection refused for one of the reasons above, a peer not a member.
    REFUSED = "refused"
    NOT_MEMBER = "not_member"


RELAY_REASONS = frozenset(
    {
        Reason.MALFORMED,
        Reason.UNTRUSTED,
        Reason.BAD_SIGNATURE,
        Reason.BELOW_THRESHOLD,
        Reason.EXPIRED,
        Reason.NOT_YET_VALID,
        Reason.VALIDITY_TOO_LONG,
        Reason.NOT_NEWEST,
        Reason.DUPLICATE,
        Reason.EQUIVOCATION,
    }
)
ACT_REASONS = frozenset(
    {
        Reason.BAD_VERSION,
        Reason.QUARANTINED,
        Reason.TOO_LARGE,
        Reason.NOT_NEWER,
        Reason.BELOW_MIN_VERSION,
        Reason.OUTSIDE_ROLLOUT,
        Reason.YANKED,
        Reason.ROLLOUT_ABORTED,
    }
)


def split_reason(text: str) -> tuple[str, str]:
    """``"disk_full: no room in /x"`` -> ``("disk_full", "no room in /x")``.

    For the boundary with code that still returns one string (a download's
    failure from the swarm); spaces in the code count as underscores.
    """
    code, _, detail = text.partition(":")
    return code.strip().replace(" ", "_"), detail.strip()
