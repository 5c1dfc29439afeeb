"""Signed announcements: canonical body encoding, envelope, signing, verification.

The body is a msgpack array in a fixed field order. msgpack has no canonical
mode, so decoding re-encodes the parsed body and rejects input whose bytes
differ: one body, one encoding. Signatures cover a domain prefix plus the body
bytes exactly as received, never a re-encoding. The announcement id is the
BLAKE3 of the body. Nothing in the envelope but the signatures is trusted.

This module checks form and signatures; what to relay or act on is
``p2pupdate.core.policy``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3
import msgpack
import nacl.exceptions
import nacl.signing
import semver

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.signedwire import signature_pairs, unpack_limited
from p2pupdate.errors import RemoteProtocolError

__all__ = [
    "CHANNEL_RE",
    "FORMAT_STAGED",
    "FORMAT_VERSION",
    "MAX_CHANNEL_LEN",
    "MAX_STAGES",
    "SIGN_DOMAIN",
    "Announcement",
    "AnnouncementBody",
    "decode_announcement",
    "sign_announcement",
    "validate_channel",
    "validate_version",
]

FORMAT_VERSION = 1
# Format 2 adds a staged-rollout schedule and an abort rule (two more body fields). A
# body without either is still written as format 1, byte for byte as before, so older
# nodes verify every announcement that does not use them.
FORMAT_STAGED = 2
MAX_STAGES = 10
SIGN_DOMAIN = b"p2pupdate/announcement/v1\x00"
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63}){0,3}$")
# The longest name CHANNEL_RE accepts: four parts of 64 characters and three slashes.
MAX_CHANNEL_LEN = 4 * 64 + 3
_BODY_FIELDS = 12
_BODY_FIELDS_V2 = 14


def validate_channel(channel: str) -> str:
    """Return ``channel`` if it is a valid channel name, else raise ValueError."""
    # fullmatch: with match(), "$" also matches before a trailing newline ("app\n").
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        raise ValueError(
            f"bad channel {channel!r} (lowercase letters, digits, . _ -, up to 4 parts split by /)"
        )
    if any(part in (".", "..") or part.startswith("..") for part in channel.split("/")):
        raise ValueError(f"bad channel {channel!r}: dot segments are not allowed")
    return channel


def validate_version(version: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return ``version`` if it is a semver string of at most 64 bytes, else ValueError."""
    if not isinstance(version, str) or len(version.encode()) > limits.max_version_len:
        raise ValueError(f"bad version {version!r}: at most {limits.max_version_len} bytes")
    if not semver.Version.is_valid(version):
        raise ValueError(f"bad version {version!r}: not a semantic version like 1.4.0")
    return version


