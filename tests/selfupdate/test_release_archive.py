"""open_release against hostile and broken archives: refused, nothing left behind."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.errors import ApplyError
from p2pupdate.selfupdate.release import MANIFEST_NAME, WRONG_PLATFORM, open_release, platform_id

WHEEL = "p2pupdate-1.2.0-py3-none-any.whl"
DATA = b"PK\x03\x04 not really a zip, only hashed here"


def manifest(wheels: list[dict[str, object]], **over: object) -> bytes:
    py, plat = platform_id()
    body: dict[str, object] = {
        "format": 1,
        "name": "p2pupdate",
        "version": "1.2.0",
        "python_tag": py,
        "platform_tag": plat,
        "wheels": wheels,
        "built_at": 1.0,
    }
    body.update(over)
    return json.dumps(body).encode()


def entry(name: str = WHEEL, data: bytes = DATA) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def archive(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """members: (name, data, kind) with kind 'file', 'symlink' (data = target) or 'dir'."""
    with tarfile.open(path, "w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                payload = data or b""
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def refused(tmp_path: Path, path: Path, reason: str = "bad_archive") -> None:
    dest = tmp_path / "dest"
    with pytest.raises(ApplyError) as err:
        open_release(path, dest)
    assert err.value.reason == reason
    assert not (dest / "wheels").exists() or not any((dest / "wheels").iterdir())


def test_a_well_formed_release_is_unpacked(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "r.tar",
        [(MANIFEST_NAME, manifest([entry()]), "file"), (f"wheels/{WHEEL}", DATA, "file")],
    )
    m = open_release(path, tmp_path / "dest")
    assert m.version == "1.2.0"
    assert (tmp_path / "dest" / "wheels" / WHEEL).read_bytes() == DATA


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "r.tar",
        [
            (MANIFEST_NAME, manifest([entry()]), "file"),
            (f"wheels/{WHEEL}", DATA, "file"),
            ("../escape", b"x", "file"),
        ],
    )
    refused(tmp_path, path)
    assert not (tmp_path / "escape").exists()


def test_wheel_name_with_a_path_in_the_manifest_is_refused(tmp_path: Path) -> None:
    bad = "../../evil-1.0-py3-none-any.whl"
    path = archive(
        tmp_path / "r.tar",
        [(MANIFEST_NAME, manifest([entry(bad)]), "file"), (f"wheels/{bad}", DATA, "file")],
    )
    refused(tmp_path, path)


def test_wheel_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "r.tar",
        [
            (MANIFEST_NAME, manifest([entry()]), "file"),
            (f"wheels/{WHEEL}", b"/etc/passwd", "symlink"),
        ],
    )
    refused(tmp_path, path)


def test_tampered_wheel_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "r.tar",
        [
            (MANIFEST_NAME, manifest([entry()]), "file"),
            (f"wheels/{WHEEL}", b"X" + DATA[1:], "file"),
        ],
    )
    refused(tmp_path, path)


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, archive(tmp_path / "r.tar", [(f"wheels/{WHEEL}", DATA, "file")]))


def test_release_without_a_p2pupdate_wheel_is_refused(tmp_path: Path) -> None:
    other = "trio-0.35.0-py3-none-any.whl"
    path = archive(
        tmp_path / "r.tar",
        [(MANIFEST_NAME, manifest([entry(other)]), "file"), (f"wheels/{other}", DATA, "file")],
    )
    refused(tmp_path, path)


def test_release_for_another_platform_is_refused(tmp_path: Path) -> None:
    path = archive(
        tmp_path / "r.tar",
        [
            (MANIFEST_NAME, manifest([entry()], platform_tag="win_amd64"), "file"),
            (f"wheels/{WHEEL}", DATA, "file"),
        ],
    )
    refused(tmp_path, path, WRONG_PLATFORM)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_release_or_bad_archive(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "r.tar"
    path.write_bytes(data)
    with pytest.raises(ApplyError) as err:
        open_release(path, tmp / "dest")
    assert err.value.reason == "bad_archive"


def test_release_changed_after_verification_is_refused_from_a_verified_copy(
    tmp_path: Path,
) -> None:
    import blake3

    members: list[tuple[str, bytes | None, str]] = [
        (MANIFEST_NAME, manifest([entry()]), "file"),
        (f"wheels/{WHEEL}", DATA, "file"),
    ]
    path = archive(tmp_path / "r.tar", members)
    package_id = blake3.blake3(path.read_bytes()).digest()
    m = open_release(path, tmp_path / "ok", package_id=package_id)
    assert m.version == "1.2.0" and [p.name for p in (tmp_path / "ok").iterdir()] == ["wheels"]
    # The cached file is replaced after the swarm verified it: a consistent release
    # of its own (manifest and wheel hashes agree), just not the one announced.
    other = b"PK\x03\x04 another wheel"
    forged = manifest([entry(data=other)])
    archive(path, [(MANIFEST_NAME, forged, "file"), (f"wheels/{WHEEL}", other, "file")])
    dest = tmp_path / "dest"
    with pytest.raises(ApplyError) as err:
        open_release(path, dest, package_id=package_id)
    assert err.value.reason == "hash_mismatch"
    assert list(dest.iterdir()) == []  # nothing unpacked, no copy left
