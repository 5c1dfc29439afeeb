"""``publish --renew VERSION`` without ``--file``: finding the package a node cached."""

from __future__ import annotations

from pathlib import Path

import blake3
import nacl.signing
import pytest

from p2pupdate.commands.renewsource import find_cached_release
from p2pupdate.errors import UsageError
from p2pupdate.shell.datadir import announcement_path, store_dir
from p2pupdate.shell.transfer.store import cached_package_path
from tests.helpers import make_announcement

CHANNEL = "app/stable"
DATA = b"the release" * 1000


def node_dir(
    tmp_path: Path,
    key: nacl.signing.SigningKey,
    *,
    version: str = "2.0.0",
    cached: bool = True,
    raw: bytes | None = None,
) -> Path:
    """A node data dir as a node leaves it: the channel's announcement and the cache."""
    data_dir = tmp_path / "node"
    ann = make_announcement([key], channel=CHANNEL, version=version, data=DATA)
    path = announcement_path(data_dir, CHANNEL)
    path.parent.mkdir(parents=True)
    path.write_bytes(ann.encode() if raw is None else raw)
    if cached:
        pkg = cached_package_path(store_dir(data_dir), ann.body.package_id)
        pkg.parent.mkdir(parents=True)
        pkg.write_bytes(DATA)
    return data_dir


def test_finds_the_cached_package_of_the_version_the_node_holds(tmp_path: Path) -> None:
    key = nacl.signing.SigningKey.generate()
    data_dir = node_dir(tmp_path, key)
    found = find_cached_release(data_dir, CHANNEL, "2.0.0", [key])
    assert found.path.read_bytes() == DATA
    assert found.package_id == blake3.blake3(DATA).digest()


def test_expired_announcement_is_still_renewable(tmp_path: Path) -> None:
    key = nacl.signing.SigningKey.generate()
    data_dir = tmp_path / "node"
    old = make_announcement([key], channel=CHANNEL, version="2.0.0", data=DATA, created=1000)
    path = announcement_path(data_dir, CHANNEL)
    path.parent.mkdir(parents=True)
    path.write_bytes(old.encode())
    pkg = cached_package_path(store_dir(data_dir), old.body.package_id)
    pkg.parent.mkdir(parents=True)
    pkg.write_bytes(DATA)
    assert find_cached_release(data_dir, CHANNEL, "2.0.0", [key]).path == pkg


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no announcement", "no announcement for app/stable"),
        ("other version", "holds app/stable 1.5.0, not 2.0.0"),
        ("not cached", "does not hold app/stable 2.0.0 in its cache"),
        ("other key", "not signed by any --key"),
        ("garbage", "is not a valid announcement"),
    ],
)
def test_every_miss_is_one_usage_line_naming_file(tmp_path: Path, case: str, message: str) -> None:
    key = nacl.signing.SigningKey.generate()
    other = nacl.signing.SigningKey.generate()
    if case == "no announcement":
        data_dir = tmp_path / "empty"
        data_dir.mkdir()
    elif case == "other version":
        data_dir = node_dir(tmp_path, key, version="1.5.0")
    elif case == "not cached":
        data_dir = node_dir(tmp_path, key, cached=False)
    elif case == "other key":
        data_dir = node_dir(tmp_path, other)
    else:
        data_dir = node_dir(tmp_path, key, raw=b"\x92\xc4\x01x\x90 not msgpack we accept")
    with pytest.raises(UsageError) as err:
        find_cached_release(data_dir, CHANNEL, "2.0.0", [key])
    text = str(err.value)
    assert message in text
    assert "give --file" in text
    assert "\n" not in text