@dataclass(frozen=True)
class AnnouncementBody:
    """The signed part of an announcement. Construction validates every field."""

    channel: str
    version: str
    package_id: bytes
    size: int
    table_root: bytes
    created: int
    expires: int
    min_version: str | None = None
    critical: bool = False
    rollout: int = 100
    chunk_size: int = DEFAULT_LIMITS.chunk_size
    format_version: int = FORMAT_VERSION
    # Format 2 only: ((percent, seconds after ``created`` it opens), ...), the first at
    # 0, and (percent, minimum attempted) for the abort rule.
    stages: tuple[tuple[int, int], ...] = ()
    abort: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.validate(DEFAULT_LIMITS)

    def validate(self, limits: Limits) -> None:
        if self.format_version not in (FORMAT_VERSION, FORMAT_STAGED):
            raise ValueError(f"unsupported announcement format {self.format_version}")
        staged = bool(self.stages) or self.abort is not None
        if staged != (self.format_version == FORMAT_STAGED):
            raise ValueError("stages and an abort rule come with format 2, and only with it")
        _validate_stages(self.stages)
        if self.abort is not None:
            a = self.abort
            if not (
                isinstance(a, tuple)
                and len(a) == 2
                and all(type(x) is int for x in a)
                and 1 <= a[0] <= 100
                and 1 <= a[1] <= 1_000_000
            ):
                raise ValueError("abort rule must be (percent 1..100, minimum 1..1000000)")
        validate_channel(self.channel)
        validate_version(self.version, limits)
        if self.min_version is not None:
            validate_version(self.min_version, limits)
        for name in ("package_id", "table_root"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")
        for name in ("size", "created", "expires", "rollout", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer")
        if not 0 <= self.size <= limits.max_package_size:
            raise ValueError(f"size {self.size} out of range 0..{limits.max_package_size}")
        if self.chunk_size != limits.chunk_size:
            raise ValueError(f"chunk size must be {limits.chunk_size}")
        if not 0 <= self.created < 2**63 or not 0 <= self.expires < 2**63:
            raise ValueError("timestamps out of range")
        if self.expires <= self.created:
            raise ValueError("expires must be after created")
        if not isinstance(self.critical, bool):
            raise ValueError("critical must be a boolean")
        if not 0 <= self.rollout <= 100:
            raise ValueError("rollout must be 0..100")

    def to_list(self) -> list[object]:
        fields = self._v1_list()
        if self.format_version == FORMAT_STAGED:
            fields += [
                [list(st) for st in self.stages],
                None if self.abort is None else list(self.abort),
            ]
        return fields

    def rollout_at(self, now: float) -> int:
        """The rollout percentage in force at ``now`` (the stage opened last)."""
        if not self.stages:
            return self.rollout
        pct = 0
        for percent, offset in self.stages:
            if now >= self.created + offset:
                pct = percent
        return pct

    def next_stage_at(self, now: float) -> float | None:
        """Unix time the next stage opens, or None when the last is open."""
        for _, offset in self.stages:
            if self.created + offset > now:
                return float(self.created + offset)
        return None

    def _v1_list(self) -> list[object]:
        return [
            self.format_version,
            self.channel,
            self.version,
            self.package_id,
            self.size,
            self.chunk_size,
            self.table_root,
            self.created,
            self.expires,
            self.min_version,
            self.critical,
            self.rollout,
        ]

    def encode(self) -> bytes:
        """The canonical body bytes (what is signed and hashed)."""
        data: bytes = msgpack.packb(self.to_list(), use_bin_type=True)
        return data

    @property
    def semver(self) -> semver.Version:
        return semver.Version.parse(self.version)


@dataclass(frozen=True)
class Announcement:
    """A body with its exact bytes and 1..5 (key id, signature) pairs.

    ``key id`` is the signer's 32-byte Ed25519 public key. Signatures are not
    checked at construction; :meth:`valid_signers` does that.
    """

    body: AnnouncementBody
    body_bytes: bytes
    signatures: tuple[tuple[bytes, bytes], ...]
    raw: bytes = field(default=b"", compare=False)

    @property
    def id(self) -> bytes:
        """The announcement id: BLAKE3 of the signed body bytes."""
        return blake3.blake3(self.body_bytes).digest()

    def valid_signers(self) -> frozenset[bytes]:
        """Keys whose signature over the body verifies (distinct keys only)."""
        good: set[bytes] = set()
        message = SIGN_DOMAIN + self.body_bytes
        for key_id, sig in self.signatures:
            try:
                nacl.signing.VerifyKey(key_id).verify(message, sig)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
                continue
            good.add(key_id)
        return frozenset(good)

    def encode(self) -> bytes:
        """The wire bytes: [body bytes, [[key id, signature], ...]]."""
        if self.raw:
            return self.raw
        data: bytes = msgpack.packb(
            [self.body_bytes, [[k, s] for k, s in self.signatures]], use_bin_type=True
        )
        return data


def _validate_stages(stages: object) -> None:
    if not isinstance(stages, tuple) or len(stages) > MAX_STAGES:
        raise ValueError(f"at most {MAX_STAGES} stages")
    last_pct, last_offset = 0, -1
    for i, item in enumerate(stages):
        if not (isinstance(item, tuple) and len(item) == 2 and all(type(x) is int for x in item)):
            raise ValueError("a stage is (percent, seconds after created)")
        pct, offset = item
        if not 1 <= pct <= 100 or not 0 <= offset < 2**40:
            raise ValueError("a stage's percent is 1..100 and its start not negative")
        if (i == 0 and offset != 0) or offset <= last_offset or pct < last_pct:
            raise ValueError("stages start at 0 and grow in time and percentage")
        last_pct, last_offset = pct, offset


def sign_announcement(
    body: AnnouncementBody, keys: Sequence[nacl.signing.SigningKey]
) -> Announcement:
    """Sign ``body`` with each key (1..5 distinct keys)."""
    if not 1 <= len(keys) <= DEFAULT_LIMITS.max_signatures:
        raise ValueError(f"an announcement needs 1..{DEFAULT_LIMITS.max_signatures} keys")
    body_bytes = body.encode()
    sigs = tuple((bytes(k.verify_key), k.sign(SIGN_DOMAIN + body_bytes).signature) for k in keys)
    if len({k for k, _ in sigs}) != len(sigs):
        raise ValueError("the same key was given twice")
    raw = Announcement(body, body_bytes, sigs).encode()
    if len(raw) > DEFAULT_LIMITS.max_announcement:  # cannot happen with valid fields; guard
        raise ValueError(f"announcement of {len(raw)} bytes exceeds the limit")
    return Announcement(body, body_bytes, sigs, raw=raw)


def _unpack(data: bytes, limits: Limits) -> object:
    # The body's strings are a channel and two versions; the envelope has none.
    return unpack_limited(
        data,
        "announcement",
        max_str=MAX_CHANNEL_LEN,
        max_bin=limits.max_announcement,
        max_array=max(_BODY_FIELDS_V2, MAX_STAGES),
    )


def decode_announcement(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Announcement:
    """Parse wire bytes into an Announcement, or raise RemoteProtocolError.

    Checks form only (types, ranges, canonical body); not signatures or trust.
    """
    if len(data) > limits.max_announcement:
        raise RemoteProtocolError(f"announcement of {len(data)} bytes exceeds the limit")
    outer = _unpack(data, limits)
    if not (isinstance(outer, list) and len(outer) == 2):
        raise RemoteProtocolError("announcement must be [body, signatures]")
    body_bytes, sig_list = outer
    if not isinstance(body_bytes, bytes) or not isinstance(sig_list, list):
        raise RemoteProtocolError("announcement must be [bin body, [signatures]]")
    sigs = signature_pairs(sig_list, "announcement", limits.max_signatures)
    fields = _unpack(body_bytes, limits)
    if not (isinstance(fields, list) and len(fields) in (_BODY_FIELDS, _BODY_FIELDS_V2)):
        raise RemoteProtocolError(f"announcement body must be an array of {_BODY_FIELDS}")
    (fmt, channel, version, pid, size, chunk_size, root, created, expires, minv, crit, roll) = (
        fields[:_BODY_FIELDS]
    )
    try:
        stages: tuple[tuple[int, int], ...] = ()
        abort: tuple[int, int] | None = None
        if len(fields) == _BODY_FIELDS_V2:
            raw_stages, raw_abort = fields[_BODY_FIELDS:]
            if not isinstance(raw_stages, list) or not all(
                isinstance(x, list) and len(x) == 2 for x in raw_stages
            ):
                raise ValueError("stages must be a list of [percent, offset]")
            stages = tuple((x[0], x[1]) for x in raw_stages)
            if raw_abort is not None:
                if not (isinstance(raw_abort, list) and len(raw_abort) == 2):
                    raise ValueError("abort must be [percent, minimum]")
                abort = (raw_abort[0], raw_abort[1])
        elif fmt != FORMAT_VERSION:
            raise ValueError(f"format {fmt} needs {_BODY_FIELDS_V2} fields")
        body = AnnouncementBody(
            channel=channel,
            version=version,
            package_id=pid,
            size=size,
            table_root=root,
            created=created,
            expires=expires,
            min_version=minv,
            critical=crit,
            rollout=roll,
            chunk_size=chunk_size,
            format_version=fmt,
            stages=stages,
            abort=abort,
        )
        body.validate(limits)
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"invalid announcement: {exc}") from exc
    if body.encode() != body_bytes:
        raise RemoteProtocolError("announcement body is not canonically encoded")
    ann = Announcement(body, body_bytes, tuple(sigs))
    if ann.encode() != data:
        raise RemoteProtocolError("announcement is not canonically encoded")
    return Announcement(body, body_bytes, tuple(sigs), raw=bytes(data))
