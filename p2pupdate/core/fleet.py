"""Fleet membership: admission certificates, revocation lists, and who is a member.

A fleet key (an Ed25519 key made with ``keygen``) signs an *admission* for a
node id: "node N belongs to fleet F until T". A node run with ``--fleet F``
accepts a connection only when the peer, after proving its node key
(``core.handshake``), presents an admission for that very node id, signed by
one of the fleet keys it was given, not expired and not revoked.

A *revocation list* is signed by a fleet key too: the node ids it revokes and
an ``issued`` time. Per fleet key the latest list wins (like an announcement,
it replaces what it supersedes), so a list must name every node still revoked.

Encoding follows ``core.announcement``: the body is a msgpack array in a fixed
field order, decoding re-encodes it and refuses input whose bytes differ (one
body, one encoding), the signature covers a domain tag plus the body bytes
exactly as received, and every size is capped before anything is parsed.
Pure: the caller passes ``now`` (unix seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack
import nacl.exceptions
import nacl.signing

from p2pupdate.config import DEFAULT_LIMITS, Limits
from p2pupdate.core.reasons import Reason
from p2pupdate.core.signedwire import unpack_limited
from p2pupdate.errors import RemoteProtocolError

__all__ = [
    "ADMISSION_DOMAIN",
    "REVOCATION_DOMAIN",
    "Admission",
    "FleetPolicy",
    "Revocations",
    "decode_admission",
    "decode_revocations",
    "sign_admission",
    "sign_revocations",
]

ADMISSION_DOMAIN = b"p2pupdate/admission/v1\x00"
REVOCATION_DOMAIN = b"p2pupdate/revocation/v1\x00"
FORMAT_VERSION = 1
_ADMISSION_FIELDS = 5  # [format, fleet key, node id, issued, expires]
_REVOCATION_FIELDS = 4  # [format, fleet key, issued, [node id, ...]]


def _verify(key: bytes, domain: bytes, body: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(domain + body, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def _time(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be a unix time")
    return value


def _key(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes")
    return value


def _unpack(data: bytes, what: str, max_bin: int, max_array: int) -> object:
    return unpack_limited(data, what, max_str=0, max_bin=max_bin, max_array=max_array)


def _envelope(data: bytes, what: str, limit: int) -> tuple[bytes, bytes]:
    """[body bytes, 64-byte signature] -> both, after the size cap."""
    if len(data) > limit:
        raise RemoteProtocolError(f"{what} of {len(data)} bytes exceeds the limit of {limit}")
    outer = _unpack(data, what, limit, 2)
    if not (
        isinstance(outer, list)
        and len(outer) == 2
        and isinstance(outer[0], bytes)
        and isinstance(outer[1], bytes)
        and len(outer[1]) == 64
    ):
        raise RemoteProtocolError(f"{what} must be [body, 64-byte signature]")
    return outer[0], outer[1]


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# ---------------------------------------------------------------- admissions


@dataclass(frozen=True)
class Admission:
    """A signed admission certificate. ``raw`` is the exact encoding (what files and
    HELLO_PROOF carry). The signature is checked by :meth:`signature_ok`."""

    fleet_key: bytes
    node_id: bytes
    issued: int
    expires: int
    body_bytes: bytes
    signature: bytes
    raw: bytes = field(compare=False)

    def signature_ok(self) -> bool:
        return _verify(self.fleet_key, ADMISSION_DOMAIN, self.body_bytes, self.signature)


def _admission_body(fleet_key: bytes, node_id: bytes, issued: int, expires: int) -> bytes:
    return _pack([FORMAT_VERSION, fleet_key, node_id, issued, expires])


def sign_admission(
    key: nacl.signing.SigningKey, node_id: bytes, issued: int, expires: int
) -> Admission:
    """Admit ``node_id`` to the fleet of ``key`` from ``issued`` until ``expires``."""
    _key("node id", node_id)
    _time("issued", issued)
    _time("expires", expires)
    if expires <= issued:
        raise ValueError("expires must be after issued")
    fleet_key = bytes(key.verify_key)
    body = _admission_body(fleet_key, node_id, issued, expires)
    sig = key.sign(ADMISSION_DOMAIN + body).signature
    return Admission(fleet_key, node_id, issued, expires, body, sig, _pack([body, sig]))


def decode_admission(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Admission:
    """Parse an admission certificate (form only), or raise RemoteProtocolError."""
    body, sig = _envelope(data, "admission", limits.max_admission)
    fields = _unpack(body, "admission", 32, _ADMISSION_FIELDS)
    if not (isinstance(fields, list) and len(fields) == _ADMISSION_FIELDS):
        raise RemoteProtocolError(f"admission body must be an array of {_ADMISSION_FIELDS}")
    fmt, fleet_key, node_id, issued, expires = fields
    try:
        if fmt != FORMAT_VERSION or type(fmt) is not int:
            raise ValueError(f"unsupported admission format {fmt!r}")
        _key("fleet key", fleet_key)
        _key("node id", node_id)
        _time("issued", issued)
        _time("expires", expires)
        if expires <= issued:
            raise ValueError("expires must be after issued")
    except ValueError as exc:
        raise RemoteProtocolError(f"invalid admission: {exc}") from None
    if _admission_body(fleet_key, node_id, issued, expires) != body or _pack([body, sig]) != data:
        raise RemoteProtocolError("admission is not canonically encoded")
    return Admission(fleet_key, node_id, issued, expires, body, sig, bytes(data))


# ---------------------------------------------------------------- revocations


@dataclass(frozen=True)
class Revocations:
    """A signed revocation list: ``revoked`` node ids, sorted and distinct."""

    fleet_key: bytes
    issued: int
    revoked: tuple[bytes, ...]
    body_bytes: bytes
    signature: bytes
    raw: bytes = field(compare=False)

    def signature_ok(self) -> bool:
        return _verify(self.fleet_key, REVOCATION_DOMAIN, self.body_bytes, self.signature)


def _revocation_body(fleet_key: bytes, issued: int, revoked: tuple[bytes, ...]) -> bytes:
    return _pack([FORMAT_VERSION, fleet_key, issued, list(revoked)])


def sign_revocations(
    key: nacl.signing.SigningKey,
    node_ids: Iterable[bytes],
    issued: int,
    limits: Limits = DEFAULT_LIMITS,
) -> Revocations:
    """The fleet key's revocation list, issued at ``issued`` (later lists replace it)."""
    revoked = tuple(sorted({_key("node id", n) for n in node_ids}))
    if len(revoked) > limits.max_revoked:
        raise ValueError(f"at most {limits.max_revoked} node ids in one revocation list")
    _time("issued", issued)
    fleet_key = bytes(key.verify_key)
    body = _revocation_body(fleet_key, issued, revoked)
    sig = key.sign(REVOCATION_DOMAIN + body).signature
    return Revocations(fleet_key, issued, revoked, body, sig, _pack([body, sig]))


