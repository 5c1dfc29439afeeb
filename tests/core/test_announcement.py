"""Signed announcements: canonical encoding, signatures, validation of every field."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import struct
from pathlib import PurePosixPath
from typing import Any

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.config import Limits
from p2pupdate.core.announcement import (
    CHANNEL_RE,
    FORMAT_VERSION,
    MAX_CHANNEL_LEN,
    SIGN_DOMAIN,
    Announcement,
    AnnouncementBody,
    decode_announcement,
    sign_announcement,
    validate_channel,
    validate_version,
)
from p2pupdate.errors import RemoteProtocolError
from tests.core.announce_helpers import (
    KEYS,
    NOW,
    body,
    envelope,
    from_parts,
    pub,
    sign_bytes,
    signed,
)

LONGEST_CHANNEL = "/".join(c * 64 for c in "abcd")
LONGEST_VERSION = "1.0.0-" + "a" * 58  # 64 bytes
GiB = 2**30


# -- round trip --------------------------------------------------------------------------------


def test_round_trip() -> None:
    ann = signed(min_version="1.2.0", critical=True, rollout=25)
    raw = ann.encode()
    back = decode_announcement(raw)
    assert back == ann
    assert back.body == ann.body
    assert back.encode() == raw
    assert back.body_bytes == ann.body.encode()
    assert back.valid_signers() == {pub(KEYS[0])}
    assert back.id == blake3.blake3(ann.body_bytes).digest()
    assert back.body.semver.major == 1


def test_body_is_an_array_in_documented_order() -> None:
    b = body(min_version="1.0.0", critical=True, rollout=7)
    assert msgpack.unpackb(b.encode()) == [
        FORMAT_VERSION,
        "app/stable",
        "1.4.0",
        b"\x11" * 32,
        3 * 65536 + 5,
        65536,
        b"\x22" * 32,
        NOW,
        NOW + 30 * 86400,
        "1.0.0",
        True,
        7,
    ]
    assert msgpack.unpackb(body().encode())[9:] == [None, False, 100]


def test_envelope_is_body_bytes_and_signature_pairs() -> None:
    ann = signed(KEYS[0], KEYS[1])
    outer = msgpack.unpackb(ann.encode())
    assert outer[0] == ann.body_bytes
    assert outer[1] == [[k, s] for k, s in ann.signatures]
    for key_id, sig in ann.signatures:
        assert len(key_id) == 32 and len(sig) == 64


def test_signature_covers_domain_prefix_and_body_bytes() -> None:
    ann = signed()
    (key_id, sig) = ann.signatures[0]
    KEYS[0].verify_key.verify(SIGN_DOMAIN + ann.body_bytes, sig)
    assert SIGN_DOMAIN == b"p2pupdate/announcement/v1\x00"
    # a signature over the bare body (no domain prefix) is not accepted
    bare = KEYS[0].sign(ann.body_bytes).signature
    assert from_parts(ann.body_bytes, [(key_id, bare)]).valid_signers() == frozenset()


def test_same_fields_same_bytes() -> None:
    assert body().encode() == body().encode()
    assert signed().encode() == signed().encode()  # Ed25519 is deterministic


def test_multiple_signers() -> None:
    ann = signed(KEYS[0], KEYS[1], KEYS[2])
    assert decode_announcement(ann.encode()).valid_signers() == {pub(k) for k in KEYS[:3]}


def test_sign_announcement_key_count() -> None:
    with pytest.raises(ValueError):
        sign_announcement(body(), [])
    with pytest.raises(ValueError):
        sign_announcement(body(), KEYS[:6])
    with pytest.raises(ValueError, match="twice"):
        sign_announcement(body(), [KEYS[0], KEYS[0]])
    assert len(sign_announcement(body(), KEYS[:5]).signatures) == 5


# -- tampering ---------------------------------------------------------------------------------


def test_flipping_any_bit_fails_decoding_or_verification() -> None:
    ann = signed()
    raw = ann.encode()
    for i in range(len(raw) * 8):
        data = bytearray(raw)
        data[i // 8] ^= 0x80 >> (i % 8)
        try:
            tampered = decode_announcement(bytes(data))
        except RemoteProtocolError:
            continue
        assert tampered.valid_signers() == frozenset(), f"bit {i} flipped still verifies"


FIELD_CHANGES: list[tuple[str, Any]] = [
    ("channel", "app/beta"),
    ("version", "1.4.1"),
    ("version", "1.4.0+build.2"),
    ("package_id", b"\x12" * 32),
    ("size", 3 * 65536 + 6),
    ("table_root", b"\x23" * 32),
    ("created", NOW + 1),
    ("expires", NOW + 30 * 86400 + 1),
    ("min_version", "1.0.0"),
    ("critical", True),
    ("rollout", 99),
]


@pytest.mark.parametrize(("name", "value"), FIELD_CHANGES, ids=[f[0] for f in FIELD_CHANGES])
def test_every_field_change_fails_verification(name: str, value: Any) -> None:
    ann = signed()
    changed = dataclasses.replace(ann.body, **{name: value})
    assert changed.encode() != ann.body_bytes
    # the original signatures moved onto the changed body (the body decodes fine)
    moved = from_parts(changed.encode(), list(ann.signatures))
    assert moved.body == changed
    assert moved.valid_signers() == frozenset()


def test_announcement_built_with_mismatched_body_does_not_verify() -> None:
    ann = signed()
    other = Announcement(body(version="9.9.9"), body(version="9.9.9").encode(), ann.signatures)
    assert other.valid_signers() == frozenset()


def test_signature_by_one_key_under_another_key_id_is_invalid() -> None:
    ann = signed()
    _, sig = ann.signatures[0]
    forged = from_parts(ann.body_bytes, [(pub(KEYS[1]), sig)])
    assert forged.valid_signers() == frozenset()


def test_garbage_key_id_is_ignored_not_an_error() -> None:
    ann = signed()
    junk = from_parts(ann.body_bytes, [(b"\x00" * 32, b"\x00" * 64), *ann.signatures])
    assert junk.valid_signers() == {pub(KEYS[0])}


def test_repeated_signer_counts_once() -> None:
    ann = signed()
    twice = from_parts(ann.body_bytes, [ann.signatures[0], ann.signatures[0]])
    assert twice.valid_signers() == {pub(KEYS[0])}


# -- canonical encoding ---------------------------------------------------------------------


def _pack(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def _uint64(value: int) -> bytes:
    return b"\xcf" + struct.pack(">Q", value)


def _body_items() -> list[bytes]:
    return [_pack(v) for v in body().to_list()]


def _assemble(items: list[bytes], header: bytes = b"\x9c") -> bytes:
    return header + b"".join(items)


def _wrap(body_bytes: bytes) -> bytes:
    return envelope(body_bytes, [sign_bytes(KEYS[0], body_bytes)])


def test_hand_assembled_canonical_body_is_accepted() -> None:
    # the reference for the cases below: same assembly, nothing widened
    body_bytes = _assemble(_body_items())
    assert body_bytes == body().encode()
    assert decode_announcement(_wrap(body_bytes)).valid_signers() == {pub(KEYS[0])}


def _non_canonical() -> dict[str, bytes]:
    items = _body_items()
    cases: dict[str, bytes] = {}
    for index, name in [(0, "format"), (4, "size"), (5, "chunk_size"), (11, "rollout")]:
        widened = list(items)
        widened[index] = _uint64(body().to_list()[index])  # type: ignore[arg-type]
        cases[f"{name} as uint64"] = _assemble(widened)
    widened = list(items)
    widened[7] = b"\xd3" + struct.pack(">q", NOW)  # created as int64
    cases["created as int64"] = _assemble(widened)
    widened = list(items)
    widened[1] = b"\xd9" + bytes([len("app/stable")]) + b"app/stable"  # str8, fixstr fits
    cases["channel as str8"] = _assemble(widened)
    widened = list(items)
    widened[3] = b"\xc5\x00\x20" + b"\x11" * 32  # bin16, bin8 fits
    cases["package id as bin16"] = _assemble(widened)
    widened = list(items)
    widened[3] = b"\xda\x00\x20" + b"\x11" * 32  # str instead of bin: fails as a type
    cases["package id as str"] = _assemble(widened)
    cases["array16 header"] = _assemble(items, b"\xdc\x00\x0c")
    widened = list(items)
    widened[4] = b"\xcb" + struct.pack(">d", float(3 * 65536 + 5))
    cases["size as float"] = _assemble(widened)
    widened = list(items)
    widened[10] = b"\x01"  # critical as int
    cases["critical as int"] = _assemble(widened)
    names = [f.name for f in dataclasses.fields(AnnouncementBody)]
    cases["map instead of array"] = _pack(dict(zip(names, body().to_list(), strict=False)))
    cases["11 fields"] = _assemble(items[:11], b"\x9b")
    cases["13 fields"] = _assemble([*items, b"\xc0"], b"\x9d")
    cases["trailing byte"] = body().encode() + b"\xc0"
    return cases


NON_CANONICAL_BODIES = _non_canonical()


@pytest.mark.parametrize("case", sorted(NON_CANONICAL_BODIES))
def test_non_canonical_body_is_rejected(case: str) -> None:
    body_bytes = NON_CANONICAL_BODIES[case]
    assert body_bytes != body().encode()
    # validly signed over exactly these bytes: only the encoding is wrong
    with pytest.raises(RemoteProtocolError):
        decode_announcement(_wrap(body_bytes))


def test_non_canonical_envelope_is_rejected() -> None:
    ann = signed()
    key_id, sig = ann.signatures[0]
    body_bytes = ann.body_bytes
    cases = {
        "body as bin32": b"\x92\xc6"
        + struct.pack(">I", len(body_bytes))
        + body_bytes
        + _pack([[key_id, sig]]),
        "array16 outer": b"\xdc\x00\x02" + _pack(body_bytes) + _pack([[key_id, sig]]),
        "map outer": _pack({"body": body_bytes, "sigs": [[key_id, sig]]}),
        "trailing data": ann.encode() + b"\x00",
        "three elements": _pack([body_bytes, [[key_id, sig]], 0]),
        "body as str": b"\x92\xda" + struct.pack(">H", len(body_bytes)) + body_bytes,
    }
    for name, raw in cases.items():
        with pytest.raises(RemoteProtocolError):
            decode_announcement(raw)
        assert name


@pytest.mark.parametrize(
    "sigs",
    [
        [],
        [(pub(KEYS[0]), b"\x00" * 64)] * 6,
        [(pub(KEYS[0])[:31], b"\x00" * 64)],
        [(pub(KEYS[0]), b"\x00" * 63)],
        [(pub(KEYS[0]), b"\x00" * 65)],
    ],
    ids=["none", "six", "short key id", "short sig", "long sig"],
)
def test_envelope_signature_list_limits(sigs: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_announcement(envelope(body().encode(), sigs))


@pytest.mark.parametrize(
    "entry",
    [[b"k" * 32], [b"k" * 32, b"s" * 64, b""], "x", [1, 2], {"k": 1}],
    ids=["one item", "three items", "str", "ints", "map"],
)
def test_malformed_signature_entries(entry: object) -> None:
    raw = _pack([body().encode(), [entry]])
    with pytest.raises(RemoteProtocolError):
        decode_announcement(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1100))
def test_random_bytes_give_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_announcement(data)


def test_every_truncation_and_extension_is_rejected() -> None:
    raw = signed().encode()
    for n in range(len(raw)):
        with pytest.raises(RemoteProtocolError):
            decode_announcement(raw[:n])
    for extra in (b"\x00", b"\xc0", b"\x90", raw):
        with pytest.raises(RemoteProtocolError):
            decode_announcement(raw + extra)


# -- size ----------------------------------------------------------------------------------------


def test_largest_announcement_is_under_one_kib() -> None:
    assert len(LONGEST_CHANNEL) == MAX_CHANNEL_LEN
    assert len(LONGEST_VERSION.encode()) == 64
    big = body(
        channel=LONGEST_CHANNEL,
        version=LONGEST_VERSION,
        min_version=LONGEST_VERSION,
        size=4 * GiB,
        created=2**63 - 2,
        expires=2**63 - 1,
        critical=True,
        rollout=100,
    )
    ann = sign_announcement(big, KEYS[:5])
    raw = ann.encode()
    assert len(raw) < 1024
    back = decode_announcement(raw)
    assert back.body == big
    assert back.valid_signers() == {pub(k) for k in KEYS[:5]}


def test_oversized_input_is_rejected_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decode_announcement(b"\x00" * 1025)


# -- channels ------------------------------------------------------------------------------------

GOOD_CHANNELS = [
    "a",
    "app",
    "app/stable",
    "app-1/x_y.z",
    "0/1/2/3",
    "a..b",
    "a/b.c-d_e",
    "x" * 64,
    LONGEST_CHANNEL,
]
BAD_CHANNELS = [
    "",
    "App",
    "app/Stable",
    "/app",
    "app/",
    "a//b",
    "..",
    "../x",
    "a/../b",
    "a/./b",
    ".",
    ".hidden",
    "a/.b",
    "-a",
    "_a",
    "a b",
    "app\n",
    "app\x00",
    "a/b/c/d/e",
    "x" * 65,
    "a/" + "x" * 65,
    "ápp",
    "a\\b",
    "C:/x",
    "~/x",
]


@pytest.mark.parametrize("channel", GOOD_CHANNELS)
def test_good_channels(channel: str) -> None:
    assert validate_channel(channel) == channel
    assert body(channel=channel).channel == channel


@pytest.mark.parametrize("channel", BAD_CHANNELS)
def test_bad_channels(channel: str) -> None:
    with pytest.raises(ValueError):
        validate_channel(channel)
    with pytest.raises(ValueError):
        body(channel=channel)


def test_bad_channel_on_the_wire_is_rejected() -> None:
    items = _body_items()
    items[1] = _pack("app/../etc")
    with pytest.raises(RemoteProtocolError):
        decode_announcement(_wrap(_assemble(items)))


def test_channel_regex_is_the_documented_one() -> None:
    assert CHANNEL_RE.pattern == (r"^[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63}){0,3}$")


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(
        re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63}){0,3}"), fullmatch=True
    )
)
def test_every_valid_channel_is_a_safe_relative_path(channel: str) -> None:
    validate_channel(channel)
    path = PurePosixPath(channel)
    assert not path.is_absolute()
    assert ".." not in path.parts and "." not in path.parts
    assert list(path.parts) == channel.split("/")
    assert 1 <= len(path.parts) <= 4
    assert len(channel) <= MAX_CHANNEL_LEN


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_accepted_as_channel_is_safe(text: str) -> None:
    try:
        validate_channel(text)
    except ValueError:
        return
    path = PurePosixPath(text)
    assert not path.is_absolute() and ".." not in path.parts
    assert "\n" not in text and "\\" not in text


# -- versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["0.0.0", "1.4.0", "1.0.0-rc.1", "1.0.0+build.5", "10.20.30-a.b+c", LONGEST_VERSION]
)
def test_good_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version",
    ["", "1", "1.0", "v1.0.0", "1.0.0\n", " 1.0.0", "01.0.0", "1.0.0-", LONGEST_VERSION + "a"],
)
def test_bad_versions(version: str) -> None:
    with pytest.raises(ValueError):
        validate_version(version)
    with pytest.raises(ValueError):
        body(version=version)
    with pytest.raises(ValueError):
        body(min_version=version)


def test_version_length_limit_is_a_setting() -> None:
    with pytest.raises(ValueError):
        validate_version("1.0.0-abc", Limits(max_version_len=8))


# -- every field's range ---------------------------------------------------------------------

BAD_FIELDS: list[tuple[str, Any]] = [
    ("format_version", 2),
    ("format_version", 0),
    ("channel", 5),
    ("version", b"1.0.0"),
    ("package_id", b"\x11" * 31),
    ("package_id", b"\x11" * 33),
    ("package_id", "11" * 16),
    ("table_root", b"\x22" * 31),
    ("table_root", None),
    ("size", -1),
    ("size", 4 * GiB + 1),
    ("size", True),
    ("size", 1.0),
    ("chunk_size", 65535),
    ("chunk_size", 131072),
    ("created", -1),
    ("created", 2**63),
    ("expires", NOW),  # == created
    ("expires", NOW - 1),
    ("expires", 2**63),
    ("min_version", 1),
    ("critical", 1),
    ("critical", None),
    ("rollout", -1),
    ("rollout", 101),
    ("rollout", True),
    ("rollout", 50.0),
]


@pytest.mark.parametrize(
    ("name", "value"), BAD_FIELDS, ids=[f"{n}={v!r}"[:40] for n, v in BAD_FIELDS]
)
def test_field_out_of_range_is_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError):
        body(**{name: value})
    # and the same field on the wire, validly signed, fails decoding
    items = list(body().to_list())
    order = [
        "format_version",
        "channel",
        "version",
        "package_id",
        "size",
        "chunk_size",
        "table_root",
        "created",
        "expires",
        "min_version",
        "critical",
        "rollout",
    ]
    items[order.index(name)] = value
    with pytest.raises(RemoteProtocolError):
        decode_announcement(_wrap(_pack(items)))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("size", 0),
        ("size", 4 * GiB),
        ("created", 0),
        ("expires", 2**63 - 1),
        ("rollout", 0),
        ("rollout", 100),
        ("min_version", None),
        ("critical", False),
    ],
)
def test_field_edges_are_accepted(name: str, value: Any) -> None:
    b = body(**{name: value})
    assert decode_announcement(sign_announcement(b, [KEYS[0]]).encode()).body == b


def test_max_package_size_setting_is_applied_on_decode() -> None:
    raw = signed(size=10 * 2**20).encode()
    decode_announcement(raw, Limits(max_package_size=10 * 2**20))
    with pytest.raises(RemoteProtocolError, match="size"):
        decode_announcement(raw, Limits(max_package_size=10 * 2**20 - 1))
