"""Key text forms (core) and key files on disk (shell/keyfile)."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import nacl.signing
import pytest

from p2pupdate.core.keys import (
    PUBKEY_PREFIX,
    SECRET_HEADER,
    decode_secret_key,
    encode_secret_key,
    format_pubkey,
    parse_pubkey,
    short_id,
)
from p2pupdate.errors import UsageError
from p2pupdate.shell.keyfile import load_or_create_node_key, load_secret_key, write_secret_key

KEY = nacl.signing.SigningKey(b"\x42" * 32)
PUB = bytes(KEY.verify_key)


# -- public keys ---------------------------------------------------------------------------------


def test_pubkey_text_form() -> None:
    text = format_pubkey(PUB)
    assert text == "ed25519:" + PUB.hex()
    assert text.startswith(PUBKEY_PREFIX) and len(text) == 8 + 64
    assert "\n" not in text


def test_parse_pubkey_round_trip_and_variants() -> None:
    assert parse_pubkey(format_pubkey(PUB)) == PUB
    assert parse_pubkey(PUB.hex()) == PUB  # bare hex
    assert parse_pubkey("  " + format_pubkey(PUB) + "\n") == PUB  # pasted with whitespace
    assert parse_pubkey(PUBKEY_PREFIX + PUB.hex().upper()) == PUB


def test_format_pubkey_wants_32_bytes() -> None:
    with pytest.raises(ValueError):
        format_pubkey(PUB[:31])


def _not_a_point() -> bytes:
    rnd = random.Random(0)
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    while True:
        candidate = rnd.randbytes(32)
        if not crypto_core_ed25519_is_valid_point(candidate):
            return candidate


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:",
        "ed25519:" + "ab" * 31,
        "ed25519:" + "ab" * 33,
        "ed25519:" + "zz" * 32,
        "rsa:" + "ab" * 32,
        "ed25519:" + PUB.hex()[:-1] + " ",
        "ed25519:" + "00" * 32,  # small-order point
        "ed25519:" + _not_a_point().hex(),
    ],
)
def test_parse_pubkey_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad public key"):
        parse_pubkey(text)


def test_generated_keys_always_parse() -> None:
    for _ in range(50):
        pub = bytes(nacl.signing.SigningKey.generate().verify_key)
        assert parse_pubkey(format_pubkey(pub)) == pub


def test_short_id() -> None:
    assert short_id(PUB) == PUB[:8].hex()


# -- secret key file format ------------------------------------------------------------------------


def test_secret_key_round_trip() -> None:
    data = encode_secret_key(KEY)
    assert data == (SECRET_HEADER + "\n" + "42" * 32 + "\n").encode()
    assert bytes(decode_secret_key(data)) == bytes(KEY)
    assert bytes(decode_secret_key(data.rstrip(b"\n"))) == bytes(KEY)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe binary", "binary"),
        (b"", "bad header"),
        (b"hello world\n", "bad header"),
        (b"ssh-ed25519 AAAA\n", "bad header"),
        (f"{SECRET_HEADER}\n".encode(), "bad header"),
        (f"{SECRET_HEADER}\n{'ab' * 31}\n".encode(), "wrong length"),
        (f"{SECRET_HEADER}\n{'ab' * 33}\n".encode(), "wrong length"),
        (f"{SECRET_HEADER}\n{'zz' * 32}\n".encode(), "wrong length"),
        (f"{SECRET_HEADER}\n{'ab' * 32}\nextra\n".encode(), "bad header"),
        (bytes(32), "bad header"),  # a raw 32-byte seed is not our format
    ],
)
def test_decode_secret_key_rejects(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_secret_key(data)


# -- key files (shell) ---------------------------------------------------------------------------


def test_write_then_load(tmp_path: Path) -> None:
    path = tmp_path / "authority.key"
    write_secret_key(path, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(load_secret_key(path)) == bytes(KEY)
    assert [p.name for p in tmp_path.iterdir()] == ["authority.key"]  # no temp file left


def test_write_refuses_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret_key(path, KEY)
    other = nacl.signing.SigningKey(b"\x43" * 32)
    with pytest.raises(UsageError, match="already exists"):
        write_secret_key(path, other)
    assert bytes(load_secret_key(path)) == bytes(KEY)
    write_secret_key(path, other, force=True)
    assert bytes(load_secret_key(path)) == bytes(other)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        write_secret_key(tmp_path / "nope" / "k", KEY)


def test_write_onto_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directory"):
        write_secret_key(tmp_path, KEY, force=True)


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_secret_key(tmp_path / "missing.key")


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        load_secret_key(tmp_path)


def test_load_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="cannot read"):
        load_secret_key(tmp_path / "f" / "k")


def _private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_wrong_length(tmp_path: Path) -> None:
    path = _private_file(tmp_path / "k", f"{SECRET_HEADER}\n{'ab' * 16}\n".encode())
    with pytest.raises(UsageError, match="wrong length"):
        load_secret_key(path)


def test_load_not_a_key(tmp_path: Path) -> None:
    path = _private_file(tmp_path / "k", b"this is my shopping list\n")
    with pytest.raises(UsageError, match="not a p2pupdate secret key"):
        load_secret_key(path)


def test_load_huge_file(tmp_path: Path) -> None:
    path = _private_file(tmp_path / "k", b"x" * 100_000)
    with pytest.raises(UsageError, match="larger than"):
        load_secret_key(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    write_secret_key(path, KEY)
    path.chmod(mode)
    with pytest.raises(UsageError, match="readable by group or others") as info:
        load_secret_key(path)
    assert "chmod 600" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_owner_only_modes_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret_key(path, KEY)
    path.chmod(0o400)
    assert bytes(load_secret_key(path)) == bytes(KEY)


def test_load_follows_symlink_to_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret_key(path, KEY)
    link = tmp_path / "link"
    os.symlink(path, link)
    assert bytes(load_secret_key(link)) == bytes(KEY)


def test_node_key_made_once_then_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "node"
    first = load_or_create_node_key(data_dir)
    assert stat.S_IMODE((data_dir / "node.key").stat().st_mode) == 0o600
    second = load_or_create_node_key(data_dir)
    assert bytes(first) == bytes(second)
