"""Yank: a signed revocation of one version of a channel.

Wire form ``[body bytes, [[key id, signature], ...]]``, the body the canonical
msgpack array ``[format = 1, "yank", channel, version, created, reason]``, each
signature over ``"p2pupdate/yank/v1\\0" || body``. It is accepted under the same
trust set and threshold as an announcement (``core.policy``'s signature check).
A node that holds an accepted yank refuses that version (reason ``yanked``) and
rolls a target running it back; a later version applies normally.

Pure: encode, sign, decode, verify. The node keeps and spreads them
(``shell.net.yanks``) and the agent acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3
import msgpack
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.announcement import validate_channel, validate_version
from p2pupdate.core.policy import Decision, TrustConfig, check_signers
from p2pupdate.core.signedwire import signature_pairs
from p2pupdate.errors import RemoteProtocolError

__all__ = ["YANK_DOMAIN", "Yank", "YankBody", "decode_yank", "sign_yank", "yank_decision"]

YANK_DOMAIN = b"p2pupdate/yank/v1\x00"
MAX_REASON = 128


@dataclass(frozen=True)
class YankBody:
    channel: str
    version: str
    created: int
    reason: str = ""

    def __post_init__(self) -> None:
        validate_channel(self.channel)
        validate_version(self.version)
        if type(self.created) is not int or not 0 <= self.created < 2**63:
            raise ValueError("created out of range")
        if not isinstance(self.reason, str) or len(self.reason.encode()) > MAX_REASON:
            raise ValueError(f"reason must be a string of at most {MAX_REASON} bytes")

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [1, "yank", self.channel, self.version, self.created, self.reason], use_bin_type=True
        )
        return data


@dataclass(frozen=True)
class Yank:
    body: YankBody
    body_bytes: bytes
    signatures: tuple[tuple[bytes, bytes], ...]
    raw: bytes = field(default=b"", compare=False)

    @property
    def id(self) -> bytes:
        return blake3.blake3(self.body_bytes).digest()

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        data: bytes = msgpack.packb(
            [self.body_bytes, [[k, s] for k, s in self.signatures]], use_bin_type=True
        )
        return data


def sign_yank(body: YankBody, keys: Sequence[nacl.signing.SigningKey]) -> Yank:
    if not 1 <= len(keys) <= DEFAULT_LIMITS.max_signatures:
        raise ValueError(f"a yank needs 1..{DEFAULT_LIMITS.max_signatures} keys")
    data = body.encode()
    sigs = tuple((bytes(k.verify_key), k.sign(YANK_DOMAIN + data).signature) for k in keys)
    raw = Yank(body, data, sigs).encode()
    return Yank(body, data, sigs, raw=raw)


def decode_yank(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Yank:
    """Parse wire bytes (form only), or raise RemoteProtocolError."""
    if len(data) > limits.max_announcement:
        raise RemoteProtocolError("yank exceeds the size limit")
    try:
        outer = msgpack.unpackb(
            data, raw=False, max_str_len=512, max_bin_len=1024, max_array_len=8,
            max_map_len=0, max_ext_len=0, strict_map_key=True,
        )  # fmt: skip
        if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)):
            raise ValueError("yank must be [body, signatures]")
        body_bytes, sig_list = outer
        fields = msgpack.unpackb(
            body_bytes, raw=False, max_str_len=512, max_bin_len=0, max_array_len=8,
            max_map_len=0, max_ext_len=0, strict_map_key=True,
        )  # fmt: skip
        if not (isinstance(fields, list) and len(fields) == 6 and fields[:2] == [1, "yank"]):
            raise ValueError("yank body must be [1, 'yank', channel, version, created, reason]")
        body = YankBody(fields[2], fields[3], fields[4], fields[5])
        sigs = signature_pairs(sig_list, "yank", limits.max_signatures)
    except Exception as exc:  # msgpack raises many types; translate them all once
        raise RemoteProtocolError(f"malformed yank: {exc}") from exc
    yank = Yank(body, body_bytes, tuple(sigs))
    if body.encode() != body_bytes or yank.encode() != data:
        raise RemoteProtocolError("yank is not canonically encoded")
    return Yank(body, body_bytes, tuple(sigs), raw=bytes(data))


def yank_decision(yank: Yank, trust: TrustConfig, now: float) -> Decision:
    """Accept a yank? Same trusted keys and threshold as announcements; not from the
    future (beyond the allowed clock skew)."""
    verdict = check_signers(yank.signatures, YANK_DOMAIN + yank.body_bytes, trust)
    if not verdict.ok:
        return verdict
    if yank.body.created > now + trust.clock_skew:
        return Decision(False, "not_yet_valid")
    return verdict
