"""Trust policy: whether to relay an announcement, and whether to act on it.

Pure functions over one ``now``. The order of checks is fixed (python-tuf
style): form, signatures, trusted keys and threshold, validity length
(``expires - created`` at most ``TrustConfig.max_validity``), expiry, then
freshness against the newest announcement seen for the channel. The act
decision adds the node's own situation: installed version, quarantine,
min_version, rollout.

Each decision is a :class:`Decision`: ``ok`` or a named reason from
:data:`REASONS`. "Same announcement again" is the quiet reason ``duplicate``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import blake3
import nacl.exceptions
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.versions import is_newer, version_key

__all__ = [
    "CLOCK_SKEW",
    "REASONS",
    "Decision",
    "TrustConfig",
    "act_decision",
    "check_signers",
    "in_rollout",
    "is_newer",
    "relay_decision",
    "valid_now",
    "version_key",
]

CLOCK_SKEW = 300.0
REASONS = frozenset(
    {
        "malformed",
        "untrusted",
        "bad_signature",
        "below_threshold",
        "expired",
        "not_yet_valid",
        "validity_too_long",
        "not_newest",
        "duplicate",
        "equivocation",
        "not_newer",
        "quarantined",
        "below_min_version",
        "outside_rollout",
        "yanked",
        "rollout_aborted",
    }
)


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str = ""
    replaces: bool = False  # same package, later ``created``: replaces the stored one

    def __post_init__(self) -> None:
        if not self.ok and self.reason not in REASONS:
            raise ValueError(f"unknown refusal reason {self.reason!r}")


ACCEPT = Decision(True)


@dataclass(frozen=True)
class TrustConfig:
    trusted_keys: frozenset[bytes]
    threshold: int = 1
    clock_skew: float = CLOCK_SKEW
    # Longest ``expires - created`` accepted (``Limits.max_validity``: why it is capped).
    max_validity: float = DEFAULT_LIMITS.max_validity

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("trust threshold must be at least 1")
        if self.max_validity <= 0:
            raise ValueError("max_validity must be positive")


def in_rollout(node_id: bytes, version: str, rollout: int) -> bool:
    """Rollout membership: first 8 bytes of BLAKE3(node id || version) / 2^64 < rollout%."""
    if rollout >= 100:
        return True
    digest = blake3.blake3(node_id + version.encode()).digest()
    # x / 2^64 < rollout / 100, in exact integer arithmetic (floats round near the edge).
    return int.from_bytes(digest[:8], "big") * 100 < rollout * 2**64


def _check_signatures(ann: Announcement, trust: TrustConfig) -> Decision:
    signers = {key for key, _ in ann.signatures}
    trusted_claimed = signers & trust.trusted_keys
    if not trusted_claimed:
        return Decision(False, "untrusted")
    return _threshold(ann.valid_signers() & trust.trusted_keys, trust)


def check_signers(
    signatures: Collection[tuple[bytes, bytes]], message: bytes, trust: TrustConfig
) -> Decision:
    """The announcement signature rules for any signed statement (a yank): at least
    ``threshold`` distinct trusted keys whose signature over ``message`` verifies."""
    if not {key for key, _ in signatures} & trust.trusted_keys:
        return Decision(False, "untrusted")
    good: set[bytes] = set()
    for key, sig in signatures:
        if key in trust.trusted_keys:
            try:
                nacl.signing.VerifyKey(key).verify(message, sig)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
                continue
            good.add(key)
    return _threshold(frozenset(good), trust)


def _threshold(valid: frozenset[bytes], trust: TrustConfig) -> Decision:
    if not valid:
        return Decision(False, "bad_signature")
    if len(valid) < trust.threshold:
        return Decision(False, "below_threshold")
    return ACCEPT


def valid_now(ann: Announcement, trust: TrustConfig, now: float) -> Decision:
    """Signatures, threshold, validity length and expiry under ``trust`` at ``now``.

    The part of the relay decision that does not depend on other announcements:
    what passed it once may fail it later (a key removed from the trust set, an
    expiry reached), so the agent asks again before it installs.
    """
    verdict = _check_signatures(ann, trust)
    if not verdict.ok:
        return verdict
    body = ann.body
    if body.expires - body.created > trust.max_validity:
        return Decision(False, "validity_too_long")
    if now > body.expires + trust.clock_skew:
        return Decision(False, "expired")
    if body.created > now + trust.clock_skew:
        return Decision(False, "not_yet_valid")
    return ACCEPT


def relay_decision(
    ann: Announcement, trust: TrustConfig, now: float, newest: Announcement | None
) -> Decision:
    """Relay ``ann``? ``newest`` is the newest accepted announcement for its channel."""
    verdict = valid_now(ann, trust, now)
    if not verdict.ok:
        return verdict
    body = ann.body
    if newest is None:
        return ACCEPT
    old = newest.body
    if old.channel != body.channel:
        raise ValueError("newest announcement is for another channel")
    if ann.body_bytes == newest.body_bytes:
        return Decision(False, "duplicate")
    new_v, old_v = version_key(body.version), version_key(old.version)
    if new_v > old_v:
        return ACCEPT
    if new_v < old_v:
        return Decision(False, "not_newest")
    # One version, one package: a different package id, or the same id with a different
    # size or chunk table, means the authority signed two conflicting statements.
    if (body.package_id, body.size, body.table_root) != (old.package_id, old.size, old.table_root):
        return Decision(False, "equivocation")
    if body.created > old.created:
        return Decision(True, replaces=True)
    return Decision(False, "not_newest")


def act_decision(
    ann: Announcement,
    *,
    node_id: bytes,
    installed_version: str | None,
    quarantined: Collection[str],
    now: float | None = None,
) -> Decision:
    """Act on (download and apply) an announcement that already passed relay.

    With ``now``, a staged rollout (format 2) uses the stage open at ``now``;
    without it, the announcement's plain ``rollout``.
    """
    body = ann.body
    if not is_newer(body.version, installed_version):
        return Decision(False, "not_newer")
    if body.version in quarantined or any(
        version_key(q) == version_key(body.version) for q in quarantined
    ):
        return Decision(False, "quarantined")
    if (
        body.min_version is not None
        and installed_version is not None
        and version_key(installed_version) < version_key(body.min_version)
    ):
        return Decision(False, "below_min_version")
    rollout = body.rollout if now is None else body.rollout_at(now)
    if not in_rollout(node_id, body.version, rollout):
        return Decision(False, "outside_rollout")
    return ACCEPT