def revocation_limit(limits: Limits) -> int:
    """Largest encoded revocation list: the ids plus a little framing."""
    return limits.max_revoked * 35 + 128


def decode_revocations(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Revocations:
    """Parse a revocation list (form only), or raise RemoteProtocolError."""
    limit = revocation_limit(limits)
    body, sig = _envelope(data, "revocation list", limit)
    fields = _unpack(body, "revocation list", 32, max(_REVOCATION_FIELDS, limits.max_revoked))
    if not (isinstance(fields, list) and len(fields) == _REVOCATION_FIELDS):
        raise RemoteProtocolError(f"revocation list must be an array of {_REVOCATION_FIELDS}")
    fmt, fleet_key, issued, ids = fields
    try:
        if fmt != FORMAT_VERSION or type(fmt) is not int:
            raise ValueError(f"unsupported revocation format {fmt!r}")
        _key("fleet key", fleet_key)
        _time("issued", issued)
        if not isinstance(ids, list) or len(ids) > limits.max_revoked:
            raise ValueError(f"at most {limits.max_revoked} revoked node ids")
        revoked = tuple(_key("node id", n) for n in ids)
        if list(revoked) != sorted(set(revoked)):
            raise ValueError("revoked node ids must be sorted and distinct")
    except ValueError as exc:
        raise RemoteProtocolError(f"invalid revocation list: {exc}") from None
    if _revocation_body(fleet_key, issued, revoked) != body or _pack([body, sig]) != data:
        raise RemoteProtocolError("revocation list is not canonically encoded")
    return Revocations(fleet_key, issued, revoked, body, sig, bytes(data))


# ---------------------------------------------------------------- the node's view


class FleetPolicy:
    """What a node decides about membership. Empty ``fleet_keys``: an open swarm, where
    everybody is a member and nothing here refuses anything."""

    def __init__(self, fleet_keys: Iterable[bytes] = (), limits: Limits = DEFAULT_LIMITS) -> None:
        self.fleet_keys = frozenset(fleet_keys)
        self.limits = limits
        self.lists: dict[bytes, Revocations] = {}
        self._revoked: frozenset[bytes] = frozenset()
        # Members seen (node id -> admission expiry), for callers that must judge a node
        # they are not connected to (relayed reports). Bounded: oldest forgotten first.
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self.fleet_keys)

    def check(self, admission: Admission | None, node_id: bytes, now: float) -> Reason | None:
        """None if ``admission`` admits the proven ``node_id`` now; else the reason."""
        if not self.enabled:
            return None
        if admission is None:
            return Reason.NO_ADMISSION
        if admission.fleet_key not in self.fleet_keys:
            return Reason.FOREIGN_FLEET
        if admission.node_id != node_id:
            return Reason.WRONG_NODE
        if not admission.signature_ok():
            return Reason.BAD_SIGNATURE
        if now >= admission.expires:
            return Reason.EXPIRED
        if node_id in self._revoked:
            return Reason.REVOKED
        self._seen[node_id] = admission.expires
        self._seen.move_to_end(node_id)
        while len(self._seen) > self.limits.max_fleet_members_seen:
            self._seen.popitem(last=False)
        return None

    def is_member(self, node_id: bytes, now: float) -> bool:
        """Whether ``node_id`` showed a valid admission that has not expired or been
        revoked since (always true in an open swarm). The hook for relayed reports."""
        if not self.enabled:
            return True
        expires = self._seen.get(node_id)
        return expires is not None and now < expires and node_id not in self._revoked

    def is_revoked(self, node_id: bytes) -> bool:
        return node_id in self._revoked

    def offer(self, rev: Revocations) -> Reason | None:
        """Take a revocation list if it is newer for its fleet key; None if taken."""
        if rev.fleet_key not in self.fleet_keys:
            return Reason.FOREIGN_FLEET
        current = self.lists.get(rev.fleet_key)
        if current is not None and rev.issued <= current.issued:
            return Reason.NOT_NEWER
        if not rev.signature_ok():
            return Reason.BAD_SIGNATURE
        self.lists[rev.fleet_key] = rev
        self._revoked = frozenset(n for r in self.lists.values() for n in r.revoked)
        return None

    def expiry_warning(self, admission: Admission, now: float) -> str | None:
        """The warning ``status`` shows within ``admission_warn_days`` of expiry."""
        left = admission.expires - now
        if left <= 0:
            return "admission expired: peers refuse this node; ask for a new one (p2pupdate admit)"
        if left <= self.limits.admission_warn_days * 86400:
            return f"admission expires in {left / 86400:.1f} days: renew it (p2pupdate admit)"
        return None
