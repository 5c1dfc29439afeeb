"""Trust policy: whether to relay an announcement, and whether to act on it.

Pure functions over one ``now``. The order of checks is fixed (python-tuf
style): form, signatures, trusted keys and threshold, validity length
(``expires - created`` at most ``TrustConfig.max_validity``), expiry, then
freshness against the newest announcement seen for the channel. The act
decision adds the node's own situation: installed version, quarantine,
min_version, rollout.

Each decision is a :class:`Decision`: ``ok``, or a reason code from
:data:`REASONS` (:class:`~p2pupdate.core.reasons.Reason`) with a separate
``detail``. "Same announcement again" is the quiet reason ``duplicate``.

:func:`act_decision` (over an announcement) and :func:`install_decision` (over
its fields) are the node's one act gate: the agent asks it before it downloads
or installs for a target, the applicator asks it under its per-channel lock
before it replaces anything, and the self-updater asks it for the node's own
release. Each decision point asks it once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import blake3
import nacl.exceptions
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS
from p2pupdate.core.announcement import Announcement
from p2pupdate.core.reasons import ACT_REASONS, RELAY_REASONS, Reason
from p2pupdate.core.versions import is_newer, parse_version, version_in, version_key

__all__ = [
    "CLOCK_SKEW",
    "REASONS",
    "Decision",
    "TrustConfig",
    "act_decision",
    "check_signers",
    "in_rollout",
    "install_decision",
    "is_newer",
    "relay_decision",
    "valid_now",
    "version_key",
]

CLOCK_SKEW = DEFAULT_LIMITS.clock_skew  # Limits says why
REASONS: frozenset[str] = RELAY_REASONS | ACT_REASONS


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str = ""
    replaces: bool = False  # same package, later ``created``: replaces the stored one
    detail: str = ""  # what in particular (versions, sizes); never part of ``reason``

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
        return Decision(False, Reason.UNTRUSTED)
    return _threshold(ann.valid_signers() & trust.trusted_keys, trust)


def check_signers(
    signatures: Collection[tuple[bytes, bytes]], message: bytes, trust: TrustConfig
) -> Decision:
    """The announcement signature rules for any signed statement (a yank): at least
    ``threshold`` distinct trusted keys whose signature over ``message`` verifies."""
    if not {key for key, _ in signatures} & trust.trusted_keys:
        return Decision(False, Reason.UNTRUSTED)
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
        return Decision(False, Reason.BAD_SIGNATURE)
    if len(valid) < trust.threshold:
        return Decision(False, Reason.BELOW_THRESHOLD)
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
        return Decision(False, Reason.VALIDITY_TOO_LONG)
    if now > body.expires + trust.clock_skew:
        return Decision(False, Reason.EXPIRED)
    if body.created > now + trust.clock_skew:
        return Decision(False, Reason.NOT_YET_VALID)
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
        return Decision(False, Reason.DUPLICATE)
    new_v, old_v = version_key(body.version), version_key(old.version)
    if new_v > old_v:
        return ACCEPT
    if new_v < old_v:
        return Decision(False, Reason.NOT_NEWEST)
    # One version, one package: a different package id, or the same id with a different
    # size or chunk table, means the authority signed two conflicting statements.
    if (body.package_id, body.size, body.table_root) != (old.package_id, old.size, old.table_root):
        return Decision(False, Reason.EQUIVOCATION)
    if body.created > old.created:
        return Decision(True, replaces=True)
    return Decision(False, Reason.NOT_NEWEST)


def act_decision(
    ann: Announcement,
    *,
    node_id: bytes,
    installed_version: str | None,
    quarantined: Collection[str],
    max_size: int | None = None,
    now: float | None = None,
) -> Decision:
    """Act on (download and apply) an announcement that already passed relay.

    See :func:`install_decision`; ``max_size`` None skips the size check. With
    ``now``, a staged rollout (format 2) uses the stage open at ``now``; without
    it, the announcement's plain ``rollout``.
    """
    body = ann.body
    return install_decision(
        body.version,
        size=body.size,
        installed_version=installed_version,
        quarantined=quarantined,
        max_size=max_size,
        min_version=body.min_version,
        rollout=body.rollout if now is None else body.rollout_at(now),
        node_id=node_id,
    )


def install_decision(
    version: str,
    *,
    size: int,
    installed_version: str | None,
    quarantined: Collection[str],
    max_size: int | None = None,
    min_version: str | None = None,
    rollout: int = 100,
    node_id: bytes = b"",
    explicit_rollback: bool = False,
) -> Decision:
    """The act gate: may ``version`` (``size`` bytes) replace ``installed_version``?

    Checks, in this order (the first that fails names the reason):
    ``bad_version``, ``quarantined`` (build metadata ignored), ``too_large``
    (when ``max_size`` is given), ``not_newer``, ``below_min_version`` (an
    installed version that is unknown or not semver is not known to be below)
    and ``outside_rollout``. An explicit rollback (an operator asked for this
    version) skips the last three; it never skips quarantine.
    """
    try:
        parse_version(version)
    except ValueError as exc:
        return Decision(False, Reason.BAD_VERSION, detail=str(exc))
    if version_in(version, quarantined):
        return Decision(False, Reason.QUARANTINED, detail=f"{version} is quarantined")
    if max_size is not None and (size < 0 or size > max_size):
        return Decision(False, Reason.TOO_LARGE, detail=f"{size} bytes, limit {max_size}")
    if explicit_rollback:
        return ACCEPT
    if not is_newer(version, installed_version):
        return Decision(
            False, Reason.NOT_NEWER, detail=f"{version} is not newer than {installed_version}"
        )
    if min_version is not None and installed_version is not None:
        try:
            below = parse_version(installed_version).compare(parse_version(min_version)) < 0
        except ValueError:
            below = False  # unknown installed version or bad min_version: not known to be below
        if below:
            return Decision(
                False,
                Reason.BELOW_MIN_VERSION,
                detail=f"installed {installed_version} is below min_version {min_version}",
            )
    if not in_rollout(node_id, version, rollout):
        return Decision(False, Reason.OUTSIDE_ROLLOUT, detail=f"rollout {rollout}%")
    return ACCEPT
